"""History and usage through the whole platform: real chats with the OpenAI SDK (edge → worker →
event log → history and metrics consumers → Postgres), read back through the edge."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import TERMINAL_TYPES, parse_event
from llmchat_common.history_contracts import Conversation
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL
from tests.helpers import Account, connect_nats, eventually, make_admin, register_account, service_cli

pytestmark = pytest.mark.asyncio


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sdk(edge_url: str, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=key, max_retries=0, timeout=120)


async def conversation(http: httpx.AsyncClient, token: str, cid: str) -> Conversation:
    resp = await http.get(f"/v1/conversations/{cid}", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    return Conversation.model_validate(resp.json())


async def projected(http: httpx.AsyncClient, token: str, cid: str) -> Conversation | None:
    """The conversation once the history projection has it (None before: it lags the edge's
    answer a little, more on a loaded machine)."""
    resp = await http.get(f"/v1/conversations/{cid}", headers=bearer(token))
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return Conversation.model_validate(resp.json())


async def terminal_events_of(stack: LocalStack, user_id: str) -> list[Any]:
    """Every terminal event of one user in the log (an ephemeral consumer over the terminals)."""
    nc = await connect_nats(stack.env())
    try:
        js = nc.jetstream()
        found: list[Any] = []
        for kind in sorted(TERMINAL_TYPES):
            sub = await js.subscribe(f"{subjects.EVENTS_PREFIX}.*.{kind}", ordered_consumer=True)
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered is not None else 0
            more = bool(info.num_pending) or delivered > 0
            while more:
                msg = await sub.next_msg(timeout=5)
                more = msg.metadata.num_pending > 0
                event = parse_event(msg.data)
                if event.user_id == user_id:
                    found.append(event)
            await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def test_three_turns_one_conversation_search_export(edge_url: str) -> None:
    user = register_account(edge_url)
    client = sdk(edge_url, user.api_key)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    turns = ["Tell me about the harbour.", "And the lighthouse?", "Thanks, one more thing."]
    answers: list[str] = []
    request_ids: list[str] = []
    cid: str | None = None
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        # An API key's call is stored as a conversation only with `store` (or a conversation id).
        extra = {"conversation_id": cid} if cid else {"store": True}
        raw = await client.chat.completions.with_raw_response.create(
            model=MAIN_MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0,
            extra_body=extra,
        )
        resp = raw.parse()
        body_cid = (resp.model_extra or {}).get("conversation_id")
        assert raw.headers["x-conversation-id"] == body_cid
        if i == 0:
            uuid.UUID(body_cid)  # a new conversation, by the edge
            cid = body_cid
        assert body_cid == cid
        answer = resp.choices[0].message.content or ""
        answers.append(answer)
        request_ids.append(resp.id)
        messages.append({"role": "assistant", "content": answer})
    assert cid is not None

    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:

        async def six() -> Conversation | None:
            conv = await projected(http, user.access_token, cid)
            return conv if conv and len(conv.messages) == 6 else None

        conv = await eventually(six, timeout=30, what="six messages in the conversation")
        assert [m.role for m in conv.messages] == ["user", "assistant"] * 3
        assert [m.content for m in conv.messages] == [
            x for pair in zip(turns, answers, strict=True) for x in pair
        ]
        assert [m.request_id for m in conv.messages] == [r for r in request_ids for _ in (0, 1)]
        assert conv.system_prompt == "You are terse."
        assert all(m.status == "completed" for m in conv.messages)
        reply = conv.messages[1]
        assert reply.model == MAIN_MODEL and reply.usage is not None and reply.usage.completion_tokens > 0
        assert reply.trace_id is not None and re.fullmatch(r"[0-9a-f]{32}", reply.trace_id)

        # Full-text search by a word of the second answer (only this user's conversations).
        words = [w for w in re.findall(r"[^\W\d_]{3,}", answers[1])]
        if words:
            found = await http.get(
                "/v1/conversations", params={"q": words[0]}, headers=bearer(user.access_token)
            )
            assert found.status_code == 200, found.text
            assert cid in [c["id"] for c in found.json()["data"]]
        nothing = await http.get(
            "/v1/conversations", params={"q": "zzqqxxnotaword"}, headers=bearer(user.access_token)
        )
        assert nothing.json()["data"] == []
        listed = await http.get("/v1/conversations", headers=bearer(user.access_token))
        assert [c["id"] for c in listed.json()["data"]] == [cid]

        # Export: JSON round-trips to what `get` says; Markdown holds every turn.
        exported = await http.get(f"/v1/conversations/{cid}/export", headers=bearer(user.access_token))
        assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
        assert Conversation.model_validate_json(exported.content) == await conversation(
            http, user.access_token, cid
        )
        md = await http.get(
            f"/v1/conversations/{cid}/export",
            params={"format": "markdown"},
            headers=bearer(user.access_token),
        )
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        for text in turns:
            assert text in md.text

        # The model titles the conversation (a low-priority request of its own); a rename wins.
        async def titled() -> bool:
            return (await conversation(http, user.access_token, cid)).title_source == "model"

        await eventually(titled, timeout=60, what="the model's title")
        renamed = await http.patch(
            f"/v1/conversations/{cid}", json={"title": "Harbour notes"}, headers=bearer(user.access_token)
        )
        assert renamed.status_code == 200, renamed.text
        conv = await conversation(http, user.access_token, cid)
        assert (conv.title, conv.title_source) == ("Harbour notes", "user")

        # The exact stored events of a past request, token by token: its owner and admins only.
        events = await http.get(f"/v1/requests/{request_ids[1]}/events", headers=bearer(user.access_token))
        assert events.status_code == 200, events.text
        data = events.json()["data"]
        assert data[0]["type"] == "started" and data[-1]["type"] == "completed"
        assert "".join(e["text"] for e in data if e["type"] == "delta") == answers[1]
        assert [e["stream_seq"] for e in data] == sorted(e["stream_seq"] for e in data)

        # Delete: everything goes, and the id is then like any missing one.
        deleted = await http.delete(f"/v1/conversations/{cid}", headers=bearer(user.access_token))
        assert deleted.status_code == 200 and deleted.json() == {"id": cid, "deleted": True}
        gone = await http.get(f"/v1/conversations/{cid}", headers=bearer(user.access_token))
        assert gone.status_code == 404


async def test_other_users_get_404(edge_url: str, stack: LocalStack) -> None:
    owner = register_account(edge_url)
    resp = await sdk(edge_url, owner.api_key).chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "private"}],
        max_tokens=4,
        extra_body={"store": True},
    )
    cid = (resp.model_extra or {})["conversation_id"]
    other = register_account(edge_url)
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:

        async def stored() -> bool:
            got = await http.get(f"/v1/conversations/{cid}", headers=bearer(owner.access_token))
            return got.status_code == 200

        await eventually(stored, timeout=30, what="the conversation to be stored")
        missing = str(uuid.uuid4())
        for target in (cid, missing, "not-a-uuid"):
            h = bearer(other.access_token)
            answers = [
                await http.get(f"/v1/conversations/{target}", headers=h),
                await http.patch(f"/v1/conversations/{target}", json={"title": "mine"}, headers=h),
                await http.get(f"/v1/conversations/{target}/export", headers=h),
                await http.delete(f"/v1/conversations/{target}", headers=h),
            ]
            for answer in answers:
                assert answer.status_code == 404, (target, answer.text)
                assert answer.json()["error"]["code"] in ("not_found", "conversation_not_found")
        # Nor may another user add a turn to it.
        sneaky = await http.post(
            "/v1/chat/completions",
            json={
                "model": MAIN_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "conversation_id": cid,
            },
            headers=bearer(other.api_key),
        )
        assert sneaky.status_code == 404 and sneaky.json()["error"]["param"] == "conversation_id"
        # The owner's conversation and the request's events are untouched and unseen.
        assert (await conversation(http, owner.access_token, cid)).title_source != "user"
        peek = await http.get(f"/v1/requests/{resp.id}/events", headers=bearer(other.api_key))
        assert peek.status_code == 404
        for nowhere in ("chatcmpl-doesnotexist", "bad.id"):
            none = await http.get(f"/v1/requests/{nowhere}/events", headers=bearer(owner.api_key))
            assert none.status_code == 404 and none.json()["error"]["code"] == "request_not_found"
        admin = make_admin(stack, edge_url)
        seen = await http.get(f"/v1/requests/{resp.id}/events", headers=bearer(admin.access_token))
        assert seen.status_code == 200 and seen.json()["data"][0]["user_id"] == owner.user_id


async def usage_csv(http: httpx.AsyncClient, user: Account, day: str) -> list[dict[str, str]]:
    resp = await http.get(
        "/v1/usage", params={"since": day, "until": day, "format": "csv"}, headers=bearer(user.access_token)
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(resp.text)))


async def test_usage_csv_equals_the_terminal_events(edge_url: str, stack: LocalStack) -> None:
    user = register_account(edge_url)
    client = sdk(edge_url, user.api_key)
    for i in range(3):
        await client.chat.completions.create(
            model=MAIN_MODEL, messages=[{"role": "user", "content": f"usage {i}"}], max_tokens=8 + i
        )
    # A cancelled answer keeps its partial tokens: the stream is dropped after some text.
    stream = await client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "a long one"}],
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen >= 3:
                break
    await stream.close()

    async def all_ended() -> list[Any] | None:
        events = await terminal_events_of(stack, user.user_id)
        kinds = {e.type for e in events if e.kind == "chat"}
        return events if len([e for e in events if e.kind == "chat"]) >= 4 and "cancelled" in kinds else None

    events = await eventually(all_ended, timeout=60, what="four terminal events, one cancelled")
    cancelled = next(e for e in events if e.type == "cancelled")
    assert 0 < cancelled.usage.completion_tokens < 1500
    day = datetime.now(UTC).date().isoformat()

    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:

        async def settled() -> list[dict[str, str]] | None:
            # Title requests end later: recount the log each time, then compare.
            log = [e for e in await terminal_events_of(stack, user.user_id) if _day(e.ts) == day]
            rows = await usage_csv(http, user, day)
            totals = (
                sum(int(r["requests"]) for r in rows),
                sum(int(r["prompt_tokens"]) for r in rows),
                sum(int(r["completion_tokens"]) for r in rows),
            )
            expected = (
                len(log),
                sum(e.usage.prompt_tokens for e in log),
                sum(e.usage.completion_tokens for e in log),
            )
            return rows if totals == expected else None

        rows = await eventually(settled, timeout=60, what="the usage CSV to equal the log")
        assert len(rows) == 1 and rows[0]["day"] == day
        assert int(rows[0]["cancelled"]) >= 1
        by_model = await http.get(
            "/v1/usage", params={"group_by": "model"}, headers=bearer(user.access_token)
        )
        assert by_model.status_code == 200 and by_model.json()["data"][0]["model"] == MAIN_MODEL
        bad = await http.get(
            "/v1/usage",
            params={"since": "2026-02-01", "until": "2026-01-01"},
            headers=bearer(user.access_token),
        )
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        forbidden = await http.get("/v1/admin/usage", headers=bearer(user.access_token))
        assert forbidden.status_code == 403
        admin = make_admin(stack, edge_url)
        platform = await http.get(
            "/v1/admin/usage", params={"group_by": "user"}, headers=bearer(admin.access_token)
        )
        assert platform.status_code == 200
        assert user.user_id in {b["user_id"] for b in platform.json()["data"]}


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


async def count_rows(stack: LocalStack, user_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        usage = await conn.fetchval("SELECT count(*) FROM usage.requests WHERE user_id = $1", user_id)
        answers = await conn.fetchval(
            "SELECT count(*) FROM history.messages WHERE user_id = $1 AND role = 'assistant'", user_id
        )
        return int(usage), int(answers)
    finally:
        await conn.close()


# A SIGKILL of Postgres under load is in bench/chaos.py's short run (tests/e2e/test_chaos.py).
@pytest.mark.parametrize("fault", ["stop", "hang"])
async def test_postgres_outage_under_load_loses_and_doubles_nothing(
    edge_url: str, stack: LocalStack, fault: str
) -> None:
    """Postgres stops cleanly or hangs (SIGSTOP, longer than the services' statement timeout)
    for 12 s under load. Streams go on; logins fail with a clean 503 while
    tokens and cached API keys keep working; the consumers catch up afterwards, and every
    request has exactly one usage row and one stored answer."""
    user = register_account(edge_url)
    # A JWT: verified at the edge without the auth service's database.
    client = sdk(edge_url, user.access_token)
    served: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def load(n: int) -> None:
        while not stop.is_set():
            try:
                stream = await client.chat.completions.create(
                    model=MAIN_MODEL,
                    messages=[{"role": "user", "content": f"load {n}"}],
                    max_tokens=8,
                    stream=True,
                )
                text, rid = "", ""
                async for chunk in stream:
                    rid = chunk.id
                    if chunk.choices and chunk.choices[0].delta.content:
                        text += chunk.choices[0].delta.content
                served.append(rid)
            except Exception as exc:  # noqa: BLE001 - counted: the test demands none
                failures.append(repr(exc))

    # The API key is checked once before the outage: it is in the edges' cache during it.
    by_key = sdk(edge_url, user.api_key)
    await by_key.models.list()
    tasks = [asyncio.create_task(load(n)) for n in range(3)]
    await eventually(lambda: _async(len(served) >= 3), timeout=60, what="load to flow")
    postgres = stack.process("postgres")
    if fault == "stop":
        await asyncio.to_thread(stack.stop_process, "postgres")
    elif fault == "kill":
        await asyncio.to_thread(stack.crash_process, "postgres")
    else:
        postgres.pause()
    down_at = time.monotonic()
    during_start = len(served)
    try:
        async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:
            began = time.monotonic()
            login = await http.post("/v1/auth/login", json={"email": user.email, "password": user.password})
            assert login.status_code == 503, login.text
            assert login.json()["error"]["type"] == "service_unavailable_error"
            assert time.monotonic() - began < 15
        answer = await by_key.chat.completions.create(
            model=MAIN_MODEL,
            messages=[{"role": "user", "content": "by key"}],
            max_tokens=4,
            extra_body={"store": True},
        )
        served.append(answer.id)
        while time.monotonic() - down_at < 12:
            await asyncio.sleep(1)
        during = len(served) - during_start
    finally:
        if fault == "hang":
            postgres.resume()
        else:
            await asyncio.to_thread(stack.start_postgres, port=stack.ports.postgres)
    stop.set()
    await asyncio.gather(*tasks)
    assert failures == []
    assert during > 1, "no stream completed while Postgres was down"

    async def caught_up() -> tuple[int, int] | None:
        # Usage counts every request of the user (titles too); history stores the chat answers.
        log = await terminal_events_of(stack, user.user_id)
        chats = [e for e in log if e.kind == "chat"]
        counts = await count_rows(stack, user.user_id)
        return counts if counts == (len(log), len(chats)) and len(chats) >= len(served) else None

    _, answers = await eventually(caught_up, timeout=120, what="the consumers to catch up")
    assert answers == len(served)


async def _async(value: bool) -> bool:
    return value


async def test_replay_reproduces_the_live_projections(edge_url: str, stack: LocalStack) -> None:
    user = register_account(edge_url)
    since = datetime.now(UTC).isoformat()
    client = sdk(edge_url, user.api_key)
    first = await client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "replay me"}],
        max_tokens=6,
        extra_body={"store": True},
    )
    cid = (first.model_extra or {})["conversation_id"]
    await client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "again"}],
        max_tokens=6,
        extra_body={"conversation_id": cid},
    )
    # Let the projections (and the title request they cause) settle.
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:

        async def titled() -> bool:
            conv = await projected(http, user.access_token, cid)
            return conv is not None and len(conv.messages) == 4 and conv.title_source == "model"

        await eventually(titled, timeout=60, what="the conversation and its title")

    async def usage_settled() -> bool:
        log = await terminal_events_of(stack, user.user_id)
        return (await count_rows(stack, user.user_id))[0] == len(log) == 3  # two chats and the title

    await eventually(usage_settled, timeout=60, what="usage rows")

    suffix = uuid.uuid4().hex[:8]
    for service, target in (("metrics", f"usage_replay_{suffix}"), ("history", f"history_replay_{suffix}")):
        out = await asyncio.to_thread(
            service_cli, stack, service, "replay", "--since", since, "--target", target
        )
        assert out.returncode == 0, out.stdout + out.stderr

    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        for live, table, key, where in (
            ("usage", "requests", "request_id", "user_id"),
            ("history", "messages", "request_id, role", "user_id"),
            ("history", "conversations", "id", "user_id"),
        ):
            replayed = f"{live}_replay_{suffix}"
            columns = await _comparable_columns(conn, live, table)
            query = f"SELECT {columns} FROM {{schema}}.{table} WHERE {where} = $1 ORDER BY {key}"
            live_rows = [dict(r) for r in await conn.fetch(query.format(schema=live), user.user_id)]
            replay_rows = [dict(r) for r in await conn.fetch(query.format(schema=replayed), user.user_id)]
            assert live_rows and live_rows == replay_rows, (live, table)
    finally:
        await conn.close()


async def _comparable_columns(conn: asyncpg.Connection, schema: str, table: str) -> str:
    """Every column except when a row was written (which a replay cannot reproduce)."""
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 "
        "ORDER BY ordinal_position",
        schema,
        table,
    )
    skip = {"projected_at", "inserted_at", "search", "tsv"}
    return ", ".join(f'"{r["column_name"]}"' for r in rows if r["column_name"] not in skip)
