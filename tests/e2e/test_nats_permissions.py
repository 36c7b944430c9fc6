"""Per-service NATS credentials against the real nats-server: each service can do its job and
nothing the design forbids it (subjects and KV buckets from subjects.py).

A publish the server refuses raises nothing in nats-py: the server answers
`-ERR 'Permissions Violation for Publish to "..."'` and drops the message, the client hands the
error to its error callback, and a JetStream publish simply gets no ack. So every refusal is
checked twice: the violation is reported, and nothing reached the stream or a listener. Each
refusal has a positive control (rights that do allow it), so no check passes vacuously.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, NotFoundError

from llmchat_common import subjects
from llmchat_common.launch import nats_auth
from llmchat_common.launch.process import ManagedProcess, free_port, wait_until
from llmchat_common.launch.stack import LocalStack, _http_ok
from llmchat_common.messaging import ensure_streams, registry_kv, revocations_kv
from llmchat_common.settings import NatsSettings
from tests.conftest import REPO
from tests.helpers import connect_nats, eventually

COMPOSE_CONF = REPO / "infra" / "nats" / "nats.conf"
NATS_SERVER = Path(sys.executable).parent / "nats-server"
NO_ACK = (nats.errors.TimeoutError, TimeoutError)
# The server logs each violation with the client's name: this module's are expected, and a
# service's would mean a missing grant.
CLIENT_NAME = "nats-permissions-test"


@pytest.fixture(scope="module", autouse=True)
async def provisioned(stack: LocalStack) -> None:
    """The streams and buckets the services create at start (this module needs no service)."""
    async with connect(stack.env()) as admin:
        js = admin.nc.jetstream()
        await ensure_streams(js, NatsSettings())
        await registry_kv(js)
        await revocations_kv(js)


@dataclass
class Conn:
    nc: Client
    errors: list[str]

    async def refused(self, action: str, subject: str) -> bool:
        """Whether the server reported a permissions violation for `action` ("publish" or
        "subscription") on `subject`."""
        wanted = f'permissions violation for {action} to "{subject}"'.lower()

        async def seen() -> bool:
            return any(wanted in e.lower() for e in self.errors)

        try:
            await eventually(seen, timeout=3, what=f"the server to refuse {action} to {subject}")
        except AssertionError:
            return False
        return True

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


@asynccontextmanager
async def connect(env: Mapping[str, str]) -> AsyncIterator[Conn]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await connect_nats(env, name=CLIENT_NAME, error_cb=on_error, max_reconnect_attempts=0)
    conn = Conn(nc, errors)
    try:
        yield conn
    finally:
        await conn.nc.close()


def token() -> str:
    return f"perm{uuid.uuid4().hex[:12]}"


async def stored(admin: Client, stream: str, subject: str) -> bytes | None:
    try:
        msg = await admin.jetstream().get_last_msg(stream, subject)
    except NotFoundError:
        return None
    return msg.data


async def listen(conn: Conn, subject: str) -> list[bytes]:
    received: list[bytes] = []

    async def on_msg(msg: Msg) -> None:
        received.append(msg.data)

    await conn.nc.subscribe(subject, cb=on_msg)
    await conn.nc.flush()
    return received


# -- the worker ---------------------------------------------------------------------------------
async def test_worker_cannot_queue_requests_but_can_publish_events(stack: LocalStack) -> None:
    rid = token()
    request_subject = subjects.request_subject(rid)
    event_subject = subjects.event_subject(rid, "delta")
    async with connect(stack.env()) as admin, connect(stack.env("worker")) as worker:
        with pytest.raises(NO_ACK):
            await worker.nc.jetstream().publish(request_subject, b"forged request", timeout=1)
        assert await worker.refused("publish", request_subject)
        assert await stored(admin.nc, subjects.REQUESTS_STREAM, request_subject) is None

        ack = await worker.nc.jetstream().publish(event_subject, b"a token", timeout=5)
        assert ack.stream == subjects.EVENTS_STREAM
        assert await stored(admin.nc, subjects.EVENTS_STREAM, event_subject) == b"a token"
        assert worker.violations() == [worker.errors[0]]  # only the forged request


async def test_only_the_edge_may_call_auth(stack: LocalStack) -> None:
    login = subjects.auth_subject("login")
    async with (
        connect(stack.env()) as admin,
        connect(stack.env("worker")) as worker,
        connect(stack.env("chat")) as edge,
    ):
        heard = await listen(admin, login)  # a plain subscription sees every call
        await worker.nc.publish(login, b'{"email": "forged"}')
        await worker.nc.flush()
        assert await worker.refused("publish", login)

        await edge.nc.publish(login, b'{"email": "from-the-edge"}')
        await edge.nc.flush()

        async def delivered() -> bool:
            return bool(heard)

        await eventually(delivered, timeout=5, what="the edge's call to reach a listener")
        assert heard == [b'{"email": "from-the-edge"}']
        assert edge.violations() == []


async def test_only_auth_listens_on_auth_subjects(stack: LocalStack) -> None:
    wildcard = subjects.auth_wildcard()
    async with (
        connect(stack.env("chat")) as edge,
        connect(stack.env("worker")) as worker,
        connect(stack.env("auth")) as auth,
    ):
        for conn in (edge, worker):
            await conn.nc.subscribe(wildcard, queue=subjects.AUTH_QUEUE)
            await conn.nc.flush()
            assert await conn.refused("subscription", wildcard)
        # Auth itself only in its queue group: a plain subscription would see every call.
        await auth.nc.subscribe(wildcard)
        await auth.nc.flush()
        assert await auth.refused("subscription", wildcard)
        await auth.nc.subscribe(wildcard, queue=subjects.AUTH_QUEUE)
        await auth.nc.flush()
        await asyncio.sleep(0.3)
        assert len(auth.violations()) == 1, auth.errors


async def test_auth_replies_only_to_requests_it_received(stack: LocalStack) -> None:
    """allow_responses: auth answers on the edge's private inbox, and may publish nothing else
    there."""
    subject = f"{subjects.AUTH_RPC_PREFIX}.{token()}"
    async with connect(stack.env("chat")) as edge, connect(stack.env("auth")) as auth:

        async def answer(msg: Msg) -> None:
            await msg.respond(b"pong")

        await auth.nc.subscribe(subject, queue=subjects.AUTH_QUEUE, cb=answer)
        await auth.nc.flush()
        reply = await edge.nc.request(subject, b"ping", timeout=5)
        assert reply.data == b"pong"
        assert reply.subject.startswith(f"{nats_auth.inbox_prefix('chat')}.")

        unsolicited = f"{nats_auth.inbox_prefix('chat')}.{token()}"
        await auth.nc.publish(unsolicited, b"forged reply")
        await auth.nc.flush()
        assert await auth.refused("publish", unsolicited)


async def test_private_edge_inbox(stack: LocalStack) -> None:
    """Auth's replies (tokens, API keys) arrive on the edge's inbox: no other service listens."""
    wildcard = f"{nats_auth.inbox_prefix('chat')}.>"
    for service in ("worker", "auth", "history", "metrics"):
        async with connect(stack.env(service)) as conn:
            await conn.nc.subscribe(wildcard)
            await conn.nc.flush()
            assert await conn.refused("subscription", wildcard), service
    async with connect(stack.env("chat")) as edge:
        await edge.nc.subscribe(wildcard)
        await edge.nc.flush()
        await asyncio.sleep(0.3)
        assert edge.violations() == []


# -- the edge -----------------------------------------------------------------------------------
async def test_edge_cannot_publish_events_but_can_queue_requests(stack: LocalStack) -> None:
    rid = token()
    event_subject = subjects.event_subject(rid, "delta")
    request_subject = subjects.request_subject(rid)
    async with connect(stack.env()) as admin, connect(stack.env("chat")) as edge:
        with pytest.raises(NO_ACK):
            await edge.nc.jetstream().publish(event_subject, b"forged token", timeout=1)
        assert await edge.refused("publish", event_subject)
        assert await stored(admin.nc, subjects.EVENTS_STREAM, event_subject) is None

        ack = await edge.nc.jetstream().publish(
            request_subject, b"a request", headers={"Nats-Msg-Id": rid}, timeout=5
        )
        assert ack.stream == subjects.REQUESTS_STREAM
        assert await stored(admin.nc, subjects.REQUESTS_STREAM, request_subject) == b"a request"


async def test_edge_reads_but_cannot_write_the_model_registry(stack: LocalStack) -> None:
    key = subjects.registry_key(token(), "w1")
    async with connect(stack.env("worker")) as worker, connect(stack.env("chat")) as edge:
        edge_kv = await registry_kv(edge.nc.jetstream())
        with pytest.raises(NO_ACK):
            await edge_kv.put(key, b'{"forged": true}')
        assert await edge.refused("publish", f"$KV.{subjects.REGISTRY_BUCKET}.{key}")
        with pytest.raises(KeyNotFoundError):
            await edge_kv.get(key)

        # The worker heartbeats there, and the edge sees it (get, and keys() as /v1/models does).
        worker_kv = await registry_kv(worker.nc.jetstream())
        await worker_kv.put(key, b"{}")
        assert (await edge_kv.get(key)).value == b"{}"
        assert key in await edge_kv.keys()
        await worker_kv.delete(key)


async def test_edge_cannot_write_revocations(stack: LocalStack) -> None:
    subject = f"$KV.{subjects.REVOCATIONS_BUCKET}.{token()}"
    async with connect(stack.env()) as admin, connect(stack.env("chat")) as edge:
        with pytest.raises(NO_ACK):
            await edge.nc.jetstream().publish(subject, b"{}", timeout=1)
        assert await edge.refused("publish", subject)
        assert await stored(admin.nc, f"KV_{subjects.REVOCATIONS_BUCKET}", subject) is None


# -- authentication -----------------------------------------------------------------------------
@pytest.mark.parametrize("password", ["wrong-password", None])
async def test_wrong_or_missing_password_is_refused(stack: LocalStack, password: str | None) -> None:
    env = stack.env("worker")

    async def quiet(exc: Exception) -> None:
        pass

    with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
        await nats.connect(
            env["LLMCHAT_NATS_URL"],
            user=env["LLMCHAT_NATS_USER"] if password else None,
            password=password,
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
        )


async def test_every_user_connects(stack: LocalStack) -> None:
    for user in nats_auth.SERVICES:
        async with connect(stack.env(user)) as conn:
            await conn.nc.flush()
            assert conn.nc.is_connected
    async with connect(stack.env()) as admin:
        assert admin.nc.is_connected


def test_services_never_hit_a_violation(stack: LocalStack) -> None:
    """Whatever ran in this session so far (the services of the other e2e tests), none of them
    was refused anything: each has every grant its code needs."""
    log = (stack.logs / "nats.log").read_text(errors="replace")
    violations = [line for line in log.splitlines() if re.search(r"(Publish|Subscription) Violation", line)]
    assert violations, "this module's own refusals should be in the server log"
    assert [v for v in violations if f':{CLIENT_NAME}" - ' not in v] == []


# -- where the credentials live -----------------------------------------------------------------
def test_local_credentials_are_private_and_kept(stack: LocalStack) -> None:
    for path in (stack.nats_passwords_file, stack.state_dir / "nats.conf"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    first = stack.nats_passwords()
    assert sorted(first) == sorted(nats_auth.USERS)
    assert len(set(first.values())) == len(nats_auth.USERS)
    # A second start in the same state folder keeps them.
    assert LocalStack(stack.state_dir).nats_passwords() == first


def test_no_nats_password_in_any_log(stack: LocalStack) -> None:
    passwords = list(stack.nats_passwords().values())
    for log in stack.logs.rglob("*"):
        if log.is_file():
            text = log.read_text(errors="replace")
            assert not any(p in text for p in passwords), f"a NATS password is in {log}"


def test_compose_conf_holds_variables_not_passwords() -> None:
    text = COMPOSE_CONF.read_text()
    values = re.findall(r"^\s*(?:password|pass)\s*[:=]?\s*(\S+)", text, flags=re.MULTILINE)
    assert sorted(values) == sorted(f"${nats_auth.password_variable(u)}" for u in nats_auth.USERS)
    # The same users and permissions as the local stack; regenerate the block with
    # `python -m llmchat_common.launch.nats_auth`.
    assert nats_auth.render_authorization() in text


def test_compose_gives_each_service_its_own_user() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name, user in {
        "chat": "chat",
        "inference-worker": "worker",
        "auth": "auth",
        "history": "history",
        "metrics": "metrics",
    }.items():
        env = services[name]["environment"]
        assert env["LLMCHAT_NATS_USER"] == user
        assert env["LLMCHAT_NATS_PASSWORD"].startswith(f"${{{nats_auth.password_variable(user)}:?")
        assert env.get("LLMCHAT_NATS_INBOX_PREFIX", nats_auth.DEFAULT_INBOX) == nats_auth.inbox_prefix(user)
    # The server gets every user's password, each required (no default to fall back on).
    server_env = services["nats"]["environment"]
    assert sorted(server_env) == sorted(nats_auth.password_variable(u) for u in nats_auth.USERS)
    assert all(value.startswith(f"${{{name}:?") for name, value in server_env.items())


async def test_compose_conf_runs_and_enforces(tmp_path: Path) -> None:
    """The deployment's nats.conf on the real server, passwords from the environment: it
    refuses to start without them, and with them enforces the same rights."""
    passwords = {u: f"p{uuid.uuid4().hex}" for u in nats_auth.USERS}
    env = {nats_auth.password_variable(u): p for u, p in passwords.items()}
    incomplete = {k: v for k, v in env.items() if k != nats_auth.password_variable("worker")}
    check = subprocess.run(
        [str(NATS_SERVER), "-c", str(COMPOSE_CONF), "-t"], env=incomplete, capture_output=True, text=True
    )
    assert check.returncode != 0 and "NATS_WORKER_PASSWORD" in check.stdout + check.stderr

    # The file's store is the container's volume; its ports are overridden by the flags.
    conf = tmp_path / "nats.conf"
    conf.write_text(COMPOSE_CONF.read_text().replace("store_dir: /data", f'store_dir: "{tmp_path}"', 1))
    port, monitor = free_port(), free_port()
    server = ManagedProcess(
        "nats-compose-conf",
        [str(NATS_SERVER), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor)],
        env=env,
        log_path=tmp_path / "nats.log",
    ).start()
    try:
        healthz = f"http://127.0.0.1:{monitor}/healthz"
        await asyncio.to_thread(wait_until, lambda: _http_ok(healthz), timeout=30, what="nats", proc=server)
        url = f"nats://127.0.0.1:{port}"

        def as_user(user: str) -> dict[str, str]:
            return {
                "LLMCHAT_NATS_URL": url,
                "LLMCHAT_NATS_USER": user,
                "LLMCHAT_NATS_PASSWORD": passwords[user],
                "LLMCHAT_NATS_INBOX_PREFIX": nats_auth.inbox_prefix(user),
            }

        async with connect(as_user("worker")) as worker, connect(as_user("chat")) as edge:
            heard = await listen(worker, subjects.cancel_subject("x"))
            await worker.nc.publish(subjects.request_subject("x"), b"forged")
            await worker.nc.flush()
            assert await worker.refused("publish", subjects.request_subject("x"))
            await edge.nc.publish(subjects.cancel_subject("x"), b"cancel")

            async def delivered() -> bool:
                return bool(heard)

            await eventually(delivered, timeout=5, what="the edge's cancel to reach the worker")
    finally:
        server.stop()


# -- history and metrics -------------------------------------------------------------------------
async def test_projections_consume_events_and_only_history_queues_requests(stack: LocalStack) -> None:
    """Both read the event log through their own consumers and write no event; history queues
    title requests, on whose stream it may create no consumer; metrics writes no stream but
    reads both (its jobs projection)."""
    rid = token()
    request_subject = subjects.request_subject(rid)
    async with (
        connect(stack.env()) as admin,
        connect(stack.env("history")) as history,
        connect(stack.env("metrics")) as metrics,
    ):
        event_subject = subjects.event_subject(rid, "completed")
        await admin.nc.jetstream().publish(event_subject, b"an event", timeout=5)
        for conn in (history, metrics):
            js = conn.nc.jetstream()
            sub = await js.pull_subscribe(event_subject, durable=None, stream=subjects.EVENTS_STREAM)
            assert [m.data for m in await sub.fetch(1, timeout=5)] == [b"an event"]
            with pytest.raises(NO_ACK):
                await js.publish(subjects.event_subject(rid, "delta"), b"forged", timeout=1)
            assert await conn.refused("publish", subjects.event_subject(rid, "delta"))
        # History writes the request stream, so no consumer there (the invariant); metrics
        # reads it for the jobs projection and writes it not.
        create = f"$JS.API.CONSUMER.CREATE.{subjects.REQUESTS_STREAM}.peek-{rid}"
        with pytest.raises(NO_ACK):
            await history.nc.jetstream().add_consumer(subjects.REQUESTS_STREAM, name=f"peek-{rid}", timeout=1)
        assert await history.refused("publish", create)
        await metrics.nc.jetstream().add_consumer(
            subjects.REQUESTS_STREAM, name=f"peek-m-{rid}", inactive_threshold=5.0, timeout=5
        )

        ack = await history.nc.jetstream().publish(
            request_subject, b"a title request", headers={"Nats-Msg-Id": rid}, timeout=5
        )
        assert ack.stream == subjects.REQUESTS_STREAM
        with pytest.raises(NO_ACK):
            await metrics.nc.jetstream().publish(request_subject, b"forged", timeout=1)
        assert await metrics.refused("publish", request_subject)
        assert await stored(admin.nc, subjects.REQUESTS_STREAM, request_subject) == b"a title request"
