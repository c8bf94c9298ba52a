"""Result cache scripts (``textgen_core/cache.py``)."""

from __future__ import annotations

from textgen_core.scripts import define

# KEYS: lead. ARGV: job id. Gives the lead up only if this job still holds it; returns 1 if it did.
RELEASE_LEAD = define("cache.release_lead", """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
