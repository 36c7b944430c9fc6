"""The jobs projection of the metrics service on the real stack: `usage.jobs` rows from
CHAT_REQUESTS (queued) and CHAT_EVENTS (running, terminal), read over `usage.v1.rpc.job_get` /
`job_list` with the edge's NATS user.

Real chats go through the edge with the OpenAI SDK; synthetic requests are published for
IDLE_MODEL (no worker ever takes them, so they stay queued until a test publishes their events).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from llmchat_metrics.models import SCHEMA, Base
from nats.aio.client import Client
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    Failed,
    GenerationParams,
    Started,
    Timings,
    Usage,
)
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.stack import LocalStack
from llmchat_common.rpc import RpcReply
from llmchat_common.testing.migrations import migration_diff
from llmchat_common.usage_contracts import JobPage, JobRecord
from tests.conftest import IDLE_MODEL, MAIN_MODEL
from tests.helpers import Account, connect_nats, eventually, left_too_late

pytestmark = pytest.mark.asyncio

Event = Started | Completed | Failed | Cancelled


@pytest.fixture(scope="module")
async def admin(stack: LocalStack) -> AsyncIterator[Client]:
    nc = await connect_nats(stack.env())
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def edge(stack: LocalStack, metrics_service: ManagedProcess) -> AsyncIterator[Client]:
    """The edge's credentials: the only caller usage's subjects allow."""
    nc = await connect_nats(stack.env("chat"))
    yield nc
    await nc.close()


@pytest.fixture(scope="module")
async def db(stack: LocalStack, metrics_service: ManagedProcess) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    yield conn
    await conn.close()


# -- helpers --------------------------------------------------------------------------------------
async def rpc(nc: Client, op: str, body: dict[str, Any]) -> RpcReply:
    msg = await nc.request(subjects.usage_subject(op), json.dumps(body).encode(), timeout=10)
    return RpcReply.model_validate_json(msg.data)


async def job(nc: Client, user: str, rid: str) -> JobRecord | None:
    reply = await rpc(nc, "job_get", {"user_id": user, "request_id": rid})
    if reply.error is not None:
        assert reply.error.code == "not_found", reply.error
        return None
    return JobRecord.model_validate(reply.result)


async def job_in(
    nc: Client, user: str, rid: str, status: str | tuple[str, ...], timeout: float = 30
) -> JobRecord:
    wanted = (status,) if isinstance(status, str) else status

    async def check() -> JobRecord | None:
        found = await job(nc, user, rid)
        return found if found is not None and found.status in wanted else None

    return await eventually(check, timeout=timeout, what=f"job {rid} {status}")


async def page(nc: Client, user: str, **query: Any) -> JobPage:
    reply = await rpc(nc, "job_list", {"user_id": user, **query})
    assert reply.ok, reply.error
    return JobPage.model_validate(reply.result)


async def all_pages(nc: Client, user: str, **query: Any) -> list[JobRecord]:
    got: list[JobRecord] = []
    cursor = None
    while True:
        p = await page(nc, user, cursor=cursor, **query)
        got += p.data
        if p.next_cursor is None:
            return got
        assert len(p.data) == query.get("limit", 20)
        cursor = p.next_cursor


def new_request(user: str, created_at: float, *, source: str = "job") -> ChatRequested:
    return ChatRequested(
        request_id=f"job-{uuid.uuid4().hex}",
        model=IDLE_MODEL,
        messages=[ChatMessage(role="user", content="hello")],
        params=GenerationParams(max_tokens=8),
        user_id=user,
        api_key_id=f"key-{user}",
        conversation_id=str(uuid.uuid4()),
        source=source,  # type: ignore[arg-type]
        trace_id=uuid.uuid4().hex,
        created_at=created_at,
        deadline=created_at + 600,
    )


def _facts(req: ChatRequested) -> dict[str, Any]:
    return {k: v for k, v in req.facts().items() if k not in ("user_message", "system_prompt")}


def started(req: ChatRequested, attempt: int = 1) -> Started:
    return Started(
        request_id=req.request_id,
        attempt=attempt,
        seq=0,
        worker_id="w-test",
        ts=req.created_at + attempt,
        queue_ms=5.0,
        prompt_tokens=4,
        **_facts(req),
    )


def ended(req: ChatRequested, kind: str, attempt: int = 1) -> Event:
    common: dict[str, Any] = {
        "request_id": req.request_id,
        "attempt": attempt,
        "seq": 7,
        "worker_id": "w-test",
        "ts": req.created_at + 10,
        "usage": Usage(prompt_tokens=4, completion_tokens=6),
        "timings": Timings(queue_ms=5.0, ttft_ms=20.0, e2e_ms=10_000.0),
        **_facts(req),
    }
    if kind == "completed":
        return Completed(finish_reason="stop", text="done", **common)
    if kind == "failed":
        return Failed(code="engine_error", message="boom", **common)
    return Cancelled(reason=kind, text="par", **common)  # type: ignore[arg-type]


async def publish_requests(nc: Client, requests: list[ChatRequested], *, fresh_ids: bool = False) -> None:
    js = nc.jetstream()
    for r in requests:
        msg_id = uuid.uuid4().hex if fresh_ids else r.request_id
        await js.publish(
            subjects.request_subject(r.model), r.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id}
        )


async def publish_events(nc: Client, events: list[Event], *, fresh_ids: bool = False) -> None:
    js = nc.jetstream()
    for e in events:
        msg_id = uuid.uuid4().hex if fresh_ids else subjects.msg_id_for_event(e.request_id, e.attempt, e.seq)
        await js.publish(
            subjects.event_subject(e.request_id, e.type),
            e.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id},
        )


async def job_rows(db: asyncpg.Connection, user: str, schema: str = SCHEMA) -> list[dict[str, Any]]:
    rows = await db.fetch(f'SELECT * FROM "{schema}".jobs WHERE user_id = $1 ORDER BY request_id', user)
    return [dict(r) for r in rows]


async def consumers_idle(nc: Client) -> bool:
    """Both jobs consumers delivered and acked everything in their streams."""
    js = nc.jetstream()
    for stream, durable in (
        (subjects.REQUESTS_STREAM, "projection-jobs-requests"),
        (subjects.EVENTS_STREAM, "projection-jobs-events"),
    ):
        info = await js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- schema -----------------------------------------------------------------------------------------
async def test_migrations_build_the_jobs_table_the_models_declare(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    assert await migration_diff(stack.env()["LLMCHAT_POSTGRES_DSN"], Base.metadata, SCHEMA) == []
    assert await db.fetchval("SELECT version_num FROM usage.alembic_version") == "0002"
    index = await db.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_user_id_created_at_request_id'"
    )
    assert "(user_id, created_at DESC, request_id DESC)" in index


# -- through the edge ------------------------------------------------------------------------------
async def test_a_chat_completion_through_the_edge_is_a_completed_job(
    edge_url: str, account: Account, edge: Client
) -> None:
    client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=account.api_key, max_retries=0, timeout=120)
    before = time.time()
    resp = await client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=12,
        temperature=0,
    )
    rid = resp.id
    record = await job_in(edge, account.user_id, rid, "completed")
    assert resp.usage is not None
    assert (record.prompt_tokens, record.completion_tokens) == (
        resp.usage.prompt_tokens,
        resp.usage.completion_tokens,
    )
    assert record.finish_reason == resp.choices[0].finish_reason
    assert record.model == MAIN_MODEL and record.source == "chat" and record.attempts == 1
    assert record.user_id == account.user_id and record.api_key_id
    assert record.error_code is None and record.trace_id
    assert record.started_at is not None and record.finished_at is not None
    assert before - 1 < record.created_at <= record.started_at <= record.finished_at < time.time() + 1
    listed = await page(edge, account.user_id, status=["completed"])
    assert rid in [j.request_id for j in listed.data]
    # Another user cannot see it, by id or in a list.
    stranger = f"user-{uuid.uuid4().hex[:8]}"
    assert await job(edge, stranger, rid) is None
    assert (await page(edge, stranger)).data == []


async def test_a_stream_dropped_mid_answer_is_a_cancelled_job(
    edge_url: str, account: Account, edge: Client
) -> None:
    body = {
        "model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 1500,
        "stream": True,
        "ignore_eos": True,
    }
    # A try whose answer ended before the client left (the projection or the client lagging
    # under load) is void.
    for _ in range(6):
        chunks = 0
        async with (
            httpx.AsyncClient(base_url=edge_url, headers=bearer(account.api_key), timeout=60) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            rid = resp.headers["x-request-id"]
            async for line in resp.aiter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    chunks += 1
                if chunks >= 3:
                    # The row says running while the answer streams (the projection may lag a bit).
                    seen = await job_in(edge, account.user_id, rid, ("running", "completed"), timeout=15)
                    break
        left_at = time.time()
        record = await job_in(edge, account.user_id, rid, ("cancelled", "completed"))
        assert record.finished_at is not None
        if record.status == "completed" and left_too_late(record.finished_at, left_at):
            continue
        assert seen.status == "running" and seen.started_at is not None and seen.finished_at is None
        assert record.status == "cancelled"
        assert record.finish_reason == "client" and record.error_code == "cancelled"
        assert record.completion_tokens is not None and 0 < record.completion_tokens < 1500
        return
    pytest.fail("the test client never left before the answer ended (6 tries): too slow to test")


# -- synthetic requests and events -----------------------------------------------------------------
async def test_queued_running_and_terminal_jobs_listed_filtered_and_paginated(
    admin: Client, edge: Client, db: asyncpg.Connection
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    base = time.time() - 1000
    reqs = [new_request(user, base + i, source="job" if i % 2 else "chat") for i in range(11)]
    # 0-2 queued, 3-4 running, then completed, failed, cancelled by the client, at the deadline,
    # by a shutdown, and one completed after a failover (attempt 2).
    plan = (
        ["queued"] * 3
        + ["running"] * 2
        + ["completed", "failed", "client", "deadline", "shutdown", "failover"]
    )
    events: list[Event] = []
    for r, what in zip(reqs, plan, strict=True):
        if what == "queued":
            continue
        events.append(started(r))
        if what == "failover":
            events += [started(r, 2), ended(r, "completed", attempt=2)]
        elif what != "running":
            events.append(ended(r, what))
    await publish_requests(admin, reqs)
    await publish_events(admin, events)
    expected_status = {
        "queued": "queued",
        "running": "running",
        "completed": "completed",
        "failover": "completed",
        "failed": "failed",
        "deadline": "failed",
        "client": "cancelled",
        "shutdown": "cancelled",
    }
    want = {r.request_id: expected_status[w] for r, w in zip(reqs, plan, strict=True)}

    async def all_in() -> list[JobRecord] | None:
        got = await all_pages(edge, user, limit=100)
        return got if {j.request_id: j.status for j in got} == want else None

    listed = await eventually(all_in, timeout=30, what="every job in its status")
    # Newest first (created_at, then id).
    assert [j.request_id for j in listed] == [r.request_id for r in reversed(reqs)]
    by_id = {j.request_id: j for j in listed}
    queued = by_id[reqs[0].request_id]
    assert queued.attempts == 0 and queued.started_at is None and queued.finished_at is None
    assert queued.model == IDLE_MODEL and queued.source == "chat" and queued.prompt_tokens is None
    assert abs(queued.created_at - reqs[0].created_at) < 1e-5
    assert by_id[reqs[1].request_id].source == "job"
    assert by_id[reqs[3].request_id].attempts == 1 and by_id[reqs[3].request_id].started_at is not None
    deadline = by_id[reqs[8].request_id]
    assert (deadline.error_code, deadline.finish_reason) == ("deadline_exceeded", "deadline")
    assert by_id[reqs[6].request_id].error_message == "boom"
    failover = by_id[reqs[10].request_id]
    assert failover.attempts == 2 and failover.started_at == pytest.approx(reqs[10].created_at + 1)
    assert (failover.prompt_tokens, failover.completion_tokens) == (4, 6)

    # Pages of 3 walk the same list; the last page has no cursor.
    paged = await all_pages(edge, user, limit=3)
    assert [j.request_id for j in paged] == [j.request_id for j in listed]
    first = await page(edge, user, limit=3)
    assert len(first.data) == 3 and first.next_cursor is not None
    # Filters, also across pages.
    failed = await all_pages(edge, user, status=["failed"], limit=1)
    assert {j.request_id for j in failed} == {reqs[6].request_id, reqs[8].request_id}
    active = await all_pages(edge, user, status=["queued", "running"], limit=2)
    assert [j.request_id for j in active] == [r.request_id for r in reversed(reqs[:5])]
    assert (await page(edge, user, status=["cancelled"])).data[0].request_id == reqs[9].request_id

    # Bad input is refused, never a crash; another user's job is not found.
    for body in (
        {"user_id": user, "limit": 0},
        {"user_id": user, "limit": 101},
        {"user_id": user, "status": ["done"]},
        {"user_id": user, "cursor": "not-a-cursor"},
        {"user_id": "", "limit": 1},
        {"limit": 1},
    ):
        reply = await rpc(edge, "job_list", body)
        assert reply.error is not None and reply.error.code == "invalid_request", (body, reply)
    reply = await rpc(edge, "job_get", {"user_id": "someone-else", "request_id": reqs[5].request_id})
    assert reply.error is not None and reply.error.code == "not_found"
    reply = await rpc(edge, "job_get", {"user_id": user, "request_id": "no-such-job"})
    assert reply.error is not None and reply.error.code == "not_found"

    # Redelivery and copies: every message again under new message ids, events before their
    # requests, in reverse: not one value changes, no row is added.
    before = await job_rows(db, user)
    assert len(before) == len(reqs)
    await publish_events(admin, list(reversed(events)), fresh_ids=True)
    await publish_requests(admin, list(reversed(reqs)), fresh_ids=True)
    await eventually(lambda: consumers_idle(admin), timeout=30, what="the jobs consumers caught up")
    assert await job_rows(db, user) == before


async def test_events_before_their_request_end_in_the_same_row(admin: Client, edge: Client) -> None:
    """The two streams are consumed independently: a job's end may be stored before it is
    known to be queued; the late request must not put it back to queued."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    req = new_request(user, time.time() - 5)
    await publish_events(admin, [ended(req, "completed")])
    early = await job_in(edge, user, req.request_id, "completed")
    await publish_requests(admin, [req])
    await publish_events(admin, [started(req)])
    await eventually(lambda: consumers_idle(admin), timeout=30, what="the jobs consumers caught up")
    final = await job(edge, user, req.request_id)
    assert final is not None and final.status == "completed"
    assert final.started_at == pytest.approx(req.created_at + 1)
    assert final.model_dump(exclude={"started_at"}) == early.model_dump(exclude={"started_at"})


