"""The client commands against the real stack: ``textgen models``, ``jobs``, ``status``,
``submit --stream`` as subprocesses, and ``textgen chat`` driven through a pty (pexpect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack
from textgen_core.settings import DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration

TEXTGEN = str(Path(sys.executable).with_name("textgen"))  # where make install puts it: .venv/bin/textgen


def cli_env(stack: Stack) -> dict[str, str]:
    return {**os.environ, "TEXTGEN_URL": stack.url, "TEXTGEN_API_KEY": KEY_A, "COLUMNS": "80", "NO_COLOR": "1"}


def textgen(stack: Stack, *args: str, code: int = 0) -> str:
    done = subprocess.run([TEXTGEN, *args], env=cli_env(stack), capture_output=True, text=True, timeout=240)
    assert done.returncode == code, (done.stdout, done.stderr)
    return done.stdout + done.stderr


def test_models_and_status_show_what_the_api_serves(stack: Stack) -> None:
    models = textgen(stack, "models")
    assert DEFAULT_MODEL_ID in models and "worker@test" in models and IDLE_MODEL in models
    assert "none loaded" in models  # nothing serves the idle model
    status = textgen(stack, "status")
    assert "worker@test" in status and DEFAULT_MODEL_ID in status and "API 0.1.0" in status
    report = json.loads(textgen(stack, "status", "--json"))
    assert report["status"] == "not_ready"  # the idle model has no worker: the API says so, and so does status
    assert {q["lane"] for q in report["queues"]} == {"interactive", "bulk"}
    assert report["versions"]["api"] == "0.1.0" and report["workers"] == ["worker@test"]


def test_submit_stream_prints_the_text_and_jobs_lists_it(stack: Stack, client: httpx.Client) -> None:
    assert client.post("/v1/jobs", json={"prompt": "Older.", "max_tokens": 2}).status_code == 202
    streamed = subprocess.run([TEXTGEN, "submit", "--stream", "Name a colour.", "--max-tokens", "8",
                               "--temperature", "0"], env=cli_env(stack), capture_output=True, text=True, timeout=240)
    assert streamed.returncode == 0, streamed.stderr
    newest = json.loads(textgen(stack, "jobs", "--limit", "1", "--json"))
    job = newest["data"][0]
    assert job["status"] == "succeeded" and job["input"]["prompt"] == "Name a colour."
    assert streamed.stdout == job["output"] + "\n"  # the streamed pieces add up to the output, printed once
    listing = textgen(stack, "jobs", "--limit", "1")
    assert job["id"] in listing and "succeeded" in listing and "Name a colour." in listing
    assert f".venv/bin/textgen jobs --after {job['id']}" in listing  # the hint to page on works when pasted
    assert "no jobs" in textgen(stack, "jobs", "--status", "running", "--lane", "bulk", "--batch", "batch_none")


def test_commands_explain_what_went_wrong(stack: Stack) -> None:
    unknown = textgen(stack, "chat", "--model", "llama3", code=1)
    assert "model 'llama3' not found" in unknown and DEFAULT_MODEL_ID in unknown
    bad = textgen(stack, "jobs", "--status", "done", code=1)
    assert "422" in bad and "status" in bad
    down = subprocess.run([TEXTGEN, "models", "--url", "http://127.0.0.1:9"], env=cli_env(stack),
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and "cannot reach the API at http://127.0.0.1:9" in down.stderr
    assert ".venv/bin/textgen up" in down.stderr


def test_chat_streams_replies_keeps_the_conversation_and_resets(stack: Stack, client: httpx.Client) -> None:
    chat = pexpect.spawn(TEXTGEN, ["chat", "--temperature", "0", "--max-tokens", "12"], env=cli_env(stack),
                         encoding="utf-8", timeout=240, dimensions=(24, 80))
    try:
        chat.expect(r"conversation (chat-[0-9a-f]+)\.")
        first = chat.match.group(1)
        chat.expect("you> ")
        chat.sendline("My name is Ada.")
        chat.expect("you> ")
        reply = chat.before.split("My name is Ada.", 1)[1].strip()
        assert reply
        chat.sendline("What is my name?")
        chat.expect("you> ")
        history = client.get(f"/v1/conversations/{first}").json()["messages"]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert history[0]["content"] == "My name is Ada." and history[1]["content"].strip() == reply
        chat.sendline("/reset")
        chat.expect(r"\(new conversation (chat-[0-9a-f]+)\)")
        assert chat.match.group(1) != first
        assert client.get(f"/v1/conversations/{first}").status_code == 404  # forgotten on the server too
        chat.expect("you> ")
        chat.sendline("/nope")
        chat.expect("unknown command /nope")
        chat.expect("you> ")
        chat.sendline("/exit")
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0


def _interrupted_batch(stack: Stack, args: list[str]) -> str:
    """Run ``textgen batch`` in an 80-column pty, let it draw, press Ctrl-C; returns what it printed."""
    run = pexpect.spawn(TEXTGEN, ["batch", *args, "--poll", "0.2"], env=cli_env(stack), encoding="utf-8",
                        timeout=120, dimensions=(24, 80))
    try:
        run.expect(r"(submitted|following) (\x1b\[[0-9;]*m)*batch_")  # the id is printed in bold
        run.expect("items/s")  # the progress line is up
        run.sendintr()
        run.expect(pexpect.EOF)
        return str(run.before)
    finally:
        run.close()


def test_batch_ctrl_c_prints_the_last_line_once_and_re_attach_keeps_the_elapsed_time(
        stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"custom_id": f"p{i}", "prompt": f"Say {i}."}) + "\n" for i in range(3)))
    first = _interrupted_batch(stack, [str(prompts), "--model", IDLE_MODEL, "-o", str(tmp_path / "out.jsonl")])
    batch_id = first.split("--id ", 1)[1].split()[0]
    assert first.count("in_progress 0/3 0% -- items/s ETA --") == 1, first  # printed once, whole
    assert f".venv/bin/textgen batch --id {batch_id} -o" in first
    time.sleep(4)  # a display that restarted its clock on re-attach would show less than this
    again = _interrupted_batch(stack, ["--id", batch_id, "-o", str(tmp_path / "out.jsonl")])
    age = time.time() - client.get(f"/v1/batches/{batch_id}").json()["created_at"]
    assert again.count("in_progress 0/3") == 1, again

    def elapsed(text: str) -> int:
        h, m, s = text.split("in_progress 0/3 0% -- items/s ETA -- ", 1)[1].split()[0].split(":")
        return int(h) * 3600 + int(m) * 60 + int(s)

    assert elapsed(again) >= 4 and abs(elapsed(again) - age) < 5  # counted from the batch's created_at
    assert client.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
