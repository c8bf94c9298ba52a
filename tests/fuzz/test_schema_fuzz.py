"""Property-based fuzzing of every endpoint against the published OpenAPI schema (schemathesis).

Valid and invalid requests, with a real API key, must never get a 5xx and every response
must match its documented status codes, content types, headers and schemas. The API under
fuzz runs on its own key prefix with no worker behind it, so the jobs it accepts wait in a
queue instead of loading the model; the readiness probe therefore answers its documented 503
(no worker), which is that endpoint's meaning, so it runs every check but that one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import KEY_A, Stack

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

# Bounded so the run fits CI on a small machine; raise locally for a deeper search.
EXAMPLES = 50
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack, start_api: Callable[..., str]) -> str:
    return start_api("api-fuzz", TEXTGEN_KEY_PREFIX=f"fuzz{uuid.uuid4().hex[:8]}",
                     TEXTGEN_RATE_LIMIT_REQUESTS_PER_MINUTE="0", TEXTGEN_RATE_LIMIT_TOKENS_PER_MINUTE="0",
                     TEXTGEN_MAX_WAIT_SECONDS="1",
                     TEXTGEN_PRIORITY_CEILINGS=json.dumps({KEY_A: 0}))  # every valid priority is accepted


def schemathesis(url: str, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "-H", f"Authorization: Bearer {KEY_A}", "--max-examples", str(EXAMPLES), "--seed", "1",
        "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
        "--generation-database", "none", "--no-color", "--report", "junit", "--report-junit-path", str(report),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def report(run: subprocess.CompletedProcess[str]) -> str:
    """The failures section and the summary, with generated bodies cut to a readable length."""
    out = run.stdout
    start = out.find("= FAILURES =")
    section = out[start:] if start >= 0 else out[-6000:]
    return "\n".join(line[:400] for line in section.splitlines()) + run.stderr[-2000:]


# What a schema cannot say: what a valid CSV/JSONL upload holds, or that a webhook's host must
# resolve. A "schema-valid" body may still get a 400/422 naming what is wrong; every other check applies.
UPLOADS = "^/v1/(batches|files|jobs)$"
# Completions wait on a worker (the fuzzing API has none) and, like OpenAI's, ignore unknown
# fields: they are covered by the OpenAI SDK tests, not fuzzed here. So does creating a response
# (its input items are checked one by one, beyond what the schema says); reading, cancelling and
# deleting responses are fuzzed.
COMPLETIONS = "^/v1/(chat/)?completions$|^/v1/responses$"


def test_every_endpoint_matches_its_schema_and_never_5xx(fuzz_api: str, tmp_path: Path) -> None:
    run = schemathesis(fuzz_api, tmp_path / "fuzz.xml", "--checks", "all", "--exclude-path", "/ready",
                       "--exclude-path-regex", f"{UPLOADS}|{COMPLETIONS}")
    print(run.stdout[-3000:])
    assert run.returncode == 0, report(run)


def test_uploads_and_submissions_match_their_schema_and_never_5xx(fuzz_api: str, tmp_path: Path) -> None:
    run = schemathesis(fuzz_api, tmp_path / "uploads.xml", "--checks", "all",
                       "--exclude-checks", "positive_data_acceptance", "--include-path-regex", UPLOADS)
    assert run.returncode == 0, report(run)


def test_readiness_probe_matches_its_schema(fuzz_api: str, tmp_path: Path) -> None:
    run = schemathesis(fuzz_api, tmp_path / "ready.xml", "--checks", "all", "--exclude-checks", "not_a_server_error",
                       "--include-path", "/ready")
    assert run.returncode == 0, report(run)
