"""Fixtures the unit tests share: a real Redis for the tests of scripts and stores (no fakes of it)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from textgen_cli.redis_server import start_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bundled redis-server of the module's own, without AOF; stopped after the module."""
    url, proc = start_redis(Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
