import hashlib

import pytest
from pydantic import ValidationError

from textgen_core.settings import DEV_API_KEY, Settings


def test_api_keys_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGEN_API_KEYS", "k1, k2,,k3")
    assert Settings(_env_file=None).api_keys == ["k1", "k2", "k3"]


def test_hashed_keys_map_to_the_same_owner_as_plain_keys() -> None:
    digest = hashlib.sha256(b"secret").hexdigest()
    plain = Settings(_env_file=None, api_keys=["secret"]).owner_ids()
    hashed = Settings(_env_file=None, api_keys=[f"sha256:{digest}"]).owner_ids()
    assert plain == hashed == {digest: digest[:16]}


def test_production_refuses_the_development_key() -> None:
    with pytest.raises(ValidationError, match="development API key"):
        Settings(_env_file=None, env="production", api_keys=[DEV_API_KEY])
    Settings(_env_file=None, env="production", api_keys=["a-real-key"])


def test_default_model_must_be_configured() -> None:
    with pytest.raises(ValidationError, match="default_model"):
        Settings(_env_file=None, default_model="nope")


def test_models_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTGEN_MODELS", '[{"id": "a", "source": "hub", "location": "org/a", "max_batch": 4}]')
    monkeypatch.setenv("TEXTGEN_DEFAULT_MODEL", "a")
    s = Settings(_env_file=None)
    assert s.model("a") is not None and s.model("a").max_batch == 4  # type: ignore[union-attr]


def test_a_lease_must_outlast_two_heartbeats() -> None:
    # Shorter, and a live worker's jobs would be handed back while it still runs them.
    with pytest.raises(ValidationError, match="lease_seconds"):
        Settings(_env_file=None, heartbeat_seconds=5, lease_seconds=9)
    Settings(_env_file=None, heartbeat_seconds=5, lease_seconds=10)
