"""Which network addresses an outbound webhook may reach.

A webhook URL is the tenant's to choose, so without a guard it could aim the hub at
itself, at a cloud metadata service or at anything on its private network. A host is
refused if any address it resolves to is not public; the caller then connects only to
the addresses that were checked (no second lookup an attacker could answer differently)
and follows no redirect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(OSError):
    """The host resolves to an address outbound webhooks may not reach."""


class UrlRefused(ValueError):
    """The URL is not one a webhook may be sent to (scheme, form, or where it resolves)."""


def refusal(address: str | IPAddress) -> str | None:
    """Why `address` may not be reached (None when it is a public unicast address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        # ::ffff:127.0.0.1 and friends reach the IPv4 address they embed.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return refusal(embedded)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata services live there)"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


def check_addresses(host: str, addresses: list[str]) -> None:
    """Raise `AddressRefused` if any of `host`'s addresses may not be reached."""
    for address in addresses:
        reason = refusal(address)
        if reason is not None:
            raise AddressRefused(f"{host} resolves to a {reason} address")


def ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_url(url: str) -> Target:
    """The scheme, host and port of a webhook URL; raises `UrlRefused` on anything else."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise UrlRefused("no spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise UrlRefused("the scheme must be https or http")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("credentials in the URL are not allowed; authenticate with the signature")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.fragment:
        raise UrlRefused("a fragment is never sent; remove it")
    return Target(scheme, host, port or (443 if scheme == "https" else 80))


async def resolve(host: str, port: int, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT_SECONDS) -> list[str]:
    """Every address `host` resolves to, each checked unless `allow_private`."""
    literal = ip_literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
        except (TimeoutError, OSError, UnicodeError):
            raise UrlRefused(f"{host} does not resolve") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UrlRefused(f"{host} does not resolve")
    if not allow_private:
        check_addresses(host, addresses)
    return addresses


async def vet_url(url: str, *, allow_private: bool) -> str:
    """Check a webhook URL before it is stored: its form, and where its host resolves now."""
    target = parse_url(url)
    try:
        await resolve(target.host, target.port, allow_private=allow_private)
    except AddressRefused as exc:
        raise UrlRefused(f"{exc}; set HUB_WEBHOOKS_ALLOW_PRIVATE=true to allow it (development only)") from None
    return url
