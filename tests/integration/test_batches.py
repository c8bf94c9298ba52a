"""Batches end to end on the real stack: inputs (JSON, CSV, JSONL), results, cancel, partial
failure, lanes, the OpenAI SDK round trip, and a worker killed mid-batch."""

from __future__ import annotations

import csv
import io
import json
import signal
import time

import httpx
import openai
import pytest

from tests.conftest import KEY_A, KEY_B, Stack, wait_job
from textgen_core.settings import Settings

# Generous: the bulk items share two CPU cores with everything else on a test machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

FAST = {"temperature": 0, "max_tokens": 8}


def submit_batch(client: httpx.Client, items: list[dict], **defaults: object) -> dict:
    resp = client.post("/v1/batches", json={"items": items, **FAST, **defaults})
    assert resp.status_code == 202, resp.text
    return resp.json()


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = 600,
               until: tuple[str, ...] = ("completed", "failed", "canceled", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in until or time.monotonic() > deadline:
            return batch
        time.sleep(0.5)


def results(client: httpx.Client, batch_id: str) -> list[dict]:
    resp = client.get(f"/v1/batches/{batch_id}/results")
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line]


def test_json_batch_completes_with_every_item_once_in_input_order(client: httpx.Client) -> None:
    items = [{"custom_id": f"p-{i}", "prompt": f"Name a fruit that starts with the letter {c}."}
             for i, c in enumerate("ABCDE")]
    items.append({"custom_id": "sku-9", "product": {"name": "Trail running shoe", "category": "Footwear",
                                                      "price": "89.00", "attributes": {"drop": "6 mm"}}})
    batch = submit_batch(client, items)
    assert batch["status"] in ("in_progress", "completed")
    assert batch["request_counts"] == {"total": 6, "completed": batch["request_counts"]["completed"],
                                       "failed": 0, "canceled": 0, "expired": 0}
    done = wait_batch(client, batch["id"])
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": 6, "completed": 6, "failed": 0, "canceled": 0, "expired": 0}
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["eta_seconds"] == 0 and done["items_per_second"] > 0
    rows = results(client, batch["id"])
    assert [r["custom_id"] for r in rows] == [i["custom_id"] for i in items]
    assert all(r["status"] == "succeeded" and r["output"] and r["usage"]["completion_tokens"] > 0 for r in rows)
    # Listed for its owner only.
    listed = client.get("/v1/batches", params={"limit": 100}).json()
    assert batch["id"] in [b["id"] for b in listed["data"]]
    with httpx.Client(base_url=str(client.base_url), headers={"X-API-Key": KEY_B}) as other:
        assert other.get(f"/v1/batches/{batch['id']}").status_code == 404
        assert batch["id"] not in [b["id"] for b in other.get("/v1/batches").json()["data"]]


def test_csv_upload_of_products_gives_csv_results(client: httpx.Client) -> None:
    text = ("custom_id,name,category,price,color\n"
            "sku-1,Merino wool beanie,Accessories,24.00,charcoal\n"
            'sku-2,"Ceramic pour-over set, 2 cups",Kitchen,39.50,white\n'
            "sku-3,Bamboo cutting board,Kitchen,19.99,\n")
    resp = client.post("/v1/batches", files={"file": ("products.csv", text, "text/csv")},
                       data={"mode": "ecommerce", "max_tokens": "8", "temperature": "0"})
    assert resp.status_code == 202, resp.text
    batch = wait_batch(client, resp.json()["id"])
    assert batch["request_counts"]["completed"] == 3 and batch["mode"] == "ecommerce"
    out = client.get(f"/v1/batches/{batch['id']}/results", params={"format": "csv"})
    assert out.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(out.text)))
    assert [r["custom_id"] for r in rows] == ["sku-1", "sku-2", "sku-3"]
    assert all(r["status"] == "succeeded" and r["output"] and int(r["total_tokens"]) > 0 for r in rows)


def test_jsonl_upload_completes(client: httpx.Client) -> None:
    lines = [json.dumps({"custom_id": "a", "prompt": "Say yes."}),
             "",
             json.dumps({"custom_id": "b", "messages": [{"role": "user", "content": "Say no."}]})]
    resp = client.post("/v1/batches", files={"file": ("items.jsonl", "\n".join(lines), "application/jsonl")},
                       data={"max_tokens": "6", "temperature": "0"})
    assert resp.status_code == 202, resp.text
    batch = wait_batch(client, resp.json()["id"])
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0, "canceled": 0, "expired": 0}
    assert sorted(r["custom_id"] for r in results(client, batch["id"])) == ["a", "b"]


