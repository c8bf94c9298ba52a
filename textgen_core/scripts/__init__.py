"""Every Lua script textgen runs, and the one registry of them.

The sources live in this package, one module per family (``jobs``, ``batches``, ``leases``,
``pending``, ``dispatch``, ``cache``, ``outbox``, ``slots``), each a module-level constant with
a comment giving its KEYS and ARGV; the shared Lua functions are composed in ``fragments``.
Key names come in through KEYS, computed by ``textgen_core/keys.py`` (the one exception, a job's
batch, is documented in ``fragments``). No module outside this package holds Lua
(``tests/unit/test_scripts.py`` scans the tree for it).

Each family module registers its scripts here by name (``define``) and keeps the name as the
constant a store imports and binds when it is built (``Scripts``), so a script that was never
defined fails at start, not on the first call of a rare path, and a misspelt constant is an
ImportError at import. This module imports nothing of the project (a package ``__init__`` stays
light), so the family modules may import it.
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

