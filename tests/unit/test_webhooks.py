"""Pure logic of webhooks: the address guard, the retry schedule, signing, settings."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from textgen_core.settings import Settings
from textgen_core.webhook_events.emitter import make_delivery, wanted
from textgen_core.webhooks.delivery import next_delay, parse_retry_after
from textgen_core.webhooks.signing import new_secret, signed_headers
from textgen_core.webhooks.urls import UnsafeWebhookURL, choose, is_public, parse


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.8", "172.16.3.4", "192.168.1.1", "169.254.169.254",
                                     "100.100.100.200", "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254",
                                     "::ffff:127.0.0.1", "224.0.0.1", "100.64.0.1"])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(UnsafeWebhookURL, match="non-public"):
        choose("mixed.example", 443, "https://mixed.example/", ["8.8.8.8", "10.0.0.1"], allow_private=False)
    assert choose("mixed.example", 443, "https://mixed.example/", ["10.0.0.1"], allow_private=True).addresses == \
        ("10.0.0.1",)


def test_every_refusal_names_the_setting_that_lifts_it() -> None:
    for host, address in (("localhost", "127.0.0.1"), ("metadata.google.internal", "169.254.169.254")):
        with pytest.raises(UnsafeWebhookURL, match="TEXTGEN_WEBHOOK_ALLOW_PRIVATE=true"):
            choose(host, 80, f"http://{host}/", [address], allow_private=False)


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["::1", "127.0.0.1"], ["::ffff:127.0.0.1"]])
def test_loopback_receivers_pass_in_development_other_private_addresses_do_not(addresses: list[str]) -> None:
    assert choose("localhost", 9000, "http://localhost:9000/", addresses, allow_private=False,
                  allow_loopback=True).addresses == tuple(addresses)
    for private in ("10.0.0.1", "169.254.169.254", "192.168.1.2"):
        with pytest.raises(UnsafeWebhookURL, match="non-public"):
            choose("lan.example", 80, "http://lan.example/", [*addresses, private], allow_private=False,
                   allow_loopback=True)


def test_development_allows_loopback_receivers_test_and_production_do_not() -> None:
    assert Settings(_env_file=None, env="development").webhook_allow_loopback
    assert not Settings(_env_file=None, env="test").webhook_allow_loopback
    assert Settings(_env_file=None, env="test", webhook_allow_private=True).webhook_allow_loopback


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http://", "http://u:p@example.com/",
                                 "javascript:alert(1)", "http://example.com:99999/"])
def test_only_plain_http_urls_parse(url: str) -> None:
    with pytest.raises(UnsafeWebhookURL):
        parse(url)
    assert parse("HTTPS://Example.COM./x") == ("https", "example.com", 443)


def test_the_schedule_ends_and_retry_after_is_a_floor() -> None:
    schedule = [5.0, 60.0]
    assert 4.5 <= (next_delay(1, schedule) or 0) <= 6.0
    assert 54.0 <= (next_delay(2, schedule) or 0) <= 72.0
    assert next_delay(3, schedule) is None
    assert next_delay(1, schedule, retry_after=120) == 120
    assert sum(Settings(_env_file=None).webhook_retry_schedule) / 3600 == pytest.approx(24, abs=1)


def test_retry_after_parses_seconds_and_dates() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after("Tue, 01 Jan 2030 00:00:30 GMT", now) == 30
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("999999999", now) == 24 * 3600


def test_signed_headers_verify_with_standardwebhooks_and_a_changed_body_does_not() -> None:
    secret = new_secret()
    request = make_delivery(owner="o", url="https://example.com/", event="job.completed", object_id="job_1",
                            payload={"id": "job_1", "status": "succeeded"})
    headers = signed_headers(secret, request.webhook_id, request.body)
    assert Webhook(secret).verify(request.body, headers) == {"type": "job.completed", "id": "job_1",
                                                              "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(request.body.replace("succeeded", "failed"), headers)


def test_filters() -> None:
    assert wanted("job.completed", ["completed"]) and not wanted("job.started", ["completed"])
    assert wanted("job.started", ["start"]) and wanted("batch.progress", None)


def test_configured_secrets_must_be_whsec() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, webhook_secrets={"k": "not-a-secret"})
    assert Settings(_env_file=None, webhook_secrets={"k": new_secret()}).webhook_secrets
