"""Per-key rate limits and the queued-jobs cap, on an API started with tight limits."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import IDLE_MODEL, KEY_A, Stack, wait_job

pytestmark = pytest.mark.integration

# One key per test, so the tests do not spend each other's budgets.
KEY_RPM, KEY_TPM, KEY_CAP, KEY_FINISH = "key-rpm", "key-tpm", "key-cap", "key-finish"
KEY_BATCH_TPM, KEY_BATCH_CAP = "key-batch-tpm", "key-batch-cap"
KEY_TPM_RACE, KEY_TPM_REFUND = "key-tpm-race", "key-tpm-refund"
RPM, TPM, CAP = 20, 100, 2


@pytest.fixture(scope="module")
def limited(stack: Stack, start_api: Callable[..., str]) -> str:
    return start_api(
        "api-limited", loglevel="debug",
        TEXTGEN_API_KEYS=",".join([KEY_A, KEY_RPM, KEY_TPM, KEY_CAP, KEY_FINISH, KEY_BATCH_TPM, KEY_BATCH_CAP,
                                   KEY_TPM_RACE, KEY_TPM_REFUND]),
        TEXTGEN_RATE_LIMIT_REQUESTS_PER_MINUTE=str(RPM),
        TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE=str(TPM),
        TEXTGEN_MAX_QUEUED_JOBS_PER_KEY=str(CAP),
        # Batches have limits of their own: the same figures, per day and in batch items.
        TEXTGEN_BATCH_TOKENS_PER_DAY=str(TPM),
        TEXTGEN_MAX_QUEUED_BATCH_ITEMS_PER_KEY=str(CAP),
        TEXTGEN_CORS_ORIGINS="https://app.example",
    )


def client_for(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture
def rpm_client(limited: str) -> Iterator[httpx.Client]:
    with client_for(limited, KEY_RPM) as c:
        yield c


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_requests_per_minute_then_429_with_retry_after(rpm_client: httpx.Client) -> None:
    statuses = []
    for i in range(RPM):
        resp = rpm_client.get("/v1/conversations/none")
        statuses.append(resp.status_code)
        assert resp.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert resp.headers["x-ratelimit-remaining-requests"] == str(RPM - i - 1)
    assert statuses == [404] * RPM
    refused = rpm_client.get("/v1/conversations/none")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert 'textgen_api_rate_limited_total{limit="requests"}' in httpx.get(f"{rpm_client.base_url}/metrics").text
    # Another key is not affected; neither are the probes without a key.
    with client_for(str(rpm_client.base_url), KEY_TPM) as other:
        assert other.get("/v1/conversations/none").status_code == 404
    assert httpx.get(f"{rpm_client.base_url}/health").status_code == 200


def test_tokens_per_minute_count_max_tokens(limited: str) -> None:
    with client_for(limited, KEY_TPM) as c:
        first = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 60})
        assert first.status_code == 202, first.text
        assert first.headers["x-ratelimit-limit-tokens"] == str(TPM)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(TPM - 60)
        refused = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 60})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "tokens per minute" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        # What still fits is accepted.
        fits = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 40})
        assert fits.status_code == 202, fits.text
        # More than the whole budget can never succeed: a 422 naming max_tokens, not a retry.
        never = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": TPM + 1})
        assert never.status_code == 422 and never.json()["error"]["param"] == "max_tokens"
        for job in (first.json(), fits.json()):
            c.post(f"/v1/jobs/{job['id']}/cancel")


def test_tokens_per_minute_hold_for_requests_sent_at_once(limited: str) -> None:
    """Regression: the budget was checked, then counted after the job was stored, so requests sent
    together all passed on the same remainder. Eight at once with room for one: one is accepted."""
    body = {"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 60}

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=limited, headers={"Authorization": f"Bearer {KEY_TPM_RACE}"},
                                     timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/jobs", json=body) for _ in range(8)))

    responses = asyncio.run(send_all())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [429] * 7, [r.text for r in responses]
    with client_for(limited, KEY_TPM_RACE) as c:
        for r in responses:
            if r.status_code == 202:
                c.post(f"/v1/jobs/{r.json()['id']}/cancel")


def test_a_job_refused_by_the_queued_jobs_cap_gives_its_tokens_back(limited: str) -> None:
    """A request refused after its tokens were taken (here by the queued-jobs cap) costs nothing:
    what it took is given back, so the budget still has room for the jobs that were accepted."""
    body = {"prompt": "waits", "model": IDLE_MODEL, "max_tokens": 30}
    with client_for(limited, KEY_TPM_REFUND) as c:
        jobs = [c.post("/v1/jobs", json=body) for _ in range(CAP)]
        assert [j.status_code for j in jobs] == [202] * CAP
        assert jobs[-1].headers["x-ratelimit-remaining-tokens"] == str(TPM - 30 * CAP)
        for _ in range(3):
            full = c.post("/v1/jobs", json=body)
            assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_queued_jobs"
        c.post(f"/v1/jobs/{jobs[0].json()['id']}/cancel")
        again = c.post("/v1/jobs", json=body)
        assert again.status_code == 202, again.text
        assert again.headers["x-ratelimit-remaining-tokens"] == str(TPM - 30 * (CAP + 1))
        for job in (jobs[1].json(), again.json()):
            c.post(f"/v1/jobs/{job['id']}/cancel")


def test_queued_jobs_cap_is_backpressure_and_cancel_frees_a_slot(limited: str, stack: Stack) -> None:
    body = {"prompt": "waits", "model": IDLE_MODEL, "max_tokens": 1}
    with client_for(limited, KEY_CAP) as c:
        jobs = [c.post("/v1/jobs", json=body) for _ in range(CAP)]
        assert [j.status_code for j in jobs] == [202] * CAP
        full = c.post("/v1/jobs", json=body)
        assert full.status_code == 429, full.text
        assert full.json()["error"]["code"] == "too_many_queued_jobs"
        assert full.headers["Retry-After"]
        assert stack.redis().get(stack.keys.pending(owner_of(KEY_CAP))) == str(CAP)
        assert c.post(f"/v1/jobs/{jobs[0].json()['id']}/cancel").json()["status"] == "canceled"
        again = c.post("/v1/jobs", json=body)
        assert again.status_code == 202, again.text
        for job in (jobs[1].json(), again.json()):
            c.post(f"/v1/jobs/{job['id']}/cancel")
    assert stack.redis().get(stack.keys.pending(owner_of(KEY_CAP))) is None


def test_jobs_finishing_on_the_worker_free_their_slots(limited: str, stack: Stack) -> None:
    body = {"prompt": "Say yes.", "max_tokens": 2, "temperature": 0}
    with client_for(limited, KEY_FINISH) as c:
        for _ in range(2):  # two rounds: the second is accepted only if the first released exactly
            ids = []
            for _ in range(CAP):
                resp = c.post("/v1/jobs", json=body)
                assert resp.status_code == 202, resp.text
                ids.append(resp.json()["id"])
            assert all(wait_job(c, job_id)["status"] == "succeeded" for job_id in ids)
            assert stack.redis().get(stack.keys.pending(owner_of(KEY_FINISH))) is None


def idle_batch(client: httpx.Client, items: int, max_tokens: int) -> httpx.Response:
    return client.post("/v1/batches", json={"model": IDLE_MODEL, "max_tokens": max_tokens,
                                            "items": [{"custom_id": f"i{i}", "prompt": "waits"} for i in range(items)]})


def test_batches_count_their_items_max_tokens_against_the_batch_token_budget(limited: str) -> None:
    """Regression: a batch's tokens were never counted, whatever its size. They count against the
    key's batch budget, never its interactive one."""
    with client_for(limited, KEY_BATCH_TPM) as c:
        never = idle_batch(c, 2, 60)  # 120 tokens: more than the whole budget of 100
        assert never.status_code == 413, never.text
        error = never.json()["error"]
        assert error["code"] == "batch_over_token_budget" and f"{TPM:,} batch tokens per day" in error["message"]
        batch = idle_batch(c, 1, 60)  # 60 tokens fit
        assert batch.status_code == 202, batch.text
        more = idle_batch(c, 1, 60)  # 60 more do not
        assert more.status_code == 429 and more.json()["error"]["code"] == "rate_limit_exceeded", more.text
        assert "batch tokens per day" in more.json()["error"]["message"] and more.headers["Retry-After"]
        assert c.post(f"/v1/batches/{batch.json()['id']}/cancel").status_code == 200
        again = idle_batch(c, 1, 60)  # canceling gives no tokens back: the budget is per day
        assert again.status_code == 429 and again.json()["error"]["code"] == "rate_limit_exceeded", again.text
        job = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 60})
        assert job.status_code == 202, job.text  # the interactive budget is untouched by batches
        c.post(f"/v1/jobs/{job.json()['id']}/cancel")


