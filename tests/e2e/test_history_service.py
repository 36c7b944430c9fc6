"""The history service as a real process: it projects synthetic events published to CHAT_EVENTS
(as admin, like a worker would) into Postgres, and answers the edge's RPC (as the `chat` user).

No model or edge is needed: every event here is made by the test, with its own ids; title
requests go to a model no worker serves, so they stay in CHAT_REQUESTS for the test to read.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import nats
import pytest
from llmchat_history.main import migrations_location
from llmchat_history.models import Base
from llmchat_history.projection import HistoryProjection, TitlePublisher
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from llmchat_common import subjects
from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    Failed,
    FunctionCall,
    Started,
    Timings,
    ToolCall,
    Usage,
)
from llmchat_common.db import create_engine, upgrade_schema
from llmchat_common.history_contracts import Conversation, ConversationPage, Exported
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import rpc_ping, start_history
from llmchat_common.launch.stack import LocalStack
from llmchat_common.projection import StoredEvent, apply_batch
from llmchat_common.rpc import RpcReply
from llmchat_common.settings import PostgresSettings
from llmchat_common.testing.migrations import migration_diff
from tests.conftest import paused
from tests.helpers import connect_nats, eventually

Event = Started | Completed | Failed | Cancelled
WAIT = 30.0


def uid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def history(stack: LocalStack, history_service: ManagedProcess) -> Iterator[ManagedProcess]:
    with paused(history_service, lambda: rpc_ping(stack, subjects.history_subject("ping"))):
        yield from _own_history(stack)


def _own_history(stack: LocalStack) -> Iterator[ManagedProcess]:
    proc = start_history(
        stack,
        extra_env={
            # Quick idle polls: the tests wait on the projection.
            "LLMCHAT_HISTORY_PROJECTION__IDLE_WAIT_S": "0.5",
            "LLMCHAT_HISTORY_TITLE_TIMEOUT_S": "60",
        },
    )
    try:
        yield proc
    finally:
        # A clean, prompt exit (a pull subscription left behind would hold the drain until
        # the process is killed).
        assert proc.stop(timeout=15) == 0


@pytest.fixture(scope="module")
async def edge_nc(stack: LocalStack, history: ManagedProcess) -> AsyncIterator[Client]:
    """The edge's credentials: the only caller history's RPC subjects allow."""
    client = await connect_nats(stack.env("chat"))
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def admin_nc(stack: LocalStack, history: ManagedProcess) -> AsyncIterator[Client]:
    client = await connect_nats(stack.env())
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def db(stack: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    yield conn
    await conn.close()


# -- helpers --------------------------------------------------------------------------------------
async def call(nc: Client, op: str, body: dict[str, Any] | bytes) -> RpcReply:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subjects.history_subject(op), payload, timeout=10)
    return RpcReply.model_validate_json(msg.data)


async def ok(nc: Client, op: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await call(nc, op, body)
    assert reply.ok and reply.result is not None, f"{op}: {reply.error}"
    return reply.result


async def fails(nc: Client, op: str, body: dict[str, Any] | bytes, code: str) -> None:
    reply = await call(nc, op, body)
    assert not reply.ok and reply.error is not None, f"{op} should fail with {code}"
    assert reply.error.code == code, f"{op}: {reply.error}"


def facts(
    rid: str, cid: str | None, user: str, created_at: float, question: str, **over: Any
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "attempt": 1,
        "seq": 0,
        "worker_id": "test-worker",
        "ts": time.time(),
        "user_id": user,
        "model": over.pop("model", "history-test-model"),
        "conversation_id": cid,
        "kind": "chat",
        "trace_id": uuid.uuid4().hex,
        "created_at": created_at,
        "user_message": question,
        "system_prompt": "You are terse.",
        **over,
    }


def turn(
    cid: str | None,
    user: str,
    question: str,
    answer: str,
    *,
    created_at: float,
    ending: str = "completed",
    **over: Any,
) -> list[Event]:
    rid = f"req-{uuid.uuid4().hex}"
    f = facts(rid, cid, user, created_at, question, **over)
    start = Started(queue_ms=1.0, prompt_tokens=7, **f)
    usage = Usage(prompt_tokens=7, completion_tokens=len(answer.split()))
    end: Event
    f = {**f, "seq": 5, "ts": f["ts"] + 0.5}
    if ending == "completed":
        end = Completed(finish_reason="stop", text=answer, usage=usage, timings=Timings(e2e_ms=5), **f)
    elif ending == "cancelled":
        end = Cancelled(reason="client", text=answer, usage=usage, **f)
    else:
        end = Failed(code="worker_lost", message="gone", text=answer, usage=usage, **f)
    return [start, end]


async def publish(nc: Client, events: list[Event], *, msg_id_suffix: str = "") -> None:
    js = nc.jetstream()
    for e in events:
        msg_id = subjects.msg_id_for_event(e.request_id, e.attempt, e.seq) + msg_id_suffix
        ack = await js.publish(
            subjects.event_subject(e.request_id, e.type),
            e.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id},
        )
        assert not ack.duplicate


async def conversation_with(nc: Client, user: str, cid: str, count: int) -> Conversation:
    async def check() -> Conversation | None:
        reply = await call(nc, "get", {"user_id": user, "conversation_id": cid})
        if not reply.ok or reply.result is None:
            return None
        conv = Conversation.model_validate(reply.result)
        return conv if len(conv.messages) >= count else None

    return await eventually(check, timeout=WAIT, what=f"{count} messages in {cid}")


async def caught_up(admin: Client) -> None:
    """The live projection has taken and acked everything in the log."""
    js = admin.jetstream()

    async def check() -> bool:
        info = await js.consumer_info(subjects.EVENTS_STREAM, "projection-history")
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(check, timeout=WAIT, what="the history projection to catch up")


async def stored_requests(admin: Client, model: str) -> list[ChatRequested]:
    js = admin.jetstream()
    sub = await js.pull_subscribe(
        subjects.request_subject(model),
        durable=None,
        stream=subjects.REQUESTS_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=30),
    )
    found: list[ChatRequested] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch=100, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for m in msgs:
                found.append(ChatRequested.model_validate_json(m.data))
                await m.ack()
    finally:
        await sub.unsubscribe()
    return found


async def three_turns(admin: Client, user: str, cid: str, marker: str) -> list[tuple[str, str]]:
    base = time.time() - 60
    pairs = [
        ("How long should I boil an egg for breakfast?", "About seven minutes for a firm yolk."),
        ("And a soft one?", f"Five minutes gives a runny {marker} yolk."),
        ("Thanks!", "You are welcome."),
    ]
    for i, (q, a) in enumerate(pairs):
        await publish(admin, turn(cid, user, q, a, created_at=base + i))
    return pairs


def tool_conversation(cid: str, user: str, *, model: str = "history-test-model") -> list[Event]:
    """A tool-calling exchange as a worker publishes it: the user's question answered with two
    tool calls only (the text is the parser's markup, content ""), then the client's request
    with the two tool results (no user message), answered in words."""
    base = time.time() - 30
    calls = [
        ToolCall(id=f"call-{uuid.uuid4().hex[:8]}", function=FunctionCall(name=name, arguments=args))
        for name, args in (("weather", '{"city": "Oslo"}'), ("clock", "{}"))
    ]
    f = facts(f"req-{uuid.uuid4().hex}", cid, user, base, "Weather and time in Oslo?", model=model)
    calling = Completed(
        finish_reason="tool_calls",
        text='<tool_call>{"name": "weather"}</tool_call><tool_call>{"name": "clock"}</tool_call>',
        content="",
        tool_calls=calls,
        usage=Usage(prompt_tokens=20, completion_tokens=30),
        timings=Timings(e2e_ms=5),
        **{**f, "seq": 5, "ts": f["ts"] + 0.5},
    )
    results = [
        ChatMessage(role="tool", content="-3 °C and snowing", tool_call_id=calls[0].id),
        ChatMessage(role="tool", content="14:05", tool_call_id=calls[1].id),
    ]
    answer = turn(
        cid,
        user,
        "",
        "It is snowing in Oslo at -3 °C; the time is 14:05.",
        created_at=base + 1,
        model=model,
        user_message=None,
        tool_results=results,
    )
    return [Started(queue_ms=1.0, prompt_tokens=20, **f), calling, *answer]


# -- tests ----------------------------------------------------------------------------------------
async def test_three_turns_make_one_conversation_searchable_and_exportable(
    edge_nc: Client, admin_nc: Client
) -> None:
    user, cid, marker = uid(), uid(), f"zebra{uuid.uuid4().hex[:8]}"
    pairs = await three_turns(admin_nc, user, cid, marker)
    conv = await conversation_with(edge_nc, user, cid, 6)

    assert [m.role for m in conv.messages] == ["user", "assistant"] * 3
    assert [m.content for m in conv.messages] == [text for pair in pairs for text in pair]
    assert all(m.status == "completed" for m in conv.messages)
    assert conv.message_count == 6 and conv.system_prompt == "You are terse."
    assert conv.title == "How long should I boil an egg for…" and conv.title_source == "fallback"
    answer = conv.messages[1]
    assert answer.usage is not None and answer.usage.prompt_tokens == 7 and answer.finish_reason == "stop"
    assert answer.trace_id and answer.model == "history-test-model"

    found = ConversationPage.model_validate(await ok(edge_nc, "list", {"user_id": user, "q": marker}))
    assert [c.id for c in found.data] == [cid]
    by_title = ConversationPage.model_validate(await ok(edge_nc, "list", {"user_id": user, "q": "boil egg"}))
    assert [c.id for c in by_title.data] == [cid]
    none = ConversationPage.model_validate(await ok(edge_nc, "list", {"user_id": user, "q": f"x{marker}"}))
    assert none.data == []
    # Another user's search never sees it.
    other = ConversationPage.model_validate(await ok(edge_nc, "list", {"user_id": uid(), "q": marker}))
    assert other.data == []

    exported = Exported.model_validate(
        await ok(edge_nc, "export", {"user_id": user, "conversation_id": cid, "format": "json"})
    )
    assert Conversation.model_validate_json(exported.content) == conv
    md = Exported.model_validate(
        await ok(edge_nc, "export", {"user_id": user, "conversation_id": cid, "format": "markdown"})
    ).content
    assert md.count("## User") == 3 and md.count("## Assistant") == 3
    for q, a in pairs:
        assert q in md and a in md
    assert (await ok(edge_nc, "check", {"user_id": user, "conversation_id": cid})) == {"id": cid}


async def test_list_is_newest_first_with_a_keyset_cursor(edge_nc: Client, admin_nc: Client) -> None:
    user = uid()
    cids = [uid() for _ in range(5)]
    for i, cid in enumerate(cids):
        await publish(admin_nc, turn(cid, user, f"question {i}", f"answer {i}", created_at=time.time()))
    await conversation_with(edge_nc, user, cids[-1], 2)
    seen: list[str] = []
    cursor = None
    while True:
        body: dict[str, Any] = {"user_id": user, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = ConversationPage.model_validate(await ok(edge_nc, "list", body))
        seen += [c.id for c in page.data]
        updated = [c.updated_at for c in page.data]
        assert updated == sorted(updated, reverse=True)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(cids))


async def test_another_users_conversation_is_not_found_like_a_missing_one(
    edge_nc: Client, admin_nc: Client, db: asyncpg.Connection
) -> None:
    owner, intruder, cid = uid(), uid(), uid()
    await publish(admin_nc, turn(cid, owner, "my secret plan", "noted", created_at=time.time()))
    await conversation_with(edge_nc, owner, cid, 2)
    for who, conversation_id in ((intruder, cid), (owner, uid())):
        ref = {"user_id": who, "conversation_id": conversation_id}
        for op in ("get", "check", "delete"):
            await fails(edge_nc, op, ref, "not_found")
        await fails(edge_nc, "rename", {**ref, "title": "mine now"}, "not_found")
        await fails(edge_nc, "export", {**ref, "format": "markdown"}, "not_found")

    # Events claiming the owner's conversation for another user are dropped.
    await publish(admin_nc, turn(cid, intruder, "hijack", "no", created_at=time.time()))
    await publish(admin_nc, turn(cid, owner, "second", "still mine", created_at=time.time()))
    conv = await conversation_with(edge_nc, owner, cid, 4)
    assert "hijack" not in [m.content for m in conv.messages]
    assert await db.fetchval("SELECT count(*) FROM history.messages WHERE conversation_id = $1", cid) == 4
    assert (await ok(edge_nc, "get", {"user_id": owner, "conversation_id": cid}))["title"] == "my secret plan"


async def test_duplicates_never_double_a_row(
    edge_nc: Client, admin_nc: Client, db: asyncpg.Connection
) -> None:
    user, cid = uid(), uid()
    events = turn(cid, user, "count me once", "once", created_at=time.time())
    await publish(admin_nc, events)
    await conversation_with(edge_nc, user, cid, 2)
    # Re-published copies with new message ids (JetStream's dedupe does not catch these),
    # terminal first, then a later turn: once it shows, the copies were projected too.
    await publish(admin_nc, list(reversed(events)), msg_id_suffix=":copy1")
    await publish(admin_nc, events, msg_id_suffix=":copy2")
    await publish(admin_nc, turn(cid, user, "next", "after the copies", created_at=time.time()))
    conv = await conversation_with(edge_nc, user, cid, 4)
    assert [m.content for m in conv.messages] == ["count me once", "once", "next", "after the copies"]
    rows = await db.fetch(
        "SELECT request_id, role, count(*) AS n FROM history.messages WHERE conversation_id = $1 "
        "GROUP BY request_id, role",
        cid,
    )
    assert len(rows) == 4 and all(r["n"] == 1 for r in rows)
    assert await db.fetchval("SELECT count(*) FROM history.conversations WHERE id = $1", cid) == 1


async def test_cancelled_and_failed_answers_are_kept_with_partial_text(
    edge_nc: Client, admin_nc: Client
) -> None:
    user, cid = uid(), uid()
    now = time.time()
    await publish(admin_nc, turn(cid, user, "write a saga", "Once upon", created_at=now, ending="cancelled"))
    await publish(admin_nc, turn(cid, user, "try again", "Long ago", created_at=now + 1, ending="failed"))
    # Cancelled while queued: no `started`, only the terminal event with the request's facts.
    queued = turn(cid, user, "never started", "", created_at=now + 2, ending="cancelled")[1]
    await publish(admin_nc, [queued])
    conv = await conversation_with(edge_nc, user, cid, 6)
    answers = [m for m in conv.messages if m.role == "assistant"]
    assert [(a.status, a.content, a.error) for a in answers] == [
        ("cancelled", "Once upon", "client"),
        ("failed", "Long ago", "worker_lost"),
        ("cancelled", "", "client"),
    ]
    assert answers[0].usage is not None and answers[0].usage.completion_tokens == 2
    assert conv.messages[4].content == "never started"
    md = Exported.model_validate(
        await ok(edge_nc, "export", {"user_id": user, "conversation_id": cid, "format": "markdown"})
    ).content
    assert "## Assistant (cancelled: client)" in md and "## Assistant (failed: worker_lost)" in md


async def test_a_title_is_requested_once_set_by_the_model_and_beaten_by_a_rename(
    edge_nc: Client, admin_nc: Client
) -> None:
    user, cid = uid(), uid()
    model = f"title-test-{uuid.uuid4().hex[:8]}"
    now = time.time()
    first = turn(
        cid,
        user,
        "Explain photosynthesis briefly",
        "Plants turn light into sugar.",
        created_at=now,
        model=model,
    )
    await publish(admin_nc, first)
    await publish(
        admin_nc, turn(cid, user, "More?", "Chlorophyll absorbs light.", created_at=now + 1, model=model)
    )
    await publish(admin_nc, first, msg_id_suffix=":copy")  # a redelivered first answer
    await conversation_with(edge_nc, user, cid, 4)
    await caught_up(admin_nc)

    requests = [r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid]
    assert len(requests) == 1
    req = requests[0]
    assert (req.request_id, req.kind, req.priority, req.user_id) == (f"title-{cid}", "title", 10, user)
    assert req.model == model and req.params.max_tokens == 16
    assert "Explain photosynthesis briefly" in req.messages[-1].content
    assert "Plants turn light into sugar." in req.messages[-1].content

    # The model's answer (as a worker would publish it) names the conversation.
    title_facts = facts(
        req.request_id, cid, user, req.created_at, req.messages[-1].content, model=model, kind="title"
    )
    failed_title = Failed(
        code="timeout", message="late", **{**title_facts, "request_id": f"{req.request_id}-x"}
    )
    await publish(admin_nc, [failed_title])  # a failed title answer changes nothing
    answer = Completed(
        finish_reason="stop",
        text='"Photosynthesis Basics"\n',
        usage=Usage(prompt_tokens=30, completion_tokens=3),
        timings=Timings(),
        **title_facts,
    )
    await publish(admin_nc, [answer])

    async def titled() -> dict[str, Any] | None:
        got = await ok(edge_nc, "get", {"user_id": user, "conversation_id": cid})
        return got if got["title_source"] == "model" else None

    got = await eventually(titled, timeout=WAIT, what="the model's title")
    assert got["title"] == "Photosynthesis Basics" and got["message_count"] == 4  # no title messages

    renamed = await ok(
        edge_nc, "rename", {"user_id": user, "conversation_id": cid, "title": "  My\nbio notes "}
    )
    assert (renamed["title"], renamed["title_source"]) == ("My bio notes", "user")
    later = Completed(**{**answer.model_dump(), "text": "Another Title", "ts": time.time(), "seq": 9})
    await publish(admin_nc, [later])
    await caught_up(admin_nc)
    got = await ok(edge_nc, "get", {"user_id": user, "conversation_id": cid})
    assert (got["title"], got["title_source"]) == ("My bio notes", "user")
    assert len([r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid]) == 1


async def test_delete_leaves_a_tombstone_and_drops_later_events(
    edge_nc: Client, admin_nc: Client, db: asyncpg.Connection
) -> None:
    user, cid = uid(), uid()
    await publish(admin_nc, turn(cid, user, "forget me", "ok", created_at=time.time()))
    await conversation_with(edge_nc, user, cid, 2)
    assert await ok(edge_nc, "delete", {"user_id": user, "conversation_id": cid}) == {
        "id": cid,
        "deleted": True,
    }
    await fails(edge_nc, "delete", {"user_id": user, "conversation_id": cid}, "not_found")
    await fails(edge_nc, "get", {"user_id": user, "conversation_id": cid}, "not_found")
    page = ConversationPage.model_validate(await ok(edge_nc, "list", {"user_id": user}))
    assert cid not in [c.id for c in page.data]

    # An answer still in flight when the user deleted it does not bring it back.
    await publish(admin_nc, turn(cid, user, "late question", "late answer", created_at=time.time()))
    await caught_up(admin_nc)
    row = await db.fetchrow(
        "SELECT title, deleted_at, system_prompt FROM history.conversations WHERE id = $1", cid
    )
    assert (
        row is not None
        and row["title"] == ""
        and row["deleted_at"] is not None
        and row["system_prompt"] is None
    )
    assert await db.fetchval("SELECT count(*) FROM history.messages WHERE conversation_id = $1", cid) == 0


async def test_events_without_a_conversation_are_ignored(admin_nc: Client, db: asyncpg.Connection) -> None:
    events = turn(None, uid(), "direct nats client", "no conversation", created_at=time.time())
    await publish(admin_nc, events)
    await caught_up(admin_nc)
    assert (
        await db.fetchval("SELECT count(*) FROM history.messages WHERE request_id = $1", events[0].request_id)
        == 0
    )


async def test_a_tool_calling_conversation_reads_in_order_and_is_stored_once(
    edge_nc: Client, admin_nc: Client, db: asyncpg.Connection
) -> None:
    user, cid = uid(), uid()
    model = f"tools-test-{uuid.uuid4().hex[:8]}"
    events = tool_conversation(cid, user, model=model)
    await publish(admin_nc, events)
    conv = await conversation_with(edge_nc, user, cid, 5)

    calls = events[1].tool_calls if isinstance(events[1], Completed) else []
    got = [(m.role, m.content, m.tool_call_id) for m in conv.messages]
    assert got == [
        ("user", "Weather and time in Oslo?", None),
        ("assistant", None, None),  # OpenAI's shape: only calls, content null
        ("tool", "-3 °C and snowing", calls[0].id),
        ("tool", "14:05", calls[1].id),
        ("assistant", "It is snowing in Oslo at -3 °C; the time is 14:05.", None),
    ]
    assert conv.messages[1].tool_calls == calls and conv.messages[1].finish_reason == "tool_calls"
    assert [m.tool_calls for m in conv.messages if m is not conv.messages[1]] == [None] * 4
    assert conv.message_count == 5 and conv.title == "Weather and time in Oslo?"
    # The edge's JSON: OpenAI's field names and shapes.
    raw = await ok(edge_nc, "get", {"user_id": user, "conversation_id": cid})
    assert raw["messages"][1]["content"] is None
    assert raw["messages"][1]["tool_calls"][0] == {
        "id": calls[0].id,
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    md = Exported.model_validate(
        await ok(edge_nc, "export", {"user_id": user, "conversation_id": cid, "format": "markdown"})
    ).content
    assert md.index("Calls `weather`") < md.index("## Tool") < md.index("It is snowing")

    # Redelivered copies (new message ids: JetStream's dedupe does not catch them), terminals
    # first, then a later turn: once it shows, the copies were projected too.
    await publish(admin_nc, list(reversed(events)), msg_id_suffix=":copy1")
    await publish(
        admin_nc, turn(cid, user, "Thanks", "You are welcome.", created_at=time.time(), model=model)
    )
    conv = await conversation_with(edge_nc, user, cid, 7)
    assert [m.role for m in conv.messages] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    rows = await db.fetch(
        "SELECT request_id, role, position, count(*) AS n FROM history.messages "
        "WHERE conversation_id = $1 GROUP BY request_id, role, position",
        cid,
    )
    assert len(rows) == 7 and all(r["n"] == 1 for r in rows)

    # One title request, from the opening exchange that says something: the question and the
    # answer to the tool results (the answer that only called tools says nothing).
    await caught_up(admin_nc)
    [req] = [r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid]
    assert "Weather and time in Oslo?" in req.messages[-1].content
    assert "It is snowing in Oslo" in req.messages[-1].content


async def test_a_conversation_opened_by_a_tool_turn_waits_for_a_user_message_for_its_title(
    edge_nc: Client, admin_nc: Client
) -> None:
    user, cid = uid(), uid()
    model = f"tools-first-{uuid.uuid4().hex[:8]}"
    events = tool_conversation(cid, user, model=model)[2:]  # the tool turn alone
    await publish(admin_nc, events)
    conv = await conversation_with(edge_nc, user, cid, 3)
    assert [m.role for m in conv.messages] == ["tool", "tool", "assistant"]
    assert conv.title == "New conversation"
    await caught_up(admin_nc)
    assert [r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid] == []
    await publish(admin_nc, turn(cid, user, "And tomorrow?", "Sunny.", created_at=time.time(), model=model))
    await conversation_with(edge_nc, user, cid, 5)
    await caught_up(admin_nc)
    [req] = [r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid]
    assert "And tomorrow?" in req.messages[-1].content and "Sunny." in req.messages[-1].content


async def test_completions_and_embeddings_are_not_conversation_turns(
    admin_nc: Client, db: asyncpg.Connection
) -> None:
    cid = uid()
    for kind in ("completion", "embedding"):
        await publish(admin_nc, turn(cid, uid(), "a raw prompt", "text", created_at=time.time(), kind=kind))
    await caught_up(admin_nc)
    assert await db.fetchval("SELECT count(*) FROM history.conversations WHERE id = $1", cid) == 0
    assert await db.fetchval("SELECT count(*) FROM history.messages WHERE conversation_id = $1", cid) == 0


async def test_malformed_bodies_are_invalid_requests(edge_nc: Client) -> None:
    user = uid()
    await fails(edge_nc, "get", b"not json", "invalid_request")
    await fails(edge_nc, "get", {}, "invalid_request")
    await fails(edge_nc, "get", {"user_id": user, "conversation_id": uid(), "extra": 1}, "invalid_request")
    await fails(edge_nc, "list", {"user_id": user, "limit": 1000}, "invalid_request")
    await fails(edge_nc, "list", {"user_id": user, "cursor": "not-a-cursor"}, "invalid_request")
    await fails(
        edge_nc, "export", {"user_id": user, "conversation_id": uid(), "format": "pdf"}, "invalid_request"
    )
    await fails(
        edge_nc, "rename", {"user_id": user, "conversation_id": uid(), "title": " \n "}, "invalid_request"
    )
    await fails(
        edge_nc, "rename", {"user_id": user, "conversation_id": uid(), "title": "x" * 201}, "invalid_request"
    )
    assert (await call(edge_nc, "ping", b"{}")).ok


async def test_title_requests_can_be_switched_off_and_a_failed_publish_releases_the_mark(
    stack: LocalStack, admin_nc: Client, db: asyncpg.Connection
) -> None:
    """In-process, on a schema of its own (the live log and schema stay untouched): the
    projection's code on real Postgres, its post-commit publish on real NATS, first through a
    closed connection (NATS away), then through one with the history service's rights."""
    schema = f"history_titles_{uuid.uuid4().hex[:8]}"
    base = create_engine(PostgresSettings(dsn=stack.env()["LLMCHAT_POSTGRES_DSN"]))
    engine = base.execution_options(schema_translate_map={"history": schema})
    model = f"title-fault-{uuid.uuid4().hex[:8]}"
    user, cid = uid(), uid()
    seq = iter(range(1, 1000))

    def stored(events: list[Event]) -> list[StoredEvent]:
        return [StoredEvent(e, next(seq), e.ts) for e in events]

    async def requested() -> bool:
        return bool(
            await db.fetchval(f'SELECT title_requested FROM "{schema}".conversations WHERE id = $1', cid)
        )

    history_nc = await connect_nats(stack.env("history"))
    closed = await connect_nats(stack.env("history"))
    await closed.close()
    try:
        await upgrade_schema(base, migrations_location(), schema=schema)
        off = HistoryProjection(titles=False)
        await apply_batch(
            engine, off, stored(turn(cid, user, "q1", "a1", created_at=time.time(), model=model))
        )
        assert off.pending == [] and not await requested()

        on = HistoryProjection(titles=True, collect=True)
        broken = TitlePublisher(closed.jetstream(), engine, on, title_timeout_s=30)
        await apply_batch(
            engine, on, stored(turn(cid, user, "q2", "a2", created_at=time.time(), model=model))
        )
        await broken.publish_pending()
        assert broken.titles_published == 0 and not await requested()  # released: the next answer asks again

        working = TitlePublisher(history_nc.jetstream(), engine, on, title_timeout_s=30)
        await apply_batch(
            engine, on, stored(turn(cid, user, "q3", "a3", created_at=time.time(), model=model))
        )
        await working.publish_pending()
        assert working.titles_published == 1 and await requested()
        [req] = [r for r in await stored_requests(admin_nc, model) if r.conversation_id == cid]
        assert "q1" in req.messages[-1].content and "a1" in req.messages[-1].content
    finally:
        await history_nc.close()
        await db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await base.dispose()


def _history_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmchat_history", *args],
        env={**os.environ, **stack.env("history")},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrations_match_the_models_and_run_twice(stack: LocalStack, db: asyncpg.Connection) -> None:
    for _ in range(2):
        done = await asyncio.to_thread(_history_cli, stack, "migrate")
        assert done.returncode == 0, done.stderr
    assert await db.fetchval("SELECT version_num FROM history.alembic_version") == "0005"
    assert await migration_diff(stack.env()["LLMCHAT_POSTGRES_DSN"], Base.metadata, "history") == []
    # What autogenerate does not compare: the key (several tool results per request) and the roles.
    constraints = {
        r["conname"]: r["def"]
        for r in await db.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
            "WHERE conrelid = 'history.messages'::regclass"
        )
    }
    assert constraints["pk_messages"] == 'PRIMARY KEY (request_id, role, "position")'
    assert [d for d in constraints.values() if "'tool'" in d and "role" in d]


