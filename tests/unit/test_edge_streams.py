"""A streamed answer whose client leaves before its body starts still cancels and settles:
Starlette (ASGI 2.3, what uvicorn speaks) cancels the body's task before the generator runs, so
the generator's own cleanup would never run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from llmchat_chat.api.chat import AbandonableStream

pytestmark = pytest.mark.asyncio


async def body(cleaned: list[str]) -> AsyncIterator[bytes]:
    try:
        yield b"data: one\n\n"
        yield b"data: two\n\n"
    finally:
        cleaned.append("generator")


async def serve(response: AbandonableStream, *, leave_at_once: bool) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []
    left = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not leave_at_once:
            await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        await asyncio.sleep(0.01)  # the network: the disconnect is noticed meanwhile
        if message.get("more_body") is False:
            left.set()

    scope = {"type": "http", "asgi": {"spec_version": "2.3"}, "method": "POST", "path": "/"}
    await response(scope, receive, send)
    return sent


async def test_a_client_gone_before_the_first_chunk_runs_the_abandoned_cleanup() -> None:
    cleaned: list[str] = []
    response = AbandonableStream(
        body(cleaned), abandoned=lambda: cleaned.append("abandoned"), media_type="text/event-stream"
    )
    sent = await serve(response, leave_at_once=True)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert cleaned == ["abandoned"]


async def test_a_stream_that_ran_cleans_up_once_by_itself() -> None:
    cleaned: list[str] = []
    response = AbandonableStream(
        body(cleaned), abandoned=lambda: cleaned.append("abandoned"), media_type="text/event-stream"
    )
    sent = await serve(response, leave_at_once=False)
    assert b"".join(m.get("body", b"") for m in sent) == b"data: one\n\ndata: two\n\n"
    assert cleaned == ["generator"]


def test_a_token_without_text_still_streams_its_log_probability() -> None:
    """A delta of tokens whose character is not complete yet has no text, but its log
    probabilities must reach the client (one per token, whatever the coalescing did)."""
    import time

    from llmchat_chat.api.chat_stream import ChoiceStream
    from llmchat_chat.api.openai_format import ChunkWriter
    from llmchat_common.contracts import ChatMessage, ChatRequested, Delta, TokenLogprob

    request = ChatRequested(
        request_id="chatcmpl-x",
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        created_at=time.time(),
        deadline=time.time() + 60,
    )
    stream = ChoiceStream(ChunkWriter("chatcmpl-x", "m", 0, False, None), request, 0)
    base: dict[str, Any] = {"request_id": "chatcmpl-x", "attempt": 1, "worker_id": "w", "ts": 0.0}
    empty = Delta(**base, seq=1, text="", token_ids=[7], logprobs=[TokenLogprob(token="", logprob=-1.5)])
    full = Delta(**base, seq=2, text="é", token_ids=[8], logprobs=[TokenLogprob(token="é", logprob=-0.5)])
    stream.current(empty)
    chunks = [*stream.delta(empty), *stream.delta(full)]
    import json

    entries = [e for c in chunks for e in json.loads(c)["choices"][0]["logprobs"]["content"]]
    assert [(e["token"], e["logprob"]) for e in entries] == [("", -1.5), ("é", -0.5)]