def test_batch_items_count_against_the_batch_items_cap(limited: str, stack: Stack) -> None:
    """Regression: batches were accepted with any number of items unfinished. Items have a cap of
    their own, so a bulk backlog never refuses the key's interactive jobs."""
    owner = owner_of(KEY_BATCH_CAP)
    with client_for(limited, KEY_BATCH_CAP) as c:
        never = idle_batch(c, CAP + 1, 1)
        assert never.status_code == 413, never.text
        assert never.json()["error"]["code"] == "batch_over_queued_items_cap"
        assert f"cap of {CAP:,}" in never.json()["error"]["message"]
        batch = idle_batch(c, CAP, 1)
        assert batch.status_code == 202, batch.text
        assert stack.redis().get(stack.keys.pending_batch_items(owner)) == str(CAP)
        more = idle_batch(c, 1, 1)
        assert more.status_code == 429, more.text
        assert more.json()["error"]["code"] == "too_many_queued_batch_items" and more.headers["Retry-After"]
        assert more.headers["x-ratelimit-limit-batch-items"] == str(CAP)
        job = c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 1})
        assert job.status_code == 202, job.text  # interactive jobs keep their own places
        c.post(f"/v1/jobs/{job.json()['id']}/cancel")
        # Its items end (canceled here): their places come back.
        assert c.post(f"/v1/batches/{batch.json()['id']}/cancel").status_code == 200
        assert stack.redis().get(stack.keys.pending_batch_items(owner)) is None
        assert idle_batch(c, CAP, 1).status_code == 202
    assert stack.redis().get(stack.keys.pending(owner)) is None


def test_cors_only_for_configured_origins(limited: str, stack: Stack) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = httpx.options(f"{limited}/v1/jobs", headers={"Origin": "https://app.example", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(f"{limited}/v1/jobs", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    # The default API has no origins configured: browsers get no CORS grant at all.
    default = httpx.options(f"{stack.url}/v1/jobs", headers={"Origin": "https://app.example", **preflight})
    assert "access-control-allow-origin" not in default.headers


def test_api_keys_never_reach_the_logs(limited: str, stack: Stack) -> None:
    with client_for(limited, KEY_A) as c:
        c.post("/v1/jobs", json={"prompt": "hi", "model": IDLE_MODEL, "max_tokens": 1, "bad": 1})
        c.get("/v1/jobs/job_missing")
    httpx.get(f"{limited}/v1/jobs/job_x", headers={"Authorization": "Bearer not-a-real-key-123"})
    time.sleep(0.5)
    logs = "".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log"))
    assert "api-limited" in "".join(p.name for p in stack.logs.glob("*.log"))
    for secret in (KEY_A, KEY_RPM, KEY_TPM, KEY_CAP, KEY_FINISH, KEY_BATCH_TPM, KEY_BATCH_CAP, "not-a-real-key-123"):
        assert secret not in logs
