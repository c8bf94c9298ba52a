"""The supervisor's rules on real (tiny) processes: restart with doubling backoff, forget deaths
older than the window, give up on a crash loop, stop everything with Redis-like children last."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from textgen_cli.supervisor import CrashLoop, Supervisor, describe_exit


def exits(code: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])


def sleeps() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def settle(sup: Supervisor, name: str) -> None:
    proc = sup.children[name].proc
    assert proc is not None
    proc.wait(30)


def test_a_dead_child_is_restarted_after_a_doubling_backoff_and_a_crash_loop_ends_it() -> None:
    said: list[str] = []
    sup = Supervisor(said.append, max_deaths=3, window=100, first_delay=1, max_delay=10)
    sup.add("api", lambda: exits(3))
    settle(sup, "api")
    sup.check(now=0)
    assert said == ["api exited (exit code 3); restarting it in 1.0 s"]
    sup.check(now=0.5)  # backoff not over: nothing started
    assert sup.children["api"].proc is None
    sup.check(now=1.0)
    assert said[-1].startswith("api restarted (pid ")
    settle(sup, "api")
    sup.check(now=2)
    assert said[-1] == "api exited (exit code 3); restarting it in 2.0 s"
    sup.check(now=4)
    settle(sup, "api")
    with pytest.raises(CrashLoop, match=r"api died 3 times in 100 s \(last: exit code 3\); giving up"):
        sup.check(now=5)


def test_deaths_older_than_the_window_are_forgotten() -> None:
    said: list[str] = []
    sup = Supervisor(said.append, max_deaths=2, window=10, first_delay=1)
    sup.add("worker", lambda: exits(1))
    for now in (0.0, 20.0, 40.0):  # one death every 20 s: never two in 10 s
        settle(sup, "worker")
        sup.check(now=now)
        assert said[-1] == "worker exited (exit code 1); restarting it in 1.0 s"
        sup.check(now=now + 1)


def test_a_child_that_cannot_be_started_counts_as_a_death() -> None:
    said: list[str] = []
    calls = iter([exits(0)])

    def spawn() -> subprocess.Popen[bytes]:
        try:
            return next(calls)
        except StopIteration:
            raise RuntimeError("port taken") from None
    sup = Supervisor(said.append, max_deaths=2, window=100, first_delay=1)
    sup.add("redis", spawn)
    settle(sup, "redis")
    sup.check(now=0)
    with pytest.raises(CrashLoop, match="last: could not start: port taken"):
        sup.check(now=1)


def test_stop_ends_every_child() -> None:
    sup = Supervisor(lambda _: None)
    sup.add("redis", sleeps, last=True)
    sup.add("worker", sleeps)
    started = time.monotonic()
    sup.stop(timeout=20)
    assert time.monotonic() - started < 20
    worker, redis = sup.children["worker"].proc, sup.children["redis"].proc
    assert worker is not None and redis is not None
    assert worker.returncode is not None and redis.returncode is not None


def test_dead_names_the_first_child_that_exited() -> None:
    """What ``textgen worker --gpus`` uses: it stops the others rather than restarting."""
    sup = Supervisor(lambda _: None)
    sup.start("gpu0", [sys.executable, "-c", "import time; time.sleep(60)"], {})
    proc = sup.start("gpu1", [sys.executable, "-c", "pass"], {})
    proc.wait(30)
    assert sup.dead() == "gpu1"
    sup.stop(timeout=20)


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exit code 2"
