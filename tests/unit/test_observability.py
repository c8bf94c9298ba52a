"""Pure logic of the observability pieces: queue list names, worker metrics ports, Flower's
command line, and the JSON log line a log shipper reads."""

from __future__ import annotations

import io
import json
import logging

import pytest

from textgen_cli.processes import flower_command, worker_metrics_env
from textgen_core.keys import Keys
from textgen_core.logs import configure_logging, formatter
from textgen_core.queues import model_queues, priority_lists
from textgen_core.settings import Settings


def test_a_queue_is_counted_over_every_celery_priority_list() -> None:
    lists = priority_lists("textgen.m.interactive")
    assert lists[0] == "textgen.m.interactive"  # priority 0 (Celery's default) is the plain list
    assert "textgen.m.interactive\x06\x169" in lists and len(lists) == 10


def test_every_model_has_one_queue_per_lane() -> None:
    refs = model_queues(Keys("tg"), ["a", "b.c"])
    assert [(r.model, r.lane, r.name) for r in refs] == [
        ("a", "interactive", "tg.a.interactive"), ("a", "bulk", "tg.a.bulk"),
        ("b.c", "interactive", "tg.b_c.interactive"), ("b.c", "bulk", "tg.b_c.bulk"),
    ]


def test_each_worker_process_on_a_machine_gets_its_own_metrics_port() -> None:
    settings = Settings(_env_file=None, worker_metrics_port=9101)
    assert [worker_metrics_env(settings, i)["TEXTGEN_WORKER_METRICS_PORT"] for i in range(3)] == \
        ["9101", "9102", "9103"]
    off = Settings(_env_file=None, worker_metrics_port=0)
    assert worker_metrics_env(off, 2)["TEXTGEN_WORKER_METRICS_PORT"] == "0"


def test_flower_runs_without_worker_code_and_with_basic_auth_from_settings() -> None:
    cmd = flower_command(Settings(_env_file=None, flower_basic_auth="ops:pw", flower_port=5600))
    assert "-A" not in cmd and cmd[cmd.index("--config") + 1] == "celeryconfig"
    assert "--basic-auth=ops:pw" in cmd and "--port=5600" in cmd


def test_json_log_lines_carry_job_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    logger = logging.getLogger("textgen.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("job succeeded", extra={"job_id": "job_1", "model": "m", "queue": "q", "e2e_seconds": 1.5})
    line = json.loads(stream.getvalue())
    assert line["message"] == "job succeeded" and line["level"] == "WARNING"
    assert (line["job_id"], line["model"], line["queue"], line["e2e_seconds"]) == ("job_1", "m", "q", 1.5)
    assert "time" in line and line["logger"] == "textgen.test.json"


def test_log_level_setting_also_quiets_loggers_that_set_their_own_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.setLevel(logging.INFO)  # as uvicorn --log-level info leaves it
    try:
        configure_logging(Settings(_env_file=None, log_level="WARNING"), "api")
        uvicorn.info("started")
        uvicorn.warning("disk almost full")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [(x["message"], x["service"]) for x in lines] == [("disk almost full", "api")]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
