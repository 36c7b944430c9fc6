"""Deleting a conversation forgets it: its prompts and answers leave the request stream, the
event stream (down to the store's files), Postgres and the logs. A request still running when
the conversation is deleted, and the conversation's title request, are forgotten too."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from nats.js.errors import NotFoundError

from llmchat_common import subjects
from llmchat_common.contracts import Delta
from llmchat_common.forgetting import outcome
from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.accounts import Account, create_account
from tests.conftest import MAIN_MODEL
from tests.helpers import connect_nats, eventually, make_admin, read_request_events


def bearer(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.access_token}"}


async def stored_anywhere(stack: LocalStack, needle: str) -> list[str]:
    """The Postgres tables (every schema of ours) whose rows hold `needle`."""
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        found = []
        for row in tables:
            name = f'"{row["table_schema"]}"."{row["table_name"]}"'
            if await conn.fetchval(f"SELECT count(*) FROM {name} t WHERE t::text LIKE $1", f"%{needle}%"):
                found.append(name)
        return found
    finally:
        await conn.close()


async def usage_rows(stack: LocalStack, request_ids: list[str]) -> int:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM usage.requests WHERE request_id = ANY($1::text[])", request_ids
        )
        return count
    finally:
        await conn.close()


async def stored_turn(http: httpx.AsyncClient, content: str) -> httpx.Response:
    """A short answer in a new stored conversation."""
    body = {"model": MAIN_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    answer = await http.post("/v1/chat/completions", json={**body, "store": True})
    assert answer.status_code == 200, answer.text
    return answer


def files_holding(folder: Path, needle: str) -> list[str]:
    data = needle.encode()
    return [str(p) for p in folder.rglob("*") if p.is_file() and data in p.read_bytes()]


async def request_seqs(stack: LocalStack, request_ids: list[str]) -> dict[str, int]:
    """Where each request is in CHAT_REQUESTS, as its events say."""
    nc = await connect_nats(stack.env())
    try:
        found = {}
        for request_id in request_ids:
            _, seq = await outcome(nc.jetstream(), request_id)
            if seq is not None:
                found[request_id] = seq
        return found
    finally:
        await nc.close()


async def gone_from_the_log(stack: LocalStack, request_ids: list[str], seqs: dict[str, int]) -> bool:
    nc = await connect_nats(stack.env())
    try:
        js = nc.jetstream()
        for request_id in request_ids:
            for kind in ("started", "delta", "completed", "cancelled", "failed", "reset"):
                try:
                    await js.get_last_msg(subjects.EVENTS_STREAM, subjects.event_subject(request_id, kind))
                    return False
                except NotFoundError:
                    pass
        for seq in seqs.values():
            try:
                await js.get_msg(subjects.REQUESTS_STREAM, seq)
                return False
            except NotFoundError:
                pass
        return True
    finally:
        await nc.close()


@pytest.mark.timeout(300)
async def test_deleting_a_conversation_forgets_it(stack: LocalStack, edge_url: str) -> None:
    user = create_account(edge_url)
    mark = f"zebracorn{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=edge_url, headers=bearer(user), timeout=120) as http:
        first = await stored_turn(http, f"Remember the word {mark}.")
        cid = first.headers["x-conversation-id"]
        first_id = first.headers["x-request-id"]
        other_id = (await stored_turn(http, "Keep me.")).headers["x-request-id"]

        async def titled() -> bool:
            got = await http.get(f"/v1/conversations/{cid}")
            return got.status_code == 200 and got.json()["title_source"] == "model"

        # The model titled it: the title request (which quotes the prompt) is in the log too.
        await eventually(titled, timeout=120, what="the conversation's model title")

        # A second turn still streaming when the conversation is deleted.
        second_body: dict[str, Any] = {
            "model": MAIN_MODEL,
            "messages": [{"role": "user", "content": f"Say {mark} again, at length."}],
            "max_tokens": 600,
            "ignore_eos": True,
            "stream": True,
            "conversation_id": cid,
        }
        async with http.stream("POST", "/v1/chat/completions", json=second_body) as streamed:
            assert streamed.status_code == 200
            second_id = streamed.headers["x-request-id"]
            lines = streamed.aiter_lines()
            async for line in lines:
                if line.startswith("data:") and '"content"' in line:
                    break
            ids = [first_id, second_id, f"title-{cid}"]
            seqs = await request_seqs(stack, ids)
            assert set(seqs) == set(ids), seqs
            deleted = await http.delete(f"/v1/conversations/{cid}")
            assert deleted.status_code == 200, deleted.text
            async for _ in lines:
                pass  # the answer runs to its end; the delete does not stop it
        assert (await http.get(f"/v1/conversations/{cid}")).status_code == 404

    # The late answer's events are erased once the projection sees them end.
    await eventually(
        lambda: gone_from_the_log(stack, ids, seqs), timeout=60, what="the requests erased from the log"
    )
    assert await stored_anywhere(stack, mark) == []
    # Not even in the broker's files (deleted messages are overwritten, purged blocks dropped)
    # or in any service's log.
    assert files_holding(stack.state_dir / "nats", mark) == []
    assert files_holding(stack.logs, mark) == []
    # The user's other conversation keeps its log.
    kept = await read_request_events(stack.env(), other_id, wait_terminal=30)
    assert any(isinstance(e, Delta) for e in kept) and await request_seqs(stack, [other_id])


@pytest.fixture(scope="module")
def admin(stack: LocalStack, edge_url: str) -> Account:
    return make_admin(stack, edge_url)


@pytest.mark.timeout(300)
async def test_erasing_a_user_forgets_all_of_theirs(stack: LocalStack, edge_url: str, admin: Account) -> None:
    user = create_account(edge_url)
    mark = f"quokkafig{uuid.uuid4().hex[:12]}"
    key = {"Authorization": f"Bearer {user.api_key}"}
    chat = {"model": MAIN_MODEL, "max_tokens": 8}
    async with httpx.AsyncClient(base_url=edge_url, timeout=120) as http:
        # A stored conversation, an API call stored nowhere but the log, and a job.
        stored = await http.post(
            "/v1/chat/completions",
            json={**chat, "messages": [{"role": "user", "content": f"Stored {mark}"}], "store": True},
            headers=bearer(user),
        )
        plain = await http.post(
            "/v1/chat/completions",
            json={**chat, "messages": [{"role": "user", "content": f"API {mark}"}]},
            headers=key,
        )
        job = await http.post(
            "/v1/jobs", json={**chat, "messages": [{"role": "user", "content": f"Job {mark}"}]}, headers=key
        )
        assert stored.status_code == plain.status_code == 200 and job.status_code in (200, 201, 202), job.text
        ids = [stored.headers["x-request-id"], plain.headers["x-request-id"], job.json()["id"]]
        admin_headers = bearer(admin)

        async def known() -> bool:
            # The usage rows (and the job's) are projected: the erasure finds them there.
            return len(await request_seqs(stack, ids)) == 3 and await usage_rows(stack, ids) == 3

        await eventually(known, timeout=60, what="the user's three requests in the log")
        seqs = await request_seqs(stack, ids)

        # Refusals first: not an admin, the admin themselves, no such user (nor one with an id
        # that cannot be one, as for PATCH).
        assert (await http.delete(f"/v1/admin/users/{user.user_id}", headers=bearer(user))).status_code == 403
        itself = await http.delete(f"/v1/admin/users/{admin.user_id}", headers=admin_headers)
        assert itself.status_code == 400 and itself.json()["error"]["param"] == "user_id", itself.text
        missing = await http.delete(f"/v1/admin/users/{uuid.uuid4()}", headers=admin_headers)
        assert missing.status_code == 404, missing.text
        assert (await http.delete("/v1/admin/users/not-an-id", headers=admin_headers)).status_code == 404

        erased = await http.delete(f"/v1/admin/users/{user.user_id}", headers=admin_headers)
        assert erased.status_code == 200, erased.text
        body = erased.json()
        assert body["deleted"] is True and body["conversations_deleted"] == 1, body
        # The account is gone: its key, its tokens and its password no longer work.
        assert (await http.get("/v1/models", headers=key)).status_code == 401
        assert (await http.get("/v1/conversations", headers=bearer(user))).status_code == 401
        login = await http.post("/v1/auth/login", json={"email": user.email, "password": user.password})
        assert login.status_code == 401, login.text
        # Erased already: the same call says so.
        again = await http.delete(f"/v1/admin/users/{user.user_id}", headers=admin_headers)
        assert again.status_code == 404, again.text

    # Erased in the background (a secure delete per event), within the eraser's next passes.
    await eventually(
        lambda: gone_from_the_log(stack, ids, seqs), timeout=60, what="the user's requests erased"
    )
    assert await stored_anywhere(stack, mark) == []
    assert files_holding(stack.state_dir / "nats", mark) == []
    assert files_holding(stack.logs, mark) == []