async def test_title_requests_are_not_jobs(admin: Client, edge: Client) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    title = new_request(user, time.time()).model_copy(update={"kind": "title"})
    marker = new_request(user, time.time())
    await publish_requests(admin, [title, marker])
    await job_in(edge, user, marker.request_id, "queued")
    await eventually(lambda: consumers_idle(admin), timeout=30, what="the jobs consumers caught up")
    assert await job(edge, user, title.request_id) is None


async def test_replay_rebuilds_the_jobs(
    stack: LocalStack, admin: Client, edge: Client, db: asyncpg.Connection
) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    reqs = [new_request(user, time.time() - 100 + i) for i in range(4)]
    events: list[Event] = [
        started(reqs[1]),
        started(reqs[2]),
        ended(reqs[2], "deadline"),
        ended(reqs[3], "client"),
    ]
    await publish_events(admin, events[2:])
    await publish_requests(admin, reqs)
    await publish_events(admin, events[:2])
    await job_in(edge, user, reqs[1].request_id, "running")
    await eventually(lambda: consumers_idle(admin), timeout=30, what="the jobs consumers caught up")
    target = f"usage_replay_{uuid.uuid4().hex[:8]}"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "llmchat_metrics", "replay", "--since", "2000-01-01", "--target", target],
        env={**os.environ, **stack.env("metrics"), "LLMCHAT_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "job rows" in result.stdout
    try:
        live = await job_rows(db, user)
        names = ["queued", "running", "failed", "cancelled"]
        statuses = dict(zip([r.request_id for r in reqs], names, strict=True))
        assert [r["status"] for r in live] == [statuses[rid] for rid in sorted(statuses)]
        assert await job_rows(db, user, target) == live
    finally:
        await db.execute(f'DROP SCHEMA "{target}" CASCADE')
