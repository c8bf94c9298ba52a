"""The SSRF guard: webhook URLs must be http(s) and resolve only to public addresses.

Checked when a job is submitted and again before every attempt, because DNS can change in
between; the attempt then connects to the very address that was checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints that are not already link-local or private.
METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
})
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data"})


class UnsafeWebhookURL(ValueError):
    """The URL is not one textgen will send to (scheme, host or the addresses it resolves to)."""


class HostNotFound(UnsafeWebhookURL):
    """The host does not resolve (perhaps only for now: a delivery retries this one)."""


@dataclass(frozen=True)
class Target:
    """A checked URL and the addresses to connect to, in resolver order."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of an http(s) URL; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhookURL("only http and https URLs are allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeWebhookURL("the URL has an invalid port") from exc
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeWebhookURL("the URL has no host")
    if parts.username or parts.password:
        raise UnsafeWebhookURL("credentials in the URL are not allowed")
    return parts.scheme, host, port


def _unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` is 10.0.0.1 to the network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    """False for private, loopback, link-local, multicast, reserved and metadata addresses."""
    address = _unmapped(address)
    return address.is_global and not address.is_multicast and address not in METADATA_ADDRESSES


# Named in every refusal, so whoever runs a receiver on a private network knows the way out.
ALLOW_HINT = "set TEXTGEN_WEBHOOK_ALLOW_PRIVATE=true to allow private receivers"


def choose(host: str, port: int, url: str, addresses: list[str], allow_private: bool,
           allow_loopback: bool = False) -> Target:
    """The first usable address, or an error naming why none is.

    ``allow_loopback``: receivers on this machine only (development), other private addresses still refused."""
    if not addresses:
        raise HostNotFound(f"host {host!r} does not resolve")
    if not allow_private:
        if host in METADATA_HOSTS:
            raise UnsafeWebhookURL(f"cloud metadata hosts are not allowed; {ALLOW_HINT}")
        for raw in addresses:
            address = ipaddress.ip_address(raw.split("%", 1)[0])
            if allow_loopback and _unmapped(address).is_loopback:
                continue
            if not is_public(address):
                raise UnsafeWebhookURL(f"host {host!r} resolves to a non-public address ({raw}); {ALLOW_HINT}")
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))


def _addresses(infos: list[tuple[object, ...]]) -> list[str]:
    seen: list[str] = []
    for info in infos:
        raw = str(info[4][0])  # type: ignore[index]
        if raw not in seen:
            seen.append(raw)
    return seen


def resolve(url: str, allow_private: bool, allow_loopback: bool = False) -> Target:
    """Check ``url`` now (blocking DNS): used by the webhook worker before each attempt."""
    _, host, port = parse(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"host {host!r} does not resolve") from exc
    return choose(host, port, url, _addresses(infos), allow_private, allow_loopback)  # type: ignore[arg-type]


async def resolve_async(url: str, allow_private: bool, allow_loopback: bool = False) -> Target:
    """Check ``url`` without blocking the event loop: used by the API at submit."""
    _, host, port = parse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"host {host!r} does not resolve") from exc
    return choose(host, port, url, _addresses(infos), allow_private, allow_loopback)  # type: ignore[arg-type]