async def _rows(db: asyncpg.Connection, schema: str) -> tuple[list[Any], list[Any]]:
    conversations = await db.fetch(f'SELECT * FROM "{schema}".conversations ORDER BY id')
    messages = await db.fetch(f'SELECT * FROM "{schema}".messages ORDER BY request_id, role, position')
    return [tuple(r) for r in conversations], [tuple(r) for r in messages]


async def test_replay_into_an_empty_schema_equals_the_live_projection(
    stack: LocalStack, edge_nc: Client, admin_nc: Client, db: asyncpg.Connection
) -> None:
    # Runs last in this module: the log holds every test's events, renames and deletes included.
    user, kept, gone, tools = uid(), uid(), uid(), uid()
    await three_turns(admin_nc, user, kept, "replayword")
    await publish(admin_nc, tool_conversation(tools, user))
    await publish(admin_nc, turn(gone, user, "to be deleted", "bye", created_at=time.time()))
    await conversation_with(edge_nc, user, gone, 2)
    await conversation_with(edge_nc, user, kept, 6)
    await conversation_with(edge_nc, user, tools, 5)
    await ok(edge_nc, "rename", {"user_id": user, "conversation_id": kept, "title": "Renamed"})
    await ok(edge_nc, "delete", {"user_id": user, "conversation_id": gone})
    await caught_up(admin_nc)

    target = f"history_replay_{uuid.uuid4().hex[:8]}"
    try:
        done = await asyncio.to_thread(
            _history_cli, stack, "replay", "--since", "1970-01-01", "--target", target
        )
        assert done.returncode == 0, done.stderr
        assert "replayed" in done.stdout
        live, replayed = await _rows(db, "history"), await _rows(db, target)
        ids = {row[0] for row in live[0]}
        assert {kept, gone} <= ids and len(ids) >= 10 and len(live[1]) >= 30
        assert replayed[0] == live[0]
        assert replayed[1] == live[1]
        tool_rows = f"SELECT count(*) FROM \"{target}\".messages WHERE conversation_id = $1 AND role = 'tool'"
        assert await db.fetchval(tool_rows, tools) == 2
        # A second replay into the same, now filled, schema is refused; --reset rebuilds it.
        again = await asyncio.to_thread(
            _history_cli, stack, "replay", "--since", "1970-01-01", "--target", target
        )
        assert again.returncode == 1 and "not empty" in again.stderr
        reset = await asyncio.to_thread(
            _history_cli, stack, "replay", "--since", "1970-01-01", "--target", target, "--reset"
        )
        assert reset.returncode == 0, reset.stderr
        assert await _rows(db, target) == live
    finally:
        await db.execute(f'DROP SCHEMA IF EXISTS "{target}" CASCADE')
