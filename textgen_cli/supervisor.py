"""Child processes kept running: a child that dies is started again after a backoff, a crash loop
(too many deaths in a window) ends the whole run, and ``stop`` ends every child (Ctrl-C / SIGTERM).

The platform survives a dead process by itself (leases hand a killed worker's jobs back, the API
is stateless, Redis keeps an append-only file), so the one thing missing after a death is the
process: restarting it is enough, and stopping the rest would turn one fault into an outage."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Spawn = Callable[[], subprocess.Popen[bytes]]


class CrashLoop(RuntimeError):
    """A child died too often in the window: restarting it again would only hide the fault."""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    name: str
    spawn: Spawn
    log: Path | None = None
    last: bool = False  # stopped after the others (Redis: the others still write to it on their way out)
    proc: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    restarts: int = 0
    # A process can be alive to poll() yet wedged (stopped, deadlocked): ``alive`` says whether it
    # still does its work (a worker's heartbeat); once it has said so, ``hang_seconds`` of silence
    # get it killed, and then restarted as any dead child.
    alive: Callable[[], bool] | None = None
    hang_seconds: float = 60.0
    seen_alive_at: float | None = None


class Supervisor:
    """Starts children, restarts the dead ones with exponential backoff, and stops them all."""

    def __init__(self, say: Callable[[str], None] = print, *, max_deaths: int = 5, window: float = 120.0,
                 first_delay: float = 0.5, max_delay: float = 10.0) -> None:
        self.say = say
        self.max_deaths = max_deaths
        self.window = window
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.children: dict[str, Child] = {}

    def add(self, name: str, spawn: Spawn, *, log: Path | None = None, last: bool = False,
            proc: subprocess.Popen[bytes] | None = None, alive: Callable[[], bool] | None = None,
            hang_seconds: float = 60.0) -> Child:
        """Supervise ``name``: ``proc`` if it is already running, else a process from ``spawn``."""
        child = Child(name, spawn, log, last, proc if proc is not None else spawn(), alive=alive,
                      hang_seconds=hang_seconds)
        self.children[name] = child
        return child

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A child from a command line, its output on ours."""
        child = self.add(name, lambda: subprocess.Popen(cmd, env=env))
        assert child.proc is not None
        return child.proc

    def pid(self, name: str) -> int | None:
        proc = self.children[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def dead(self) -> str | None:
        """The first child that has exited, if any (for callers that stop rather than restart)."""
        return next((c.name for c in self.children.values() if c.proc is not None and c.proc.poll() is not None),
                    None)

    def check(self, now: float | None = None) -> None:
        """Note the children that died since the last check and restart those whose backoff is over.

        Raises ``CrashLoop`` when one died ``max_deaths`` times within ``window`` seconds."""
        now = time.monotonic() if now is None else now
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None and child.alive is not None:
                self._probe(child, now)
            if child.proc is not None and (code := child.proc.poll()) is not None:
                child.proc = None
                self._died(child, describe_exit(code), now)
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.restarts += 1
                try:
                    child.proc = child.spawn()
                except (OSError, RuntimeError) as exc:
                    self._died(child, f"could not start: {exc}", now)
                    continue
                child.seen_alive_at = None
                self.say(f"{child.name} restarted (pid {child.proc.pid}, restart {child.restarts})")

    def _probe(self, child: Child, now: float) -> None:
        assert child.alive is not None and child.proc is not None
        if child.alive():
            child.seen_alive_at = now
        elif child.seen_alive_at is not None and now - child.seen_alive_at > child.hang_seconds:
            self.say(f"{child.name} is running but has not shown it is alive for {child.hang_seconds:.0f} s; "
                     "killing it")
            child.proc.kill()
            child.proc.wait()

    def _died(self, child: Child, how: str, now: float) -> None:
        child.deaths.append(now)
        while child.deaths and child.deaths[0] < now - self.window:
            child.deaths.popleft()
        where = f"; its log: {child.log}" if child.log else ""
        if len(child.deaths) >= self.max_deaths:
            raise CrashLoop(f"{child.name} died {len(child.deaths)} times in {self.window:.0f} s "
                            f"(last: {how}); giving up{where}")
        delay = min(self.first_delay * 2 ** (len(child.deaths) - 1), self.max_delay)
        child.restart_at = now + delay
        self.say(f"{child.name} exited ({how}); restarting it in {delay:.1f} s{where}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (those marked ``last`` once the others are gone); SIGKILL after ``timeout``."""
        for last in (False, True):
            group = [c.proc for c in self.children.values() if c.last == last and c.proc is not None]
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.send_signal(signal.SIGCONT)  # a stopped child acts on the SIGTERM at once
            deadline = time.monotonic() + timeout
            for proc in group:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for child in self.children.values():
            child.restart_at = None
