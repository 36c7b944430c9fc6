"""Disk full (issue 16), for the event log and for Postgres.

The event log: the streams have byte limits and refuse what is new once full (discard "new");
nothing stored is dropped to make room.

- A full request stream: a new request gets a 503 `log_full` with Retry-After, and nothing is
  stored (no ghost that runs later).
- An event stream with less than its reserve left: the running answer ends failed (`log_full`,
  retriable) with its text so far and a terminal event in the log; new requests get the 503;
  once the stream has room again, requests are served.

The broker's limits are lowered on the real streams for the test (nats-server keeps what is
stored above a lowered limit and refuses new messages), and restored after it.

Postgres: a real ENOSPC. History's messages table is moved into a tablespace on a small tmpfs
(this machine runs the suite as root, so it can mount one), which is then filled. The history
projection's batch fails with SQLSTATE 53100; it is retried with backoff and counted for the
`LlmchatPostgresDiskFull` alert, and nothing is acked. Once space is freed the answer is stored,
once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import orjson
import pytest
from nats.js import JetStreamContext

from llmchat_common import subjects
from llmchat_common.contracts import Completed, Delta, Failed
from llmchat_common.launch.process import ManagedProcess, find_binary, free_port, port_open, wait_until
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import ensure_streams
from llmchat_common.settings import NatsSettings
from tests.conftest import MAIN_MODEL, Worker
from tests.helpers import connect_nats, eventually, read_request_events

STREAMS = (subjects.REQUESTS_STREAM, subjects.EVENTS_STREAM, subjects.AUDIT_STREAM)
SHORT = {"model": MAIN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
RESERVE = NatsSettings().events_reserve_bytes


@pytest.fixture
async def js(stack: LocalStack) -> AsyncIterator[JetStreamContext]:
    nc = await connect_nats(stack.env())
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def limit(js: JetStreamContext, stream: str, max_bytes: int) -> None:
    config = (await js.stream_info(stream)).config
    await js.update_stream(dataclasses.replace(config, max_bytes=max_bytes))


async def refused_log_full(http: httpx.AsyncClient, path: str = "/v1/chat/completions") -> bool:
    resp = await http.post(path, json=SHORT)
    if resp.status_code != 503:
        assert resp.status_code in (200, 202), resp.text
        return False
    assert resp.json()["error"]["code"] == "log_full", resp.text
    assert int(resp.headers["retry-after"]) > 0
    return True


async def test_a_full_request_stream_refuses_new_requests_and_stores_nothing(
    edge_url: str, auth_headers: dict[str, str], worker: Worker, js: JetStreamContext
) -> None:
    original = (await js.stream_info(subjects.REQUESTS_STREAM)).config
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        try:
            stored = (await js.stream_info(subjects.REQUESTS_STREAM)).state
            await limit(js, subjects.REQUESTS_STREAM, max(1, stored.bytes))
            assert await refused_log_full(http)
            assert await refused_log_full(http, "/v1/jobs")
            after = (await js.stream_info(subjects.REQUESTS_STREAM)).state
            assert after.last_seq == stored.last_seq  # refused, not stored
        finally:
            await js.update_stream(original)
        assert not await refused_log_full(http)


async def test_an_event_log_out_of_room_ends_the_running_answer_and_refuses_new_ones(
    edge_url: str, auth_headers: dict[str, str], worker: Worker, js: JetStreamContext, stack: LocalStack
) -> None:
    body = {
        "model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 1900,
        "ignore_eos": True,
        "stream": True,
    }
    original = (await js.stream_info(subjects.EVENTS_STREAM)).config
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        try:
            for _ in range(3):
                text, error, limited_at = "", None, 0.0
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    request_id = resp.headers["x-request-id"]
                    chunks = 0
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = orjson.loads(line[6:])
                        if "error" in chunk:
                            error = chunk["error"]
                            continue
                        text += chunk["choices"][0]["delta"].get("content") or ""
                        chunks += 1
                        if chunks == 3:
                            # Half the reserve left: the worker ends the answer, whose terminal
                            # event still fits.
                            stored = (await js.stream_info(subjects.EVENTS_STREAM)).state.bytes
                            await limit(js, subjects.EVENTS_STREAM, stored + RESERVE // 2)
                            limited_at = time.time()
                events = await read_request_events(stack.env(), request_id)
                terminal = events[-1]
                if isinstance(terminal, Completed) and terminal.ts < limited_at + 2.5:
                    # The whole answer ran before a worker could look (a stalled test client).
                    await js.update_stream(original)
                    continue
                assert isinstance(terminal, Failed), terminal
                assert terminal.code == "log_full" and terminal.retriable
                assert error is not None and error["code"] == "log_full", error
                # What the client got is the log's text so far, cut well before the end.
                assert text == terminal.text == "".join(e.text for e in events if isinstance(e, Delta))
                assert 0 < terminal.usage.completion_tokens < 1900
                # New requests are refused while the log has no room for them.
                assert await refused_log_full(http)
                assert await refused_log_full(http, "/v1/jobs")
                break
            else:
                pytest.fail("the answer always ended before the limit was seen (3 tries)")
        finally:
            await js.update_stream(original)

        async def served() -> bool:
            return not await refused_log_full(http)

        # The edge and the workers read the stream's room again within seconds.
        await eventually(served, timeout=15, what="requests served once the log has room")


@contextlib.contextmanager
def small_disk(path: Path, size_bytes: int, owner: Path) -> Iterator[Path]:
    """A tmpfs of `size_bytes` at `path`, owned like `owner` (the database's folder)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        stat = owner.stat()
        os.chown(path, stat.st_uid, stat.st_gid)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Writes to `path` until its disk has no byte left."""
    block = b"\0" * (64 * 1024)
    with path.open("wb", buffering=0) as out:
        for size in (len(block), 512):  # then the last partial block
            try:
                while True:
                    out.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


def disk_full_count(history: ManagedProcess) -> float:
    text = httpx.get(f"http://127.0.0.1:{history.metrics_port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("llmchat_consumer_disk_full_total{")
    )


async def test_postgres_out_of_disk_holds_the_answer_until_space_is_freed(
    edge_url: str,
    auth_headers: dict[str, str],
    worker: Worker,
    history_service: ManagedProcess,
    stack: LocalStack,
) -> None:
    db = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    data = stack.state_dir / "postgres" / "data"
    table = await db.fetchval("SELECT pg_table_size('history.messages')")
    mount = stack.state_dir / f"pg-small-{uuid.uuid4().hex[:6]}"
    body = {
        "model": MAIN_MODEL,
        "messages": [{"role": "user", "content": "Write a long answer."}],
        "max_tokens": 800,
        "ignore_eos": True,
        "store": True,
    }
    try:
        with small_disk(mount, table + 32 * 1024**2, data):
            space = mount / "ts"
            space.mkdir()
            os.chown(space, data.stat().st_uid, data.stat().st_gid)
            await db.execute(f"CREATE TABLESPACE small_disk LOCATION '{space}'")
            try:
                await db.execute("ALTER TABLE history.messages SET TABLESPACE small_disk")
                fill(mount / "filler")
                before = disk_full_count(history_service)
                async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=120) as http:
                    resp = await http.post("/v1/chat/completions", json=body)
                    # The answer itself does not need Postgres.
                    assert resp.status_code == 200, resp.text
                    request_id = resp.json()["id"]
                    conversation = resp.headers["x-conversation-id"]

                    async def refused() -> bool:
                        return disk_full_count(history_service) > before

                    await eventually(refused, timeout=30, what="the history projection to meet the full disk")
                    # The user's message may have fit in a page already there; the answer did not.
                    answers = await db.fetchval(
                        "SELECT count(*) FROM history.messages WHERE request_id = $1 AND role = 'assistant'",
                        request_id,
                    )
                    assert answers == 0
                    (mount / "filler").unlink()

                    async def stored() -> bool:
                        got = await http.get(f"/v1/conversations/{conversation}")
                        return got.status_code == 200 and len(got.json()["messages"]) == 2

                    await eventually(stored, timeout=60, what="the answer stored once space is back")
                roles = await db.fetch(
                    "SELECT role FROM history.messages WHERE request_id = $1 ORDER BY role", request_id
                )
                assert [r["role"] for r in roles] == ["assistant", "user"]
                status = await db.fetchval(
                    "SELECT status FROM history.messages WHERE request_id = $1 AND role = 'assistant'",
                    request_id,
                )
                assert status == "completed"
            finally:
                with contextlib.suppress(OSError):
                    (mount / "filler").unlink()
                await db.execute("ALTER TABLE history.messages SET TABLESPACE pg_default")
                await db.execute("DROP TABLESPACE small_disk")
    finally:
        await db.close()


async def test_streams_fit_a_broker_with_a_small_store(tmp_path: Path) -> None:
    """nats-server reserves the streams' byte limits on its store and refuses a stream it cannot
    fit; on a small one the limits are halved together until they fit, and a second service's
    start leaves them as they are."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"port: {port}\njetstream {{ store_dir: {tmp_path / 'store'}, max_file_store: 300MB }}\n")
    binary = find_binary("nats-server", [Path(sys.executable).parent])
    assert binary is not None
    proc = ManagedProcess("nats-small", [binary, "-c", str(conf)], log_path=tmp_path / "nats.log").start()
    try:
        wait_until(lambda: port_open(port), timeout=30, what="nats-server")
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        try:
            js = nc.jetstream()
            settings = NatsSettings()
            await ensure_streams(js, settings)
            first = {n: (await js.stream_info(n)).config.max_bytes or 0 for n in STREAMS}
            share = settings.events_max_bytes // first[subjects.EVENTS_STREAM]
            assert share > 1
            assert first[subjects.REQUESTS_STREAM] == settings.requests_max_bytes // share
            assert sum(first.values()) <= 300 * 1000**2
            assert first[subjects.EVENTS_STREAM] >= 2 * settings.events_reserve_bytes
            await ensure_streams(js, settings)
            assert {n: (await js.stream_info(n)).config.max_bytes or 0 for n in STREAMS} == first
        finally:
            await nc.close()
    finally:
        proc.stop()
