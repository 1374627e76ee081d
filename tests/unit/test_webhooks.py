"""Webhook URL rules (SSRF) and signatures, without a network."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time

import pytest

from app.webhooks import urls
from app.webhooks.signing import sign, verify
from app.webhooks.urls import UnsafeWebhookUrl, check_webhook_url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://93.184.216.34/hook", "https"),
        ("ftp://93.184.216.34/hook", "https"),
        ("https://169.254.169.254/latest/meta-data/", "not a public address"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://localhost:8443/hook", "not a public address"),
        ("https://10.1.2.3/hook", "not a public address"),
        ("https://192.168.0.10/hook", "not a public address"),
        ("https://100.64.0.1/hook", "not a public address"),  # carrier-grade NAT
        ("https://[::1]/hook", "not a public address"),
        ("https://[::ffff:127.0.0.1]/hook", "not a public address"),  # IPv4-mapped loopback
        ("https://[fd00::1]/hook", "not a public address"),
        ("https://0.0.0.0/hook", "not a public address"),
        ("https://224.0.0.1/hook", "not a public address"),
        ("https://user:pw@93.184.216.34/hook", "credentials"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
        ("/relative/hook", "absolute"),
    ],
)
def test_unsafe_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match=reason):
        check_webhook_url(url)


def test_public_https_urls_pass_and_allowed_hosts_skip_the_rules() -> None:
    assert check_webhook_url("https://93.184.216.34/hook?x=1") == "https://93.184.216.34/hook?x=1"
    assert check_webhook_url("https://[2606:4700::1111]/h")
    # An operator's internal receiver: http and a private address, by exact host name only.
    internal = "http://10.0.0.7:9000/hook"
    assert check_webhook_url(internal, allowed_hosts=["10.0.0.7"]) == internal
    with pytest.raises(UnsafeWebhookUrl):
        check_webhook_url("https://10.0.0.8/hook", allowed_hosts=["10.0.0.7"])


def test_signature_is_an_hmac_of_timestamp_and_body_and_rejects_replays() -> None:
    secret, body, now = "whsec_test", b'{"id":"1"}', int(time.time())
    signature = sign(secret, now, body)
    expected = hmac.new(secret.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"
    assert verify(secret, timestamp=str(now), signature=signature, body=body)
    # Another secret, a changed body, a moved timestamp, an old request: all refused.
    assert not verify("whsec_other", timestamp=str(now), signature=signature, body=body)
    assert not verify(secret, timestamp=str(now), signature=signature, body=body + b" ")
    assert not verify(secret, timestamp=str(now + 1), signature=signature, body=body)
    assert not verify(secret, timestamp=str(now), signature=signature, body=body, now=now + 301)
    assert not verify(secret, timestamp="soon", signature=signature, body=body)


def test_a_delivery_connects_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver is the boundary here (no DNS on this machine): answer for one name.
    answer = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
    monkeypatch.setattr(urls.socket, "getaddrinfo", lambda *args, **kwargs: answer)
    target = urls.pinned("https://hooks.example.com:8443/squash?x=1")
    assert target.url == "https://93.184.216.34:8443/squash?x=1"
    assert target.host_header == "hooks.example.com:8443"
    assert target.sni_hostname == "hooks.example.com"  # TLS still verifies the name
    # A name that now resolves to a private address is refused, not pinned.
    monkeypatch.setattr(
        urls.socket,
        "getaddrinfo",
        lambda *args, **kwargs: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.9", 443))],
    )
    with pytest.raises(UnsafeWebhookUrl, match=r"10\.0\.0\.9"):
        urls.pinned("https://hooks.example.com/squash")
    # Literal addresses and operator-allowed hosts are used as given.
    assert urls.pinned("https://93.184.216.34/h").url == "https://93.184.216.34/h"
    assert urls.pinned("http://10.0.0.7/h", allowed_hosts=["10.0.0.7"]).host_header is None
