"""Webhook signing, URL and address rules, backoff: the pure parts of llmchat_chat.webhooks.
Deliveries over real NATS and HTTP(S) are in tests/e2e/test_webhooks.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import time

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from llmchat_chat.webhooks import (
    TargetRefused,
    WebhookSettings,
    address_allowed,
    backoff_delay,
    cancel_until_done,
    check_webhook_url,
    delivery_body,
    resolve_target,
    secret_for,
    sign,
    signed_headers,
)
from llmchat_common.contracts import Completed, Failed, Timings, Usage

MASTER = "m" * 40
PUBLIC = WebhookSettings(secret=SecretStr(MASTER))
TEST_MODE = WebhookSettings(secret=SecretStr(MASTER), allow_http=True, allow_private=True)


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check exactly as docs/webhooks.md shows it (kept independent of the
    sender's code on purpose)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    signed = f"{msg_id}.{ts}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1])
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def test_signature_matches_the_standard_webhooks_vector() -> None:
    # The example of the Standard Webhooks / Svix documentation.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signed_headers_verify_and_tampering_fails() -> None:
    secret = secret_for("user-1", PUBLIC)
    body = b'{"id":"job-1","status":"completed"}'
    headers = signed_headers(secret, "job-1", int(time.time()), body)
    assert headers["content-type"] == "application/json"
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(secret_for("user-2", PUBLIC), headers, body)
    assert not verify(secret, {**headers, "webhook-id": "job-2"}, body)
    assert not verify(
        secret, {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}, body
    )
    stale = signed_headers(secret, "job-1", int(time.time()) - 3600, body)
    assert not verify(secret, stale, body)


def test_user_secrets_are_derived_per_user_and_master() -> None:
    one = secret_for("user-1", PUBLIC)
    assert one == secret_for("user-1", WebhookSettings(secret=SecretStr(MASTER)))
    assert one.startswith("whsec_") and len(base64.b64decode(one.removeprefix("whsec_"))) == 32
    assert one != secret_for("user-2", PUBLIC)
    assert one != secret_for("user-1", WebhookSettings(secret=SecretStr("n" * 40)))
    assert MASTER not in one
    with pytest.raises(RuntimeError):
        secret_for("user-1", WebhookSettings())


def test_backoff_schedule_doubles_up_to_the_cap() -> None:
    s = WebhookSettings(secret=SecretStr(MASTER), backoff_base_s=5, backoff_max_s=60)
    assert [backoff_delay(n, s) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff_delay(10_000, s) == 60


def test_settings_refuse_inconsistent_values() -> None:
    with pytest.raises(ValidationError):
        WebhookSettings(secret=SecretStr("short"))
    with pytest.raises(ValidationError):
        WebhookSettings(timeout_s=30, ack_wait_s=20)
    with pytest.raises(ValidationError):
        WebhookSettings(backoff_base_s=10, backoff_max_s=5)
    with pytest.raises(ValidationError):
        WebhookSettings(consumer="a.b")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "https://hooks.example.com:8443/a/b?token=x&y=1",
        "https://EXAMPLE.com/",
        "https://8.8.8.8/hook",
        "https://[2001:4860:4860::8888]/hook",
        "https://my_host.example.com/",
    ],
)
def test_good_urls(url: str) -> None:
    assert check_webhook_url(url, PUBLIC) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/hook", "https"),
        ("ftp://example.com/", "https"),
        ("example.com/hook", "https"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://token@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https:///path", "host"),
        ("https://example.com:0/", "port"),
        ("https://example.com:99999/", "port"),
        ("https://exa mple.com/", "RFC 3986"),
        ("https://example.com\\@evil.com/", "RFC 3986"),
        ("https://bücher.example/", "RFC 3986"),
        ("https://localhost/hook", "public"),
        ("https://api.localhost/hook", "public"),
        ("https://printer.local/", "public"),
        ("https://metadata.google.internal/", "public"),
        ("https://intranet/", "public"),
        ("https://127.0.0.1/", "public"),
        ("https://10.1.2.3/", "public"),
        ("https://192.168.1.1/", "public"),
        ("https://169.254.169.254/latest/meta-data", "public"),
        ("https://100.64.0.1/", "public"),
        ("https://[::1]/", "public"),
        ("https://[::ffff:127.0.0.1]/", "public"),
        ("https://[fe80::1]/", "public"),
        ("https://[fd00::1]/", "public"),
        ("https://0.0.0.0/", "public"),
        ("https://2130706433/", "host name"),
        ("https://0x7f.1/", "host name"),
        ("https://127.1/", "host name"),
        ("https://0177.0.0.1/", "host name"),
        ("https://a..b.com/", "host name"),
        ("https://-bad.example.com/", "host name"),
        ("https://example.com/" + "a" * 2100, "longer"),
    ],
)
def test_bad_urls(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_webhook_url(url, PUBLIC)


def test_test_mode_allows_http_and_loopback_but_not_everything() -> None:
    for url in ("http://127.0.0.1:8080/hook", "http://localhost:9/x", "https://[::1]:1234/"):
        assert check_webhook_url(url, TEST_MODE) == url
    refused = {
        "http://0.0.0.0:80/": "public",
        "http://224.0.0.1/": "public",
        "http://u:p@127.0.0.1/": "credentials",
        "file:///etc/passwd": "https",
    }
    for url, why in refused.items():
        with pytest.raises(ValueError, match=why):
            check_webhook_url(url, TEST_MODE)
    with pytest.raises(ValueError, match="not enabled"):
        check_webhook_url("https://example.com/", WebhookSettings())


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("192.0.2.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd12:3456::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 around 127.0.0.1
        ("2002:808:808::", True),  # 6to4 around 8.8.8.8
        ("0.0.0.0", False),
        ("::", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
    ],
)
def test_address_rules(address: str, public: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert address_allowed(ip, PUBLIC) is public
    # Test mode opens private targets, never the unspecified address or multicast.
    assert address_allowed(ip, TEST_MODE) is (not ip.is_unspecified and not ip.is_multicast)


async def test_resolution_pins_allowed_addresses_only() -> None:
    # `localhost` resolves without any network: the resolved address is judged, not the name.
    with pytest.raises(TargetRefused):
        await resolve_target("https://localhost:8443/hook", PUBLIC)
    with pytest.raises(TargetRefused):
        await resolve_target("https://127.0.0.1/hook", PUBLIC)
    target = await resolve_target("https://localhost:8443/hook?x=1", TEST_MODE)
    assert target.host_header == "localhost:8443"
    assert target.sni_hostname == "localhost"
    assert target.urls and all(ipaddress.ip_address(u.host).is_loopback for u in target.urls)
    assert all(u.port == 8443 and u.path == "/hook" and u.query == b"x=1" for u in target.urls)
    plain = await resolve_target("http://127.0.0.1:9/x", TEST_MODE)
    assert plain.sni_hostname is None and str(plain.urls[0]) == "http://127.0.0.1:9/x"


def _terminal(**kw: object) -> dict[str, object]:
    return {
        "request_id": "job-abc",
        "attempt": 2,
        "seq": 7,
        "worker_id": "w1",
        "ts": 1_700_000_010.0,
        "user_id": "user-1",
        "model": "tiny-random",
        "created_at": 1_700_000_000.0,
        "source": "job",
        "webhook_url": "https://example.com/hook",
        **kw,
    }


def test_body_is_the_job_object_from_the_terminal_event() -> None:
    done = Completed(
        **_terminal(),  # type: ignore[arg-type]
        finish_reason="stop",
        text="hello there",
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        timings=Timings(queue_ms=5, ttft_ms=20, e2e_ms=100),
    )
    body = orjson.loads(delivery_body(done))
    assert body["id"] == "job-abc" and body["object"] == "job" and body["status"] == "completed"
    assert body["attempts"] == 2 and body["finished_at"] == 1_700_000_010.0
    assert body["result"]["choices"][0]["message"]["content"] == "hello there"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    failed = Failed(**_terminal(), code="engine_error", message="boom", text="hel")  # type: ignore[arg-type]
    body = orjson.loads(delivery_body(failed))
    assert body["status"] == "failed" and body["error"]["code"] == "engine_error"
    assert body["partial_text"] == "hel" and body["result"] is None


async def test_stop_ends_a_loop_that_swallowed_a_cancellation() -> None:
    # As Python 3.11's wait_for can (inside nats-py's fetch): the first cancel is lost, the
    # loop runs on; a single cancel and wait would hang for ever.
    cancels = 0

    async def loop() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(cancel_until_done(task, every_s=0.1), timeout=5)
    assert task.done() and cancels == 2
