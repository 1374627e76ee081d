"""Which webhook URLs Squash will call: the SSRF rules.

https only, no credentials in the URL, and every address the host resolves to must be public
(no loopback, private, link-local — the cloud metadata service at 169.254.169.254 —, CGNAT,
multicast or reserved ranges). An operator may exempt hosts (WEBHOOK_ALLOWED_HOSTS) for
internal receivers. Checked at submission and again before every delivery, since DNS answers
change; redirects are never followed (a 3xx is a failed attempt). A delivery connects to the
address it checked (`pinned`), so DNS re-binding between the check and the connection cannot
redirect it; TLS still verifies the certificate against the host name (SNI).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class UnsafeWebhookUrl(ValueError):
    pass


class RefusedDestination(UnsafeWebhookUrl):
    """A well-formed URL whose host does not resolve or is not a public address."""


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedDestination(f"host {host!r} does not resolve ({error})") from None
    # sockaddr[0] is the address text (an IPv6 one may end in %scope).
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Target:
    """Where to connect for a checked URL: `url` with the host replaced by the checked
    address, the original `host_header` and the `sni_hostname` to verify TLS against."""

    url: str
    host_header: str | None = None
    sni_hostname: str | None = None


def pinned(url: str, *, allowed_hosts: Iterable[str] = ()) -> Target:
    """Check `url` and pin it to the first address that passed the check (one DNS lookup)."""
    address = _checked_address(url, allowed_hosts)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if address is None or str(address) == host.strip("[]"):
        return Target(url)  # an operator-allowed host, or already an address
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{host}:{parts.port}" if parts.port else host
    return Target(urlunsplit(parts._replace(netloc=netloc)), host_header, host)


def check_webhook_url(url: str, *, allowed_hosts: Iterable[str] = ()) -> str:
    """Returns the URL if Squash may POST to it; raises UnsafeWebhookUrl saying why not."""
    _checked_address(url, allowed_hosts)
    return url


def _checked_address(
    url: str, allowed_hosts: Iterable[str]
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The first address of the URL's host once every one passed; None for an allowed host."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeWebhookUrl("must be an absolute https:// URL")
    if parts.username or parts.password:
        raise UnsafeWebhookUrl("must not carry credentials; deliveries are signed instead")
    host = parts.hostname.lower()
    if host in {h.lower() for h in allowed_hosts}:
        return None
    if parts.scheme != "https":
        raise UnsafeWebhookUrl("must use https")
    try:
        port = parts.port or 443
    except ValueError:
        raise UnsafeWebhookUrl("has an invalid port") from None
    addresses = _addresses(host, port)
    for address in addresses:
        if not _public(address):
            raise RefusedDestination(f"{host} resolves to {address}, which is not a public address")
    return addresses[0]
