"""One delivery attempt: guard, sign, POST, classify, record; and when to try again.

2xx is delivered; network errors, 429 and 5xx are retried on ``settings.webhook_retry_schedule``
(with jitter, never sooner than a ``Retry-After``); 410 disables the URL for the API key; any
other status stops. Every attempt is recorded on the job or batch it belongs to.
"""

from __future__ import annotations

import email.utils
import enum
import random
import time
from dataclasses import dataclass

import httpx
import redis

from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.webhooks.models import DeliveryRequest, WebhookDelivery
from textgen_core.webhooks.records import record_attempt, url_digest
from textgen_core.webhooks.signing import get_secret, signed_headers
from textgen_core.webhooks.urls import HostNotFound, UnsafeWebhookURL, resolve

MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


class Outcome(enum.StrEnum):
    delivered = "delivered"
    retry = "retry"  # worth another attempt, if the schedule has one left
    rejected = "rejected"  # a 4xx (or 3xx) answer: the receiver does not want it
    gone = "gone"  # 410: the URL is disabled for this API key
    refused = "refused"  # the URL is unsafe now, or disabled earlier


@dataclass(frozen=True)
class AttemptResult:
    outcome: Outcome
    delivery: WebhookDelivery
    retry_after: float | None = None
    seconds: float = 0.0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def next_delay(attempt: int, schedule: list[float], retry_after: float | None = None) -> float | None:
    """Seconds before attempt ``attempt + 1``, or None when the schedule is used up."""
    if attempt > len(schedule):
        return None
    delay = schedule[attempt - 1] * random.uniform(0.9, 1.2)
    return max(delay, retry_after or 0.0)


def is_disabled(client: redis.Redis, keys: Keys, owner: str, url: str) -> bool:
    return bool(client.exists(keys.webhook_disabled(owner, url_digest(url))))


class WebhookDeliverer:
    """Makes attempts for the webhook worker; one per process, sharing one HTTP connection pool."""

    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings, http: httpx.Client | None = None):
        self.client = client
        self.keys = keys
        self.settings = settings
        self.http = http or httpx.Client(follow_redirects=False, trust_env=False,
                                         headers={"user-agent": "textgen-webhooks/0.1"})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WebhookDeliverer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def attempt(self, request: DeliveryRequest) -> AttemptResult:
        started = time.monotonic()
        outcome, status, error, retry_after = self._send(request)
        delivery = WebhookDelivery(at=time.time(), event=request.event, webhook_id=request.webhook_id,
                                   attempt=request.attempt, status_code=status, error=error,
                                   delivered=outcome is Outcome.delivered)
        record_attempt(self.client, self.keys, request.object_id, delivery,
                       keep=self.settings.webhook_deliveries_max, ttl=self.settings.job_ttl_seconds)
        if outcome is Outcome.gone:
            self.client.set(self.keys.webhook_disabled(request.owner, url_digest(request.url)), "410",
                            ex=self.settings.webhook_disabled_ttl_seconds)
        return AttemptResult(outcome, delivery, retry_after, time.monotonic() - started)

    def _send(self, request: DeliveryRequest) -> tuple[Outcome, int | None, str | None, float | None]:
        if is_disabled(self.client, self.keys, request.owner, request.url):
            return Outcome.refused, None, "the URL answered 410 Gone earlier; deliveries to it are disabled", None
        try:
            target = resolve(request.url, self.settings.webhook_allow_private, self.settings.webhook_allow_loopback)
        except HostNotFound as exc:
            return Outcome.retry, None, str(exc), None
        except UnsafeWebhookURL as exc:
            return Outcome.refused, None, f"refused: {exc}", None
        secret = get_secret(self.client, self.keys, self.settings, request.owner)
        headers = signed_headers(secret, request.webhook_id, request.body)
        url = httpx.URL(request.url)
        # Connect to the address just checked (no second lookup that DNS could answer differently).
        headers["host"] = url.netloc.decode("ascii")
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        code: int | None = None
        retry_after_header: str | None = None
        error = "no address"
        for address in target.addresses:  # e.g. localhost: ::1 refused, then 127.0.0.1
            try:
                # Streamed and never read: a receiver's answer body is not ours to hold in memory.
                with self.http.stream("POST", url.copy_with(host=address), content=request.body.encode(),
                                      headers=headers, extensions=extensions,
                                      timeout=self.settings.webhook_timeout_seconds) as response:
                    code = response.status_code
                    retry_after_header = response.headers.get("retry-after")
                break
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if not isinstance(exc, httpx.ConnectError):
                    break
        if code is None:
            return Outcome.retry, None, error, None
        if 200 <= code < 300:
            return Outcome.delivered, code, None, None
        if code == 410:
            return Outcome.gone, code, "410 Gone: deliveries to this URL are disabled for this API key", None
        if code == 429 or code >= 500:
            retry_after = parse_retry_after(retry_after_header, time.time())
            return Outcome.retry, code, f"HTTP {code}", retry_after
        return Outcome.rejected, code, f"HTTP {code}: not retried", None
