"""Completion webhooks against real parts: JetStream (the dispatcher's durable consumer,
nak-with-delay retries), a real HTTP(S) receiver on loopback, the vLLM worker and the edge.

The dispatcher tests run a `WebhookDispatcher` in this process with the admin's NATS user and a
consumer of their own (the edge's user may only create the edge's `webhooks` consumer, which the
edge process itself exercises in the last tests)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import io
import ipaddress
import itertools
import os
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client
from openai import AsyncOpenAI
from pydantic import SecretStr

from llmchat_chat.webhooks import (
    WebhookDispatcher,
    WebhookSettings,
    attempt_delivery,
    delivery_body,
    make_client,
    secret_for,
)
from llmchat_common import subjects
from llmchat_common.contracts import (
    ChatMessage,
    ChatRequested,
    Completed,
    GenerationParams,
    Timings,
    Usage,
)
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import ensure_streams
from llmchat_common.settings import NatsSettings
from llmchat_common.testing.accounts import create_account
from tests.conftest import MAIN_MODEL, Worker
from tests.helpers import connect_nats, read_request_events

MASTER = "test-master-secret-" + "x" * 24
HANG = -1  # a planned answer: hold the request for `Receiver.hang_s`, then 200


# -- a real receiver ---------------------------------------------------------------------------
@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int = 0


@dataclass
class Receiver:
    """An HTTP(S) server on 127.0.0.1 in a thread. `plan(webhook_id, n)` answers the n-th
    (1-based) request of a delivery: per webhook id, so deliveries of other tests' events that a
    fresh consumer replays never disturb this test's script."""

    plan: Callable[[str, int], int]
    tls: ssl.SSLContext | None = None
    hang_s: float = 0.0
    location: str | None = None
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                hit = Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with lock:
                    receiver.hits.append(hit)
                    n = sum(
                        1
                        for h in receiver.hits
                        if h.headers.get("webhook-id") == hit.headers.get("webhook-id")
                    )
                status = receiver.plan(hit.headers.get("webhook-id", ""), n)
                if status == HANG:
                    time.sleep(receiver.hang_s)
                    status = 200
                hit.status = status
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def of(self, webhook_id: str) -> list[Hit]:
        return [h for h in self.hits if h.headers.get("webhook-id") == webhook_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(plan: Callable[[str, int], int], **kw: Any) -> Receiver:
        receiver = Receiver(plan, **kw)
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.close()


def verify(secret: str, hit: Hit, tolerance_s: int = 300) -> bool:
    """docs/webhooks.md's verification, as a receiver writes it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, ts = hit.headers["webhook-id"], hit.headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > tolerance_s:
        return False
    signed = f"{msg_id}.{ts}.".encode() + hit.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, sig.split(",", 1)[1])
        for sig in hit.headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- the dispatcher in this process, on the real broker ----------------------------------------
def dispatcher_settings(**overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "secret": SecretStr(MASTER),
        "allow_http": True,
        "allow_private": True,
        "backoff_base_s": 0.3,
        "backoff_max_s": 2.0,
        "timeout_s": 3.0,
        "ack_wait_s": 10.0,
        "fetch_wait_s": 0.5,
        "consumer": f"webhooks-test-{uuid.uuid4().hex[:10]}",
        **overrides,
    }
    return WebhookSettings(**values)


@asynccontextmanager
async def dispatching(
    stack: LocalStack, settings: WebhookSettings
) -> AsyncIterator[tuple[WebhookDispatcher, Client]]:
    nc = await connect_nats(stack.env())
    js = nc.jetstream()
    await ensure_streams(js, NatsSettings())
    dispatcher = WebhookDispatcher(js, settings)
    await dispatcher.start()
    try:
        yield dispatcher, nc
    finally:
        await dispatcher.stop()
        # A test consumer left behind would replay the log for nothing.
        await js.delete_consumer(subjects.EVENTS_STREAM, settings.consumer)
        await nc.close()


def completed(request_id: str, webhook_url: str | None, user_id: str = "user-wh") -> Completed:
    now = time.time()
    return Completed(
        request_id=request_id,
        attempt=1,
        seq=3,
        worker_id="test",
        ts=now,
        user_id=user_id,
        model=MAIN_MODEL,
        created_at=now - 1,
        source="job",
        webhook_url=webhook_url,
        finish_reason="stop",
        text="the answer",
        usage=Usage(prompt_tokens=4, completion_tokens=2),
        timings=Timings(queue_ms=1, ttft_ms=10, e2e_ms=900),
    )


async def publish(nc: Client, event: Completed) -> None:
    await nc.jetstream().publish(
        subjects.event_subject(event.request_id, event.type),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": subjects.msg_id_for_event(event.request_id, event.attempt, event.seq)},
    )


def new_id() -> str:
    return f"job-{uuid.uuid4().hex[:16]}"


async def test_failed_first_attempt_then_exactly_one_signed_delivery(
    stack: LocalStack, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, n: 500 if n == 1 else 200)
    settings = dispatcher_settings()
    async with dispatching(stack, settings) as (dispatcher, nc):
        quiet, job = new_id(), new_id()
        await publish(nc, completed(quiet, None))
        event = completed(job, receiver.url())
        await publish(nc, event)
        await until(lambda: any(h.status == 200 for h in receiver.of(job)), 20, "the second attempt")
        await asyncio.sleep(2.0)  # several backoff periods: no further attempt may come
        hits = receiver.of(job)
        assert [h.status for h in hits] == [500, 200]
        assert not receiver.of(quiet)
        secret = secret_for("user-wh", settings)
        for hit in hits:
            assert hit.path == "/hook"
            assert hit.headers["content-type"] == "application/json"
            assert hit.headers["webhook-id"] == job
            assert verify(secret, hit)
            assert not verify(secret_for("someone-else", settings), hit)
        # Same content each time, signed afresh; the retry waited for the backoff.
        assert hits[0].body == hits[1].body == delivery_body(event)
        assert hits[1].at - hits[0].at >= settings.backoff_base_s * 0.8
        body = orjson.loads(hits[1].body)
        assert body["id"] == job and body["status"] == "completed"
        assert body["result"]["choices"][0]["message"]["content"] == "the answer"
        assert dispatcher.stats.delivered >= 1 and dispatcher.stats.skipped >= 1


async def test_gives_up_after_max_attempts_with_growing_delays(
    stack: LocalStack, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, _n: 503)
    settings = dispatcher_settings(max_attempts=3, backoff_base_s=0.4)
    async with dispatching(stack, settings) as (dispatcher, nc):
        job = new_id()
        await publish(nc, completed(job, receiver.url()))
        await until(lambda: len(receiver.of(job)) >= 3, 20, "three attempts")
        await asyncio.sleep(3.0)
        hits = receiver.of(job)
        assert len(hits) == 3
        gaps = [b.at - a.at for a, b in itertools.pairwise(hits)]
        assert gaps[0] >= 0.4 * 0.8 and gaps[1] >= 0.8 * 0.8 and gaps[1] > gaps[0]
        assert dispatcher.stats.given_up >= 1


async def test_a_hanging_receiver_delays_no_other_delivery(
    stack: LocalStack, receivers: Callable[..., Receiver]
) -> None:
    slow_id, fast_id = new_id(), new_id()
    receiver = receivers(lambda wid, _n: HANG if wid == slow_id else 200, hang_s=6.0)
    settings = dispatcher_settings(timeout_s=2.0, max_attempts=1)
    async with dispatching(stack, settings) as (dispatcher, nc):
        await publish(nc, completed(slow_id, receiver.url("/slow")))
        await until(lambda: bool(receiver.of(slow_id)), 20, "the slow delivery to start")
        sent = time.time()
        await publish(nc, completed(fast_id, receiver.url("/fast")))
        await until(lambda: any(h.status == 200 for h in receiver.of(fast_id)), 10, "the fast delivery")
        assert receiver.of(fast_id)[0].at - sent < 1.5
        assert receiver.of(slow_id)[0].status == 0  # still held by the receiver
        # The slow one times out and, with one attempt allowed, is given up.
        await until(lambda: dispatcher.stats.given_up >= 1, 10, "the slow delivery to time out")
        assert len(receiver.of(slow_id)) == 1


async def test_redirects_are_not_followed(stack: LocalStack, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(lambda _id, _n: 307)
    receiver.location = receiver.url("/elsewhere")
    settings = dispatcher_settings(max_attempts=2)
    async with dispatching(stack, settings) as (_, nc):
        job = new_id()
        await publish(nc, completed(job, receiver.url()))
        await until(lambda: len(receiver.of(job)) >= 2, 20, "two attempts")
        await asyncio.sleep(1.5)
        assert [h.path for h in receiver.of(job)] == ["/hook", "/hook"]


async def test_private_targets_are_refused_at_delivery(
    stack: LocalStack, receivers: Callable[..., Receiver]
) -> None:
    # An event naming a loopback receiver, read by a dispatcher that does not allow private
    # targets (as in production): refused for good, never contacted.
    receiver = receivers(lambda _id, _n: 200)
    settings = dispatcher_settings(allow_private=False)
    async with dispatching(stack, settings) as (dispatcher, nc):
        job = new_id()
        await publish(nc, completed(job, receiver.url()))
        await until(lambda: dispatcher.stats.given_up >= 1, 20, "the refusal")
        await asyncio.sleep(1.5)
        assert not receiver.of(job)


# -- HTTPS: the connection goes to the checked address, the certificate is checked by name ------
def _tls_pair(names: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA of our own and a server certificate for `names`: the server's context and a
    client context that trusts only that CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmchat test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            with open(path, "w") as f:
                f.write(text)
        server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def test_https_delivery_is_pinned_and_verified_by_name(receivers: Callable[..., Receiver]) -> None:
    settings = dispatcher_settings(allow_http=False)
    server_tls, client_tls = _tls_pair(["localhost"])
    good = receivers(lambda _id, _n: 200, tls=server_tls)
    async with make_client(settings, verify=client_tls) as client:
        job = new_id()
        # `localhost` is resolved by the dispatcher, the connection made to its address, and
        # the certificate still checked against the name (SNI and Host keep it).
        outcome = await attempt_delivery(client, completed(job, good.url(host="localhost")), settings)
        assert outcome.delivered, outcome
        (hit,) = good.of(job)
        assert hit.headers["host"] == f"localhost:{good.port}"
        assert verify(secret_for("user-wh", settings), hit)

    # A certificate for another name: refused (retried later), nothing sent.
    other_tls, other_client_tls = _tls_pair(["example.org"])
    impostor = receivers(lambda _id, _n: 200, tls=other_tls)
    async with make_client(settings, verify=other_client_tls) as client:
        job = new_id()
        outcome = await attempt_delivery(client, completed(job, impostor.url(host="localhost")), settings)
        assert not outcome.delivered and not outcome.permanent and outcome.error == "ConnectError"
        assert not impostor.of(job)


# -- the edge process: its dispatcher, its NATS user, the jobs API -------------------------------
WEBHOOK_ENV = {
    "LLMCHAT_CHAT_WEBHOOKS__SECRET": MASTER,
    "LLMCHAT_CHAT_WEBHOOKS__ALLOW_HTTP": "true",
    "LLMCHAT_CHAT_WEBHOOKS__ALLOW_PRIVATE": "true",
    "LLMCHAT_CHAT_WEBHOOKS__BACKOFF_BASE_S": "0.5",
    "LLMCHAT_CHAT_WEBHOOKS__BACKOFF_MAX_S": "2",
}
EDGE_SETTINGS = WebhookSettings(secret=SecretStr(MASTER))


@pytest.fixture(scope="module")
def webhook_edge(stack: LocalStack, worker: Worker, auth_service: ManagedProcess) -> Iterator[str]:
    proc, port = start_edge(stack, models=[MAIN_MODEL], extra_env=WEBHOOK_ENV, name="chat-webhooks")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


async def test_edge_delivers_a_job_once_after_a_failed_attempt(
    stack: LocalStack, webhook_edge: str, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(lambda _id, n: 500 if n == 1 else 200)
    job, user_id = new_id(), f"user-{uuid.uuid4().hex[:8]}"
    now = time.time()
    request = ChatRequested(
        request_id=job,
        model=MAIN_MODEL,
        messages=[ChatMessage(role="user", content="Say something about webhooks.")],
        params=GenerationParams(max_tokens=12, temperature=0),
        user_id=user_id,
        source="job",
        disconnect="detach",
        webhook_url=receiver.url(),
        created_at=now,
        deadline=now + 300,
    )
    nc = await connect_nats(stack.env())
    try:
        await nc.jetstream().publish(
            subjects.request_subject(MAIN_MODEL),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": job},
        )
    finally:
        await nc.close()
    await until(lambda: any(h.status == 200 for h in receiver.of(job)), 120, "the webhook delivery")
    await asyncio.sleep(3.0)
    hits = receiver.of(job)
    assert [h.status for h in hits] == [500, 200]
    delivered = hits[1]
    assert verify(secret_for(user_id, EDGE_SETTINGS), delivered)
    stored = [e for e in await read_request_events(stack.env(), job) if isinstance(e, Completed)]
    assert len(stored) == 1
    body = orjson.loads(delivered.body)
    assert body["id"] == job and body["status"] == "completed" and body["error"] is None
    assert body["result"]["choices"][0]["message"]["content"] == stored[0].text
    assert body["usage"]["completion_tokens"] == stored[0].usage.completion_tokens


async def test_jobs_api_checks_the_url_and_delivers_to_the_owner(
    webhook_edge: str, receivers: Callable[..., Receiver]
) -> None:
    account = create_account(webhook_edge)
    headers = {"Authorization": f"Bearer {account.api_key}"}
    receiver = receivers(lambda _id, _n: 200)
    job_body = {
        "model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    async with httpx.AsyncClient(base_url=webhook_edge, headers=headers, timeout=30) as http:
        bad = await http.post("/v1/jobs", json={**job_body, "webhook_url": "http://user:pw@127.0.0.1:9/x"})
        assert bad.status_code == 400, bad.text
        assert "credentials" in bad.text
        created = await http.post("/v1/jobs", json={**job_body, "webhook_url": receiver.url()})
        assert created.status_code == 202, created.text
        job = created.json()["id"]
        await until(lambda: any(h.status == 200 for h in receiver.of(job)), 120, "the webhook delivery")
        (hit,) = receiver.of(job)
        assert verify(secret_for(account.user_id, EDGE_SETTINGS), hit)
        fetched = (await http.get(f"/v1/jobs/{job}")).json()
        delivered = orjson.loads(hit.body)
        assert delivered["status"] == fetched["status"] == "completed"
        assert delivered["result"]["choices"][0]["message"] == fetched["result"]["choices"][0]["message"]


async def test_a_batch_that_ends_is_delivered_once_to_its_owner(
    webhook_edge: str, receivers: Callable[..., Receiver], history_service: ManagedProcess
) -> None:
    """A batch's webhook (llmchat's `webhook_url` extension of `POST /v1/batches`): the Batch
    object as it ended, signed for its owner, after a failed first attempt (the batch
    coordinator is the history service's)."""
    account = create_account(webhook_edge)
    receiver = receivers(lambda _id, n: 503 if n == 1 else 200)
    lines = [
        {
            "custom_id": f"w{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MAIN_MODEL,
                "messages": [{"role": "user", "content": f"hi {i}"}],
                "max_tokens": 4,
            },
        }
        for i in range(3)
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    async with AsyncOpenAI(base_url=f"{webhook_edge}/v1", api_key=account.api_key, max_retries=0) as client:
        upload = await client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
        with pytest.raises(openai.BadRequestError) as refused:
            await client.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_body={"webhook_url": "http://user:pw@127.0.0.1:9/x"},
            )
        assert refused.value.body["param"] == "webhook_url"  # type: ignore[index]
        batch = await client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"webhook_url": receiver.url()},
        )
        await until(lambda: any(h.status == 200 for h in receiver.of(batch.id)), 120, "the batch webhook")
        await asyncio.sleep(2.0)
        hits = receiver.of(batch.id)
        assert [h.status for h in hits] == [503, 200]
        assert verify(secret_for(account.user_id, EDGE_SETTINGS), hits[1])
        delivered = orjson.loads(hits[1].body)
        fetched = await client.batches.retrieve(batch.id)
        assert delivered["object"] == "batch" and delivered["status"] == fetched.status == "completed"
        assert delivered["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
        assert delivered["output_file_id"] == fetched.output_file_id
