"""Test helpers that talk to the real broker and processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
import nats
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from llmchat_common import subjects
from llmchat_common.contracts import parse_event
from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.accounts import Account as Account
from llmchat_common.testing.accounts import create_account

T = TypeVar("T")


async def connect_nats(env: Mapping[str, str], **options: Any) -> Client:
    """A connection with the NATS credentials of a stack environment: `stack.env()` is the
    admin user, `stack.env("worker")` has exactly the worker's rights."""
    return await nats.connect(
        env["LLMCHAT_NATS_URL"],
        user=env.get("LLMCHAT_NATS_USER"),
        password=env.get("LLMCHAT_NATS_PASSWORD"),
        inbox_prefix=env.get("LLMCHAT_NATS_INBOX_PREFIX", "_INBOX"),
        **options,
    )


async def read_request_events(
    env: Mapping[str, str], request_id: str, *, wait_terminal: float = 30.0
) -> list[object]:
    """All stored events of one request, in stream order, waiting until a terminal one is there
    (`env`: a stack environment, e.g. `stack.env()`)."""
    nc = await connect_nats(env)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + wait_terminal
        while True:
            sub = await js.pull_subscribe(
                subjects.request_events_filter(request_id),
                durable=None,
                stream=subjects.EVENTS_STREAM,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
            )
            events: list[object] = []
            while True:
                try:
                    msgs = await sub.fetch(batch=256, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                for msg in msgs:
                    events.append(parse_event(msg.data))
                    await msg.ack()
            await sub.unsubscribe()
            if any(getattr(e, "type", "") in ("completed", "failed", "cancelled") for e in events):
                return events
            if time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


# A client "leaves mid-answer" only if the answer was still running when it left. On a loaded
# machine the test process itself can stall for seconds (loop lags of 3.7 s measured here under
# CPU load), long enough for a whole test answer to finish before the client gets to close; such
# a try proves nothing either way, and is run again. The margin is the edge's own reaction time.
LEFT_TOO_LATE_S = 1.0


def left_too_late(finished_at: float, left_at: float) -> bool:
    """The answer ended (`finished_at`, a terminal event's `ts`) before the client could have
    left mid-answer (`left_at`): the try did not test a disconnect."""
    return finished_at < left_at + LEFT_TOO_LATE_S


async def eventually(check: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_status(
    http: httpx.AsyncClient, job_id: str, *wanted: str, timeout: float = 120
) -> dict[str, Any]:
    """The job (`GET /v1/jobs/{id}`) once it is in one of the `wanted` states."""

    last: dict[str, Any] = {}

    async def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = (await http.get(f"/v1/jobs/{job_id}")).json()
        last.update(job)
        return job if job["status"] in wanted else None

    try:
        return await eventually(reached, timeout=timeout, what=f"job {job_id} to be {'/'.join(wanted)}")
    except AssertionError as exc:
        # What the job and its log said last: the failure is read from CI's output alone.
        logged = (await http.get(f"/v1/requests/{job_id}/events")).json().get("data", [])
        kinds = [
            (e.get("type"), e.get("attempt"), e.get("worker_id")) for e in logged if e.get("type") != "delta"
        ]
        deltas = sum(1 for e in logged if e.get("type") == "delta")
        raise AssertionError(f"{exc}; last seen: {last}; events: {kinds}, {deltas} deltas") from None


async def worker_status(url: str) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{url}/status", timeout=5)
        data: dict[str, object] = resp.json()
        return data


# Used for every test account: the no-secrets-in-logs test looks for it in every log file.
CANARY_PASSWORD = "canary-Pa55word-7f3e9b2d41"


def register_account(edge_url: str, *, email: str | None = None, password: str = CANARY_PASSWORD) -> Account:
    """A real account through the edge and the auth service, with the canary password."""
    return create_account(edge_url, email=email, password=password)


def service_cli(
    stack: LocalStack, service: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m llmchat_<service> ARGS` with the service's own environment (NATS user)."""
    return subprocess.run(
        [sys.executable, "-m", f"llmchat_{service}", *args],
        env={**os.environ, **stack.env(service), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_admin(stack: LocalStack, edge_url: str) -> Account:
    """A new administrator (the auth service's create-admin command), logged in."""
    email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
    out = service_cli(
        stack, "auth", "create-admin", "--email", email, env={"LLMCHAT_ADMIN_PASSWORD": CANARY_PASSWORD}
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with httpx.Client(base_url=edge_url, timeout=30) as client:
        pair = client.post("/v1/auth/login", json={"email": email, "password": CANARY_PASSWORD}).json()
        me = client.get("/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"}).json()
    assert me["role"] == "admin"
    return Account(email, CANARY_PASSWORD, pair["access_token"], pair["refresh_token"], "", me["id"])
