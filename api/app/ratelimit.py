"""Per-key rate limits on Redis: requests per minute, generated tokens per minute, and batch
tokens per day (batches have a budget of their own, so bulk work never spends interactive work's).

Windows are kept by the ``limits`` library (sliding-window counters, shared by every API
replica). Tokens are counted on admission as the job's ``max_tokens``, the most it can
generate, so a key can never have more generation in flight than its budget. Every limited
response carries ``x-ratelimit-*`` headers (OpenAI's names); a refusal is a 429 with
``Retry-After``.
"""

from __future__ import annotations

import math
import time

from fastapi import Response
from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from api.app.errors import APIError
from api.app.metrics import RATE_LIMITED
from textgen_core.settings import Settings


class RateLimits:
    def __init__(self, settings: Settings, key_prefix: str):
        storage = RedisStorage(f"async+{settings.redis_url}", implementation="redispy", key_prefix=key_prefix,
                               socket_connect_timeout=settings.api_redis_socket_timeout_seconds,
                               socket_timeout=settings.api_redis_socket_timeout_seconds)
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        rpm, tpm = settings.rate_limit_requests_per_minute, settings.rate_limit_tokens_per_minute
        self.requests: RateLimitItem | None = RateLimitItemPerMinute(rpm) if rpm else None
        self.tokens: RateLimitItem | None = RateLimitItemPerMinute(tpm) if tpm else None
        # Its own namespace: the library keys a window by the item's amount and period only.
        batch = settings.batch_tokens_per_day
        self.batch_tokens: RateLimitItem | None = RateLimitItemPerDay(batch, namespace="BATCH") if batch else None

    async def hit_request(self, owner: str) -> dict[str, str]:
        """Count one request against the key; 429 when its per-minute budget is spent.
        Returns the ``x-ratelimit-*-requests`` headers for the response."""
        if self.requests is None:
            return {}
        if not await self._limiter.hit(self.requests, owner):
            raise await self._refusal(self.requests, owner, "requests")
        return await self._headers(self.requests, owner, "requests")

    async def take_tokens(self, owner: str, tokens: int) -> None:
        """Count ``tokens`` against the key's tokens per minute, or refuse (429) if they do not fit.
        One atomic step: requests sent at once cannot all pass on the same remainder. A request
        refused after this (or answered from the cache) gives them back with :meth:`refund_tokens`."""
        if self.tokens is None:
            return
        if tokens > self.tokens.amount:
            raise APIError(422, f"max_tokens {tokens} is more than this key's budget of {self.tokens.amount} "
                                "tokens per minute", code="max_tokens_over_budget", param="max_tokens")
        if not await self._limiter.hit(self.tokens, owner, cost=tokens):
            raise await self._refusal(self.tokens, owner, "tokens")

    async def refund_tokens(self, owner: str, tokens: int) -> None:
        """Give back what :meth:`take_tokens` counted for a request that was not accepted after all.
        The window's counter takes a negative hit (its script only adds), moments after the take."""
        if self.tokens is not None:
            await self._limiter.hit(self.tokens, owner, cost=-tokens)

    async def token_headers(self, owner: str, response: Response) -> None:
        """The ``x-ratelimit-*-tokens`` headers of the key's window, on an accepted job's response."""
        if self.tokens is not None:
            response.headers.update(await self._headers(self.tokens, owner, "tokens"))

    async def take_batch_tokens(self, owner: str, tokens: int) -> None:
        """Count a batch's ``tokens`` against the key's batch tokens per day, or refuse (429) if they
        do not fit. One atomic step: batches sent at once cannot all pass on the same remainder."""
        if self.batch_tokens is not None and not await self._limiter.hit(self.batch_tokens, owner, cost=tokens):
            raise await self._refusal(self.batch_tokens, owner, "batch-tokens")

    async def _headers(self, item: RateLimitItem, owner: str, what: str) -> dict[str, str]:
        stats = await self._limiter.get_window_stats(item, owner)
        return _window_headers(item, what, stats.remaining, stats.reset_time)

    async def _refusal(self, item: RateLimitItem, owner: str, what: str) -> APIError:
        RATE_LIMITED.labels(what).inc()
        stats = await self._limiter.get_window_stats(item, owner)
        headers = _window_headers(item, what, stats.remaining, stats.reset_time)
        headers["Retry-After"] = str(math.ceil(_seconds_to_reset(item, stats.reset_time)))
        per = item.GRANULARITY.name
        return APIError(429, f"rate limit exceeded: {item.amount} {what.replace('-', ' ')} per {per} for this API key; "
                             f"retry after {headers['Retry-After']} s", code="rate_limit_exceeded",
                        headers=headers)


def _window_headers(item: RateLimitItem, what: str, remaining: int, reset_time: float) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{what}": str(item.amount),
        f"x-ratelimit-remaining-{what}": str(max(0, remaining)),
        f"x-ratelimit-reset-{what}": f"{_seconds_to_reset(item, reset_time):.0f}s",
    }


def _seconds_to_reset(item: RateLimitItem, reset_time: float) -> float:
    """Seconds until the window frees capacity; the library reports 0 at a window's very start,
    when the truthful answer is the whole window."""
    left = reset_time - time.time()
    return left if left >= 1 else float(item.get_expiry())