@pytest.mark.parametrize(("name", "content", "line"), [
    ("bad.jsonl", '{"custom_id": "a", "prompt": "ok"}\n{"custom_id": "b", "prompt": \n', 2),
    ("bad.jsonl", '{"custom_id": "a", "prompt": "ok"}\n\n{"custom_id": "c", "prompt": "x", "bogus": 1}\n', 3),
    ("bad.csv", 'custom_id,prompt\na,hello\nb,"unclosed\n', 3),
    ("bad.csv", "custom_id,prompt\na,hello\nb,hi,extra\n", 3),
    ("dup.csv", "custom_id,prompt\na,hello\na,again\n", 3),
])
def test_malformed_upload_is_400_naming_the_line(client: httpx.Client, name: str, content: str,
                                                 line: int) -> None:
    before = len(client.get("/v1/batches", params={"limit": 100}).json()["data"])
    resp = client.post("/v1/batches", files={"file": (name, content)})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["message"].startswith(f"line {line}:"), error
    assert error["param"] == "file"
    assert len(client.get("/v1/batches", params={"limit": 100}).json()["data"]) == before


def test_an_unknown_upload_format_is_400(client: httpx.Client) -> None:
    """Regression: ``format=xml`` was parsed as JSONL without a word."""
    resp = client.post("/v1/batches", files={"file": ("items.jsonl", '{"custom_id": "a", "prompt": "hi"}\n')},
                       data={"format": "xml"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "format" and "'xml'" in resp.json()["error"]["message"]


def test_too_many_items_is_413(client: httpx.Client) -> None:
    items = [{"custom_id": str(i), "prompt": "x"} for i in range(50_001)]
    resp = client.post("/v1/batches", json={"items": items})
    assert resp.status_code == 413
    assert "50,000" in resp.json()["error"]["message"]
    body = "custom_id,prompt\n" + "".join(f"{i},x\n" for i in range(50_001))
    resp = client.post("/v1/batches", files={"file": ("big.csv", body)})
    assert resp.status_code == 413, resp.text


def test_one_failing_item_fails_alone(client: httpx.Client) -> None:
    huge = "word " * 6000  # three of these far exceed the model's context
    items = [{"custom_id": "ok-1", "prompt": "Say hi."},
             {"custom_id": "too-long", "messages": [{"role": "user", "content": huge}] * 3},
             {"custom_id": "ok-2", "prompt": "Say bye."}]
    batch = wait_batch(client, submit_batch(client, items)["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1, "canceled": 0, "expired": 0}
    by_id = {r["custom_id"]: r for r in results(client, batch["id"])}
    assert by_id["too-long"]["status"] == "failed"
    assert "context" in by_id["too-long"]["error"]["message"]
    assert by_id["ok-1"]["output"] and by_id["ok-2"]["output"]


def test_results_while_running_then_cancel_keeps_what_completed(client: httpx.Client) -> None:
    items = [{"custom_id": f"c-{i}", "prompt": f"Write a sentence about the number {i}."} for i in range(60)]
    batch = submit_batch(client, items, max_tokens=16)
    deadline = time.monotonic() + 300
    while True:
        seen = client.get(f"/v1/batches/{batch['id']}").json()
        if seen["request_counts"]["completed"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    partial = results(client, batch["id"])
    assert 1 <= len(partial) < 60, "results are readable while the batch runs"
    assert seen["status"] == "in_progress" and seen["eta_seconds"] is not None
    resp = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] in ("cancelling", "canceled")
    final = wait_batch(client, batch["id"], timeout=120)
    counts = final["request_counts"]
    assert final["status"] == "canceled"
    assert counts["canceled"] > 0 and counts["completed"] >= len(partial)
    assert counts["completed"] + counts["failed"] + counts["canceled"] == 60
    rows = results(client, batch["id"])
    assert len(rows) == 60 and len({r["custom_id"] for r in rows}) == 60
    assert sum(r["status"] == "succeeded" for r in rows) == counts["completed"]
    assert client.post(f"/v1/batches/{batch['id']}/cancel").status_code == 409


def test_interactive_job_overtakes_a_bulk_backlog(client: httpx.Client) -> None:
    items = [{"custom_id": f"b-{i}", "prompt": f"List three facts about the year {1900 + i}."} for i in range(24)]
    batch = submit_batch(client, items, max_tokens=12)
    wait_batch(client, batch["id"], until=("in_progress",))
    time.sleep(1.0)  # the worker is now busy with bulk items
    job = client.post("/v1/jobs", json={"prompt": "Say hello.", **FAST}).json()
    done = wait_job(client, job["id"])
    assert done["status"] == "succeeded"
    snapshot = client.get(f"/v1/batches/{batch['id']}").json()
    final = wait_batch(client, batch["id"])
    print(f"\ninteractive queued {done['timings']['queue_seconds']}s, ran {done['timings']['generation_seconds']}s; "
          f"batch had {snapshot['request_counts']['completed']}/24 done when it finished")
    assert final["status"] == "completed"
    assert done["timings"]["finished_at"] < final["finished_at"]
    assert snapshot["request_counts"]["completed"] < 24, "the interactive job finished before the backlog"
    # It shared its decoding steps with at most TEXTGEN_BULK_ROWS_WITH_INTERACTIVE bulk rows, not max_batch.
    assert done["batch_size"] <= 1 + Settings(_env_file=None).bulk_rows_with_interactive < 8


def test_openai_sdk_files_and_batches_round_trip(stack: Stack) -> None:
    sdk = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=KEY_A, max_retries=0, timeout=60)
    lines = [
        {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Say hello."}],
                  "max_tokens": 8, "temperature": 0}},
        {"custom_id": "req-2", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "smollm2-135m-instruct",
                  "messages": [{"role": "system", "content": "Answer in one word."},
                               {"role": "user", "content": "Colour of grass?"}], "max_completion_tokens": 6}},
        {"custom_id": "req-3", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "smollm2-135m-instruct", "max_tokens": 8,
                  "messages": [{"role": "user", "content": "word " * 6000}] * 3}},
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = sdk.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(content)
    assert sdk.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert sdk.files.content(uploaded.id).content == content
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                               completion_window="24h", metadata={"job": "sdk-test"})
    assert batch.status in ("validating", "in_progress", "completed") and batch.request_counts.total == 3
    deadline = time.monotonic() + 300
    while batch.status not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.5)
        batch = sdk.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.metadata == {"job": "sdk-test"}
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 1
    assert batch.output_file_id and batch.error_file_id
    out = [json.loads(x) for x in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["req-1", "req-2"]
    for o in out:
        assert o["error"] is None and o["response"]["status_code"] == 200 and o["response"]["request_id"]
        body = o["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["total_tokens"] > 0
    errors = [json.loads(x) for x in sdk.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["req-3"] and errors[0]["response"] is None
    assert errors[0]["error"]["code"] == "prompt_too_long"
    # A line that does not match the endpoint is refused at creation, naming the line.
    bad = sdk.files.create(file=("bad.jsonl", json.dumps({**lines[0], "url": "/v1/embeddings"}).encode()),
                           purpose="batch")
    with pytest.raises(openai.BadRequestError, match="line 1"):
        sdk.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_a_worker_killed_mid_batch_loses_no_item(stack: Stack, client: httpx.Client) -> None:
    items = [{"custom_id": f"k-{i}", "prompt": f"Describe the colour number {i}."} for i in range(16)]
    batch = submit_batch(client, items, max_tokens=12)
    deadline = time.monotonic() + 300
    while client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]["completed"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    stack.procs["worker"].send_signal(signal.SIGKILL)
    stack.procs["worker"].wait(30)
    killed_at = client.get(f"/v1/batches/{batch['id']}").json()["request_counts"]
    stack.start_worker("worker")  # the same name, as a supervisor restarting it would
    stack.wait_for_worker("worker")
    final = wait_batch(client, batch["id"])
    print(f"\nkilled with {killed_at} done; finished with {final['request_counts']}")
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 16, "completed": 16, "failed": 0, "canceled": 0, "expired": 0}
    rows = results(client, batch["id"])
    assert [r["custom_id"] for r in rows] == [i["custom_id"] for i in items]
