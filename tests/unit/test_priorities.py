"""Priorities: the pure ordering and aging rules, the engine's intake, and, on a real (bundled)
redis-server with kombu's own Redis transport, the order in which a worker takes messages of both
lanes and every priority, the broker's aging, and the backlog gauges' figures."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery
from kombu import Consumer, Queue

import celeryconfig
from textgen_core.aging import BrokerAging
from textgen_core.engine.batching import _Intake, _Row
from textgen_core.engine.text import TextState
from textgen_core.jobs import SamplingParams
from textgen_core.keys import Keys
from textgen_core.priorities import (
    admission_order,
    ceiling_for,
    effective_priority,
    message_priority,
    send_options,
)
from textgen_core.queues import model_queues, priority_backlog
from textgen_core.settings import Settings

MODEL = "m"


def test_effective_priority_improves_one_level_per_aging_period_and_stops_at_zero() -> None:
    assert [effective_priority(2, waited, 10) for waited in (0, 9.9, 10, 19.9, 20, 500)] == [2, 2, 1, 1, 0, 0]
    assert effective_priority(1, 1000, 0) == 1  # aging off


def test_admission_takes_the_better_priority_first_and_equals_in_arrival_order() -> None:
    now = 100.0
    waiting = [(2, 99.0), (1, 99.5), (0, 99.8), (1, 99.1), (0, 99.9)]
    assert admission_order(waiting, now, aging_s=30) == [2, 4, 3, 1, 0]


def test_aging_lets_an_old_priority_2_job_run_before_a_stream_of_newer_priority_0_jobs() -> None:
    aging = 10.0
    old = (2, 0.0)
    for now in (5.0, 15.0):  # young, then one period old: still behind fresh priority-0 work
        stream = [(0, now - 0.5), (0, now - 0.1)]
        assert admission_order([old, *stream], now, aging)[0] != 0
    now = 20.0  # two periods: it ranks with priority 0 and arrived first
    stream = [(0, t) for t in (19.0, 19.5, 19.9)]
    assert admission_order([*stream, old], now, aging)[0] == 3


def test_lanes_have_their_own_broker_steps_so_any_interactive_message_comes_before_bulk() -> None:
    assert [message_priority("interactive", p) for p in (0, 1, 2)] == [0, 1, 2]
    assert [message_priority("bulk", p) for p in (0, 1, 2)] == [3, 4, 5]
    assert message_priority("interactive", 7) == 2  # clamped into the lane
    assert celeryconfig.broker_transport_options["priority_steps"] == [0, 1, 2, 3, 4, 5]


def test_ceilings_name_keys_as_api_keys_does_and_others_get_the_default() -> None:
    settings = Settings(_env_file=None, api_keys=["k-gold", "k-plain"], priority_ceilings={"k-gold": 0},
                        priority_ceiling_default=2)
    assert ceiling_for(settings, settings.owner_id("k-gold")) == 0
    assert ceiling_for(settings, settings.owner_id("k-plain")) == 2
    digest = Settings(_env_file=None, api_keys=["k-gold"], priority_ceilings={
        "sha256:" + settings.owner_ids().popitem()[0]: 0})
    assert ceiling_for(digest, digest.owner_id("k-plain")) == 0
    assert Settings(_env_file=None).priority_ceiling_default == 1
    with pytest.raises(ValueError, match="less than or equal to 2"):
        Settings(_env_file=None, priority_ceilings={"k": 3})


def _row(job_id: str, priority: int, arrived_at: float, lane: str = "interactive") -> _Row:
    return _Row(job_id=job_id, prompt_ids=[1], params=SamplingParams(), future=Future(), deadline=0.0,
                text=TextState(stop=[]), generator=None, lane=lane, priority=priority, arrived_at=arrived_at)


def test_the_engine_intake_admits_by_aged_priority_when_fewer_rows_fit_than_wait() -> None:
    intake = _Intake(aging_s=30)
    now = time.monotonic()
    for job_id, priority, age in (("p2-new", 2, 1), ("p1", 1, 2), ("p0", 0, 0.5), ("p2-old", 2, 65)):
        intake.put(_row(job_id, priority, now - age))
    assert [r.job_id for r in intake.take(2)] == ["p2-old", "p0"]  # aged two levels, it arrived first
    assert [r.job_id for r in intake.take(1)] == ["p1"]
    assert [r.job_id for r in intake.take(5)] == ["p2-new"]
    assert intake.take(1) == [] and len(intake) == 0


def _celery(url: str) -> Celery:
    app = Celery("priorities-test", broker=url)
    app.conf.broker_transport_options = celeryconfig.broker_transport_options
    return app


def _send(app: Celery, keys: Keys, name: str, lane: str, priority: int, enqueued_at: float | None = None) -> None:
    app.send_task("t", args=[name], queue=keys.queue(MODEL, lane), task_id=name,
                  **send_options(lane, priority, enqueued_at))


def _taken(app: Celery, keys: Keys, count: int) -> list[str]:
    """The order in which a worker consuming both lanes (as ``workers/app.py`` adds them) takes messages."""
    order: list[str] = []
    with app.connection() as conn:
        consumer = Consumer(conn.default_channel, queues=[Queue(keys.queue(MODEL, lane)) for lane in
                                                          ("interactive", "bulk")],
                            accept=["json"], callbacks=[lambda _, msg: (order.append(msg.headers["id"]), msg.ack())])
        consumer.qos(prefetch_count=1)
        with consumer:
            while len(order) < count:
                conn.drain_events(timeout=5)
    return order


def test_a_worker_takes_interactive_before_bulk_and_the_better_priority_first_in_each_lane(redis_url: str) -> None:
    keys = Keys("prio1")
    app = _celery(redis_url)
    for name, lane, priority in (("i1", "interactive", 1), ("b0", "bulk", 0), ("i2", "interactive", 2),
                                 ("b2", "bulk", 2), ("i0", "interactive", 0), ("b1", "bulk", 1),
                                 ("i0-later", "interactive", 0)):
        _send(app, keys, name, lane, priority)
    assert _taken(app, keys, 7) == ["i0", "i0-later", "i1", "i2", "b0", "b1", "b2"]


def test_broker_aging_moves_an_old_low_message_ahead_of_newer_high_ones_within_its_lane(redis_url: str) -> None:
    keys = Keys("prio2")
    app = _celery(redis_url)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    now = time.time()
    _send(app, keys, "old-p2", "interactive", 2, enqueued_at=now - 25)  # 2.5 aging periods ago
    _send(app, keys, "young-p2", "interactive", 2, enqueued_at=now - 5)
    _send(app, keys, "old-bulk-p2", "bulk", 2, enqueued_at=now - 100)
    for i in range(3):
        _send(app, keys, f"p0-{i}", "interactive", 0, enqueued_at=now - 1 + i * 0.1)
    aging = BrokerAging(r, keys, [MODEL], aging_s=10)
    assert aging.promote(now) == 2  # the old interactive and the old bulk message
    assert aging.promote(now) == 0  # nothing more is due
    # The old p2 ranks at 0 now and is taken first; the old bulk item moved up inside bulk only.
    assert _taken(app, keys, 6) == ["old-p2", "p0-0", "p0-1", "p0-2", "young-p2", "old-bulk-p2"]


def test_backlog_reports_depth_and_the_oldest_wait_per_lane_and_priority(redis_url: str) -> None:
    keys = Keys("prio3")
    app = _celery(redis_url)
    now = time.time()
    _send(app, keys, "a", "interactive", 2, enqueued_at=now - 40)
    _send(app, keys, "b", "interactive", 2, enqueued_at=now - 3)
    _send(app, keys, "c", "interactive", 0, enqueued_at=now - 7)
    _send(app, keys, "d", "bulk", 1, enqueued_at=now - 90)

    async def read() -> dict[tuple[str, int], tuple[int, float]]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            backlog = await priority_backlog(client, model_queues(keys, [MODEL]), now)
        finally:
            await client.aclose()
        return {(b.queue.lane, b.priority): (b.depth, round(b.oldest_age_seconds)) for b in backlog}

    assert asyncio.run(read()) == {
        ("interactive", 0): (1, 7), ("interactive", 1): (0, 0), ("interactive", 2): (2, 40),
        ("bulk", 0): (0, 0), ("bulk", 1): (1, 90), ("bulk", 2): (0, 0),
    }
