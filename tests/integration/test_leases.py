"""Leases on a real Redis: a duplicate message of a job, run by the process that holds the job,
leaves the holder's lease alone (found by bench/chaos.py: re-sent duplicates made a live worker's
lease lapse, so its running job was reaped, run again alongside, and failed on attempts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from textgen_cli.redis_server import start_redis
from textgen_core.keys import Keys
from textgen_core.leases import JobLeases

pytestmark = pytest.mark.integration


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    url, proc = start_redis(tmp_path / "redis", appendonly=False)
    try:
        yield redis.Redis.from_url(url, decode_responses=True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_duplicate_message_in_the_same_process_does_not_stop_the_holders_renewals(client: redis.Redis) -> None:
    keys = Keys("leasetest")
    client.hset(keys.job("job_1"), mapping={"id": "job_1", "status": "queued"})
    leases = JobLeases(client, keys, lease_seconds=5, ttl=60)
    with leases.holding("job_1") as token:
        assert client.hget(keys.job("job_1"), "lease") == token
        with leases.holding("job_1") as duplicate:  # finds the job held by a live lease: takes nothing
            assert duplicate != token and client.hget(keys.job("job_1"), "lease") == token
        assert leases.held == 1
        before = client.zscore(keys.leases, "job_1")
        assert before is not None
        time.sleep(0.05)
        assert leases.renew() == 1  # the holder's lease is still renewed by the heartbeat
        after = client.zscore(keys.leases, "job_1")
        assert after is not None and after > before
        assert leases.reap() == []
    assert leases.held == 0
    assert client.hget(keys.job("job_1"), "lease") is None  # released on the way out
