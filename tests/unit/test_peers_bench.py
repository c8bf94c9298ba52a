"""bench/peers.py's own logic, without starting any server: bad arguments are refused at once, and a
row whose server fails is reported while the run still ends with its table and JSON line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import peers  # noqa: E402


def run_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["peers.py", *argv])
    peers.main()


@pytest.mark.parametrize("argv", [["--concurrent", "300"], ["--concurrent", "0"], ["--single", "0"],
                                  ["--max-tokens", "-1"]])
def test_arguments_out_of_range_are_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch,
                                                                   argv: list[str]) -> None:
    monkeypatch.setattr(peers, "run_textgen", lambda *a, **k: pytest.fail("a server was started"))
    with pytest.raises(SystemExit) as refused:
        run_main(monkeypatch, *argv)
    assert refused.value.code == 2


def test_a_row_whose_server_dies_is_reported_and_the_others_still_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def dies(*args: object, **kwargs: object) -> peers.Figures:
        raise RuntimeError("the server exited with status 1")

    monkeypatch.setattr(peers, "run_textgen", dies)
    monkeypatch.setattr(peers, "run_vllm", dies)
    monkeypatch.setattr(peers, "run_textgen_vllm", lambda *a, **k: peers.Figures(100.0, 20.0, 3.2))
    monkeypatch.setattr(peers, "vllm_python", lambda path: path)
    run_main(monkeypatch, "--vllm-python", str(tmp_path / "python"), "--concurrent", "4", "--single", "1")
    out = capsys.readouterr().out
    assert "textgen failed: the server exited with status 1" in out and "vLLM failed" in out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["textgen_tok_s"] is None and figures["vllm_tok_s"] is None
    assert figures["textgen_vllm_tok_s"] == 100.0 and figures["textgen_vllm_single_latency_s"] == 3.2
    assert figures["textgen_vllm_vs_vllm"] is None and figures["concurrent"] == 4
