"""Every Lua script textgen runs, and the one registry of them.

The sources live in this package, one module per family (``jobs``, ``batches``, ``leases``,
``pending``, ``dispatch``, ``cache``, ``outbox``, ``slots``), each a module-level constant with
a comment giving its KEYS and ARGV; the shared Lua functions are composed in ``fragments``.
Key names come in through KEYS, computed by ``textgen_core/keys.py`` (the one exception, a job's
batch, is documented in ``fragments``). No module outside this package holds Lua
(``tests/unit/test_scripts.py`` scans the tree for it).

Each script is registered below under a name (``define``), and the name is the constant a
store binds when it is built (``Scripts``), so a script that was never defined fails at start,
not on the first call of a rare path, and a misspelt constant is an ImportError at import.
``tests/unit/test_scripts.py`` loads every defined script into a real Redis and runs each one.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

_SOURCES: dict[str, str] = {}


class MissingScript(LookupError):
    """A store asked for a script that no module defined, or that it did not bind."""


def define(name: str, source: str) -> str:
    """Add a script to the registry under ``name`` (once); returns the name for the store to bind."""
    if _SOURCES.get(name, source) != source:
        raise ValueError(f"Lua script {name!r} is defined twice with different sources")
    _SOURCES[name] = source
    return name


def defined() -> dict[str, str]:
    """Every defined script, name -> source (for the registry's test and for preloading)."""
    return dict(_SOURCES)


def source(name: str) -> str:
    try:
        return _SOURCES[name]
    except KeyError:
        raise MissingScript(f"no Lua script named {name!r} is defined") from None


class Scripts:
    """The scripts one store uses, registered on its client at construction.

    ``scripts[NAME](keys=[...], args=[...])`` runs one (EVALSHA, loading it on a cache miss).
    """

    def __init__(self, client: redis.Redis | aioredis.Redis, *names: str):
        self._bound: dict[str, Any] = {name: client.register_script(source(name)) for name in names}

    def __getitem__(self, name: str) -> Any:
        try:
            return self._bound[name]
        except KeyError:
            raise MissingScript(f"Lua script {name!r} is not bound by this store (bound: "
                                f"{', '.join(sorted(self._bound))})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._bound


# The registry: name -> source. The family modules import nothing from here, so there is no circle.
from textgen_core.scripts import batches, cache, dispatch, jobs, leases, outbox, pending, slots  # noqa: E402

JOB_CLAIM = define("job.claim", jobs.CLAIM)
JOB_FINISH = define("job.finish", jobs.FINISH)
JOB_CREATE_FINISHED = define("job.create_finished", jobs.CREATE_FINISHED)
JOB_CANCEL = define("job.cancel", jobs.CANCEL)
JOB_REQUEUE = define("job.requeue", jobs.REQUEUE)
BATCH_START = define("batch.start", batches.START)
BATCH_REQUEST_CANCEL = define("batch.request_cancel", batches.REQUEST_CANCEL)
LEASE_HOLD = define("lease.hold", leases.HOLD)
LEASE_RENEW = define("lease.renew", leases.RENEW)
LEASE_RELEASE = define("lease.release", leases.RELEASE)
LEASE_REAP = define("lease.reap", leases.REAP)
PENDING_ADMIT = define("pending.admit", pending.ADMIT)
PENDING_RESERVE = define("pending.reserve", pending.RESERVE)
PENDING_UNRESERVE = define("pending.unreserve", pending.UNRESERVE)
PENDING_WITHDRAW = define("pending.withdraw", pending.WITHDRAW)
DISPATCH_TAKE = define("dispatch.take", dispatch.TAKE)
DISPATCH_REAP = define("dispatch.reap", dispatch.REAP)
CACHE_RELEASE_LEAD = define("cache.release_lead", cache.RELEASE_LEAD)
OUTBOX_TAKE = define("outbox.take", outbox.TAKE)
OUTBOX_LEASE = define("outbox.lease", outbox.LEASE)
SLOTS_ACQUIRE = define("slots.acquire", slots.ACQUIRE)
