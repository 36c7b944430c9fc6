"""The Files and Batch APIs through the official `openai` SDK, against the whole platform on the
random test model: files are kept in the object store and seen only by their owner; a batch's
lines run through the log (one request each, counted once), its output and error files hold
exactly one line per input line in OpenAI's JSONL shape, cancel keeps the finished lines, and
the batch survives the coordinator (history) and a worker killed while it runs."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from llmchat_history.batches import BatchLinesProjection
from nats.js.errors import NotFoundError
from openai import AsyncOpenAI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from llmchat_common import subjects
from llmchat_common.contracts import Completed, Started, Timings, Usage
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge, start_history, start_worker, wait_for_worker
from llmchat_common.launch.stack import LocalStack
from llmchat_common.projection import StoredEvent
from tests.conftest import FILE_CAP_BYTES, HISTORY_ENV, MAIN_MODEL, ROOMY_LIMITS, SHORT_WINDOW
from tests.helpers import connect_nats, eventually, register_account

GREEDY: dict[str, Any] = {"model": MAIN_MODEL, "temperature": 0}
ENDED = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
async def client(edge_url: str, api_key: str) -> Any:
    async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=120) as c:
        yield c


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, content: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    body = {**GREEDY, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def upload(client: AsyncOpenAI, data: bytes, purpose: Any = "batch") -> str:
    created = await client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose=purpose)
    return created.id


async def ended(client: AsyncOpenAI, batch_id: str, timeout: float = 240) -> Any:
    async def done() -> Any:
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    return await eventually(done, timeout=timeout, what=f"batch {batch_id} to end")


async def lines_of(client: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


async def usage_of(stack: LocalStack, batch_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        return list(
            await conn.fetch(
                "SELECT request_id, status FROM usage.requests WHERE request_id LIKE $1", f"{batch_id}-%"
            )
        )
    finally:
        await conn.close()


async def test_files_are_kept_whole_and_seen_only_by_their_owner(
    client: AsyncOpenAI, edge_url: str, auth_headers: dict[str, str]
) -> None:
    data = bytes(range(256)) * 3000  # several chunks of the object store
    created = await client.files.create(file=("blob.bin", io.BytesIO(data)), purpose="user_data")
    assert created.bytes == len(data) and created.purpose == "user_data" and created.filename == "blob.bin"
    assert (await client.files.retrieve(created.id)).bytes == len(data)
    assert (await client.files.content(created.id)).content == data
    listed = [f.id async for f in client.files.list(purpose="user_data")]
    assert created.id in listed

    other = register_account(edge_url)
    async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=other.api_key, max_retries=0) as stranger:
        with pytest.raises(openai.NotFoundError):
            await stranger.files.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await stranger.files.content(created.id)
        assert created.id not in [f.id async for f in stranger.files.list()]
        # A batch on another user's file: 404 naming the field.
        with pytest.raises(openai.NotFoundError) as theirs:
            await stranger.batches.create(
                input_file_id=created.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert theirs.value.body["param"] == "input_file_id"  # type: ignore[index]

    deleted = await client.files.delete(created.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(created.id)

    # Bad uploads: a wrong purpose, no file, and a body over the cap (refused by its length).
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as http:
        wrong = await http.post(
            "/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"}
        )
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
        missing = await http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("x", b"1")})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
        # Over the cap: refused by its declared length, and while read when sent chunked.
        over = b"x" * (FILE_CAP_BYTES + 1)
        huge = await http.post("/v1/files", files={"file": ("big.jsonl", over)}, data={"purpose": "batch"})
        assert huge.status_code == 413, huge.text

        async def chunked() -> Any:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
            for _ in range(5):
                yield b"y" * (1024 * 1024)
            yield b"\r\n--b--\r\n"

        streamed = await http.post(
            "/v1/files",
            content=chunked(),
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413, streamed.text


async def test_a_chat_batch_runs_every_line_once(client: AsyncOpenAI, stack: LocalStack) -> None:
    good = [chat_line(f"q{i}", f"Question {i}") for i in range(12)]
    bad = [
        {"custom_id": "q3", **{k: v for k, v in chat_line("x", "dup").items() if k != "custom_id"}},
        {"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": good[0]["body"]},
        {"custom_id": "no-model", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}},
    ]
    data = jsonl(good[:5] + bad[:1]) + b"{not json\n" + jsonl(good[5:] + bad[1:])
    file_id = await upload(client, data)
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v"}
    )
    assert batch.status == "validating" and batch.metadata == {"k": "v"}
    batch = await ended(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        16,
        12,
        4,
    )
    assert batch.in_progress_at and batch.completed_at and batch.finalizing_at

    outputs = await lines_of(client, batch.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"q{i}" for i in range(12))
    reference = await client.chat.completions.create(
        messages=[{"role": "user", "content": "Question 7"}], max_tokens=8, **GREEDY
    )
    by_id = {o["custom_id"]: o for o in outputs}
    seventh = by_id["q7"]
    assert seventh["error"] is None and seventh["response"]["status_code"] == 200
    body = seventh["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == MAIN_MODEL
    assert body["choices"][0]["message"]["content"] == reference.choices[0].message.content
    assert body["usage"]["completion_tokens"] == reference.usage.completion_tokens

    errors = await lines_of(client, batch.error_file_id)
    codes = sorted(e["error"]["code"] for e in errors)
    assert codes == ["duplicate_custom_id", "invalid_json", "invalid_request", "invalid_url"], errors
    assert all(e["response"] is None for e in errors)
    # Each line that ran was one request, counted once.
    rows = await usage_of(stack, batch.id)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"completed"}
    # The object that carried the prepared lines is gone once the batch was read after loading.
    nc = await connect_nats(stack.env())
    try:
        store = await nc.jetstream().object_store(subjects.FILES_BUCKET)
        with pytest.raises(NotFoundError):
            await store.get_info(f"{batch.id}-lines")
    finally:
        await nc.close()

    assert batch.id in [b.id async for b in client.batches.list(limit=5)]
    file_info = await client.files.retrieve(batch.output_file_id)
    assert file_info.purpose == "batch_output" and file_info.bytes > 0


async def test_completions_and_responses_batches(client: AsyncOpenAI) -> None:
    lines = [
        {
            "custom_id": "c1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {**GREEDY, "prompt": "Once upon a time", "max_tokens": 6},
        },
        {
            "custom_id": "c2",
            "method": "POST",
            "url": "/v1/completions",
            "body": {**GREEDY, "prompt": ["a", "b"], "max_tokens": 6},
        },
    ]
    batch = await client.batches.create(
        input_file_id=await upload(client, jsonl(lines)), endpoint="/v1/completions", completion_window="24h"
    )
    batch = await ended(client, batch.id)
    [output] = await lines_of(client, batch.output_file_id)
    reference = await client.completions.create(prompt="Once upon a time", max_tokens=6, **GREEDY)
    assert output["response"]["body"]["object"] == "text_completion"
    assert output["response"]["body"]["choices"][0]["text"] == reference.choices[0].text
    [error] = await lines_of(client, batch.error_file_id)
    assert error["custom_id"] == "c2" and error["error"]["param"] == "body.prompt"

    responses = [
        {
            "custom_id": "r1",
            "method": "POST",
            "url": "/v1/responses",
            "body": {**GREEDY, "input": "Say hi", "max_output_tokens": 6, "store": False},
        }
    ]
    batch = await client.batches.create(
        input_file_id=await upload(client, jsonl(responses)),
        endpoint="/v1/responses",
        completion_window="24h",
    )
    batch = await ended(client, batch.id)
    [output] = await lines_of(client, batch.output_file_id)
    body = output["response"]["body"]
    direct = await client.responses.create(input="Say hi", max_output_tokens=6, store=False, **GREEDY)
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"] == direct.output_text


async def test_an_embeddings_batch(client: AsyncOpenAI, embedding_model: str) -> None:
    lines = [
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": embedding_model, "input": ["hello world", "batch"]},
        },
        {
            "custom_id": "e2",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MAIN_MODEL, "input": "a chat model"},
        },
    ]
    batch = await client.batches.create(
        input_file_id=await upload(client, jsonl(lines)), endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = await ended(client, batch.id)
    [output] = await lines_of(client, batch.output_file_id)
    body = output["response"]["body"]
    direct = await client.embeddings.create(model=embedding_model, input=["hello world", "batch"])
    assert body["object"] == "list" and len(body["data"]) == 2
    assert body["data"][1]["embedding"] == pytest.approx(direct.data[1].embedding, abs=1e-5)
    [error] = await lines_of(client, batch.error_file_id)
    assert error["custom_id"] == "e2" and error["error"]["param"] == "body.model"


async def test_bad_batches_are_refused(client: AsyncOpenAI) -> None:
    file_id = await upload(client, jsonl([chat_line("a", "hi")]))
    with pytest.raises(openai.BadRequestError) as endpoint:
        await client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/moderations",
            completion_window="24h",
        )
    assert endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as window:
        await client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="1h",  # type: ignore[arg-type]
        )
    assert window.value.body["param"] == "completion_window"  # type: ignore[index]
    data_file = await upload(client, jsonl([chat_line("a", "hi")]), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as purpose:
        await client.batches.create(
            input_file_id=data_file, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert purpose.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_00000000000000000000000000000000")

    # Every line refused: the batch fails, naming them.
    refused = await upload(
        client, b"[1]\n" + jsonl([{"custom_id": "z", "method": "GET", "url": "x", "body": {}}])
    )
    batch = await client.batches.create(
        input_file_id=refused, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await ended(client, batch.id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json", 1), ("invalid_method", 2)]


async def test_cancel_keeps_the_finished_lines(client: AsyncOpenAI, stack: LocalStack) -> None:
    lines = [chat_line(f"long{i}", f"Go on {i}", max_tokens=1500, ignore_eos=True) for i in range(80)]
    batch = await client.batches.create(
        input_file_id=await upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    async def some_done() -> bool:
        counts = (await client.batches.retrieve(batch.id)).request_counts
        return counts is not None and counts.completed >= 1

    await eventually(some_done, timeout=180, what="a first line to finish")
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    final = await ended(client, batch.id)
    assert final.status == "cancelled" and final.cancelled_at and final.cancelling_at
    outputs = await lines_of(client, final.output_file_id)
    errors = await lines_of(client, final.error_file_id)
    assert outputs and errors
    ids = [o["custom_id"] for o in outputs + errors]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)  # each line once
    assert {e["error"]["code"] for e in errors} <= {"batch_cancelled", "batch_not_run"}
    # Lines that ran were counted once each; those never run are not in usage.
    rows = await usage_of(stack, batch.id)
    ran = [e for e in errors if e["error"]["code"] == "batch_cancelled"]
    assert len(rows) == len(outputs) + len(ran)
    assert (await client.batches.cancel(batch.id)).status == "cancelled"  # an ended batch, as it is


async def test_a_batch_past_its_window_expires_with_its_partial_output(client: AsyncOpenAI) -> None:
    short = [chat_line(f"short{i}", f"Hi {i}", max_tokens=4) for i in range(4)]
    long = [chat_line(f"long{i}", f"Go on {i}", max_tokens=1500, ignore_eos=True) for i in range(60)]
    batch = await client.batches.create(
        input_file_id=await upload(client, jsonl(short + long)),
        endpoint="/v1/chat/completions",
        completion_window=SHORT_WINDOW,  # type: ignore[arg-type]
    )
    final = await ended(client, batch.id, timeout=180)
    assert final.status == "expired" and final.expired_at and final.finalizing_at
    outputs = await lines_of(client, final.output_file_id)
    errors = await lines_of(client, final.error_file_id)
    assert {o["custom_id"] for o in outputs} >= {f"short{i}" for i in range(4)}
    ids = [line["custom_id"] for line in outputs + errors]
    assert sorted(ids) == sorted(line["custom_id"] for line in short + long)  # each line once
    codes = {e["error"]["code"] for e in errors}
    assert "batch_not_run" in codes and codes <= {"batch_cancelled", "batch_not_run"}


@pytest.mark.timeout(300)
async def test_lines_are_paced_to_the_owners_token_budget(stack: LocalStack, edge_url: str) -> None:
    """An owner with 100 tokens a minute: a line reserves 9 (a 2-character prompt is 1 + 4
    tokens, and 4 to answer), so 11 run in the first minute and the last 3 only after it."""
    tight = {f"LLMCHAT_CHAT_LIMITS__{scope}__USER__TOKENS_PER_MINUTE": "100" for scope in ("USER", "API_KEY")}
    edge, port = start_edge(
        stack, models=[MAIN_MODEL], extra_env={**ROOMY_LIMITS, **tight}, name="chat-paced"
    )
    try:
        account = register_account(f"http://127.0.0.1:{port}")
        async with AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=account.api_key, max_retries=0, timeout=60
        ) as paced:
            lines = [chat_line(f"p{i}", "Hi", max_tokens=4) for i in range(14)]
            batch = await paced.batches.create(
                input_file_id=await upload(paced, jsonl(lines)),
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )

            async def completed() -> int:
                counts = (await paced.batches.retrieve(batch.id)).request_counts
                return counts.completed if counts is not None else 0

            await eventually(lambda: _at_least(completed, 11), timeout=60, what="the first minute's lines")
            await asyncio.sleep(10)
            assert await completed() == 11
            final = await ended(paced, batch.id, timeout=150)
            assert final.status == "completed" and final.request_counts is not None
            assert final.request_counts.completed == 14
            assert final.completed_at is not None and final.in_progress_at is not None
            assert final.completed_at - final.in_progress_at >= 55
    finally:
        edge.stop()


async def _at_least(count: Callable[[], Awaitable[int]], least: int) -> bool:
    return await count() >= least


@pytest.mark.timeout(900)
async def test_a_batch_outlives_its_coordinator_and_a_worker(
    client: AsyncOpenAI, stack: LocalStack, history_service: ManagedProcess, models_dir: Any
) -> None:
    extra, port = start_worker(stack, models_dir=models_dir, name="worker-batch", wait=False)
    replica = start_history(stack, name="history-batch", extra_env=HISTORY_ENV)
    try:
        wait_for_worker(extra, port, timeout=300)
        lines = [chat_line(f"n{i}", f"Line {i}", max_tokens=16) for i in range(1000)]
        batch = await client.batches.create(
            input_file_id=await upload(client, jsonl(lines)),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )

        async def progressed(at_least: int) -> bool:
            counts = (await client.batches.retrieve(batch.id)).request_counts
            return counts is not None and counts.completed >= at_least

        await eventually(lambda: progressed(100), timeout=300, what="100 lines done")
        # One coordinator (history) dies: the replica takes over the ticks...
        history_service.kill()
        await eventually(lambda: progressed(200), timeout=300, what="200 lines done (by the replica)")
        # ... then a worker, mid-line.
        extra.kill()
        history_service.start()
        final = await ended(client, batch.id, timeout=600)
        assert final.status == "completed", final
        outputs = await lines_of(client, final.output_file_id)
        ids = [o["custom_id"] for o in outputs]
        assert len(ids) == 1000 and set(ids) == {line["custom_id"] for line in lines}
        assert final.error_file_id is None
        rows = await usage_of(stack, batch.id)
        assert len(rows) == 1000 and {r["status"] for r in rows} == {"completed"}
    finally:
        extra.stop()
        replica.stop()
        if history_service.poll() is not None:
            history_service.start()


def _line_event(kind: str, request_id: str, attempt: int, text: str = "") -> StoredEvent:
    facts: dict[str, Any] = {
        "request_id": request_id,
        "attempt": attempt,
        "seq": 0,
        "worker_id": f"w{attempt}",
        "ts": 1.0,
        "source": "batch",
    }
    if kind == "started":
        return StoredEvent(Started(**facts, queue_ms=0, prompt_tokens=1), 0, 0.0)
    usage = Usage(prompt_tokens=1, completion_tokens=1)
    done = Completed(**facts, finish_reason="stop", text=text, usage=usage, timings=Timings())
    return StoredEvent(done, 0, 0.0)


async def test_a_line_keeps_its_newest_attempts_outcome(
    stack: LocalStack, history_service: ManagedProcess
) -> None:
    """The fencing rule on real Postgres: a paused ("zombie") attempt's terminal event, stored
    after a newer attempt started, never becomes the line's outcome; a newer attempt started
    after an older one ended makes the line run again."""
    dsn = stack.env()["LLMCHAT_POSTGRES_DSN"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(dsn)
    projection = BatchLinesProjection()
    line = f"batch_{uuid.uuid4().hex}-1"

    async def apply(*events: StoredEvent) -> tuple[str, int, str | None]:
        ordered = [StoredEvent(e.event, n, 0.0) for n, e in enumerate(events, 1)]
        async with engine.begin() as conn:
            await projection.apply(conn, ordered)
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT status, attempt, terminal FROM history.batch_lines WHERE request_id = :r"),
                    {"r": line},
                )
            ).one()
        held = json.loads(row.terminal)["text"] if row.terminal is not None else None
        return row.status, row.attempt, held

    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO history.batch_lines"
                    " (request_id, batch_id, line, status, attempt, cancel_sent, tokens)"
                    " VALUES (:r, 'batch_fence', 1, 'running', 0, false, 0)"
                ),
                {"r": line},
            )
        # One projection batch: attempt 2 started before attempt 1's late terminal event.
        assert await apply(
            _line_event("started", line, 1),
            _line_event("started", line, 2),
            _line_event("completed", line, 1, "zombie"),
        ) == ("running", 2, None)
        # Across batches: the zombie's copy again, then the newest attempt's end.
        assert await apply(_line_event("completed", line, 1, "zombie")) == ("running", 2, None)
        assert await apply(_line_event("completed", line, 2, "newest")) == ("completed", 2, "newest")
        # A third attempt starts after the second ended (an ack lost): the line runs again...
        assert await apply(_line_event("started", line, 3)) == ("running", 3, None)
        assert await apply(_line_event("completed", line, 3, "third")) == ("completed", 3, "third")
        # ... and a redelivered old `started` changes nothing.
        assert await apply(_line_event("started", line, 2)) == ("completed", 3, "third")
    finally:
        await engine.dispose()
