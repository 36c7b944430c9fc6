"""The RPC operations' logic (no framework imports): always scoped to the caller named in the
request; another user's conversation and a missing one are the same `not_found`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common.contracts import ToolCall
from llmchat_common.history_contracts import (
    Conversation,
    ConversationPage,
    ConversationRef,
    ConversationSummary,
    Deleted,
    Erased,
    EraseUser,
    ExportConversation,
    Exported,
    ListConversations,
    Message,
    MessageUsage,
    Owned,
    RenameConversation,
    RequestRef,
    StoredResponse,
)
from llmchat_common.rpc import InvalidRequest, NotFound
from llmchat_history import repository as repo
from llmchat_history.rendering import decode_cursor, encode_cursor, export


class Pong(BaseModel):
    model_config = ConfigDict(frozen=True)
    ok: bool = True


def utcnow() -> datetime:
    return datetime.now(UTC)


def summary(row: Any) -> ConversationSummary:
    return ConversationSummary(
        id=row.id,
        title=row.title,
        title_source=row.title_source,
        model=row.model,
        message_count=row.message_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def message(row: Any) -> Message:
    usage = None
    if row.role == "assistant":
        prompt, completion = row.prompt_tokens or 0, row.completion_tokens or 0
        usage = MessageUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
    tool_calls = [ToolCall.model_validate(call) for call in row.tool_calls] if row.tool_calls else None
    return Message(
        request_id=row.request_id,
        role=row.role,
        # An answer that only calls tools is stored as "": OpenAI's shape says null.
        content=None if tool_calls and not row.content else row.content,
        tool_calls=tool_calls,
        tool_call_id=row.tool_call_id,
        status=row.status,
        model=row.model,
        finish_reason=row.finish_reason,
        error=row.error,
        usage=usage,
        trace_id=row.trace_id,
        created_at=row.created_at,
    )


def clean_user_title(title: str) -> str:
    """A user's title on one line, without surrounding blanks; empty is refused."""
    cleaned = " ".join(title.split())
    if not cleaned:
        raise InvalidRequest("invalid request: title: must not be blank")
    return cleaned


class HistoryService:
    def __init__(
        self, engine: AsyncEngine, *, erase_soon: Callable[[], None], clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.engine = engine
        # Wakes the eraser (`Eraser.wake`) once erasures are queued.
        self.erase_soon = erase_soon
        self.clock = clock

    async def ping(self) -> Pong:
        async with self.engine.connect() as conn:
            await repo.ping(conn)
        return Pong()

    async def list(self, req: ListConversations) -> ConversationPage:
        after = decode_cursor(req.cursor) if req.cursor else None
        q = req.q.strip() if req.q else None
        async with self.engine.connect() as conn:
            rows = await repo.list_conversations(
                conn, req.user_id, limit=req.limit + 1, after=after, q=q or None
            )
        page = rows[: req.limit]
        more = len(rows) > req.limit
        cursor = encode_cursor(page[-1].updated_at, page[-1].id) if more and page else None
        return ConversationPage(data=[summary(r) for r in page], next_cursor=cursor)

    async def get(self, req: ConversationRef) -> Conversation:
        # One snapshot: the summary's count and the messages agree.
        async with self.engine.connect() as conn, conn.begin():
            await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = await repo.conversation(conn, req.user_id, req.conversation_id)
            if row is None:
                raise NotFound("conversation not found")
            rows = await repo.conversation_messages(conn, req.conversation_id)
        return Conversation(
            **summary(row).model_dump(),
            system_prompt=row.system_prompt,
            messages=[message(r) for r in rows],
        )

    async def check(self, req: ConversationRef) -> Owned:
        async with self.engine.connect() as conn:
            row = await repo.conversation(conn, req.user_id, req.conversation_id)
        if row is None:
            raise NotFound("conversation not found")
        return Owned(id=row.id)

    async def rename(self, req: RenameConversation) -> ConversationSummary:
        title = clean_user_title(req.title)
        async with self.engine.begin() as conn:
            if not await repo.rename(conn, req.user_id, req.conversation_id, title, self.clock()):
                raise NotFound("conversation not found")
            row = await repo.conversation(conn, req.user_id, req.conversation_id)
        return summary(row)

    async def delete(self, req: ConversationRef) -> Deleted:
        """Deleting forgets: in one transaction the conversation becomes a tombstone, its
        messages go, and its requests (its title's too) are queued for erasure from the event
        log, which the eraser does once each has ended (`erasing.py`)."""
        async with self.engine.begin() as conn:
            # Read first: the delete clears the messages (and checks the owner).
            request_ids = await repo.request_ids(conn, req.conversation_id)
            if not await repo.delete_conversation(conn, req.user_id, req.conversation_id, self.clock()):
                raise NotFound("conversation not found")
            await repo.queue_erasures(conn, request_ids, self.clock())
        self.erase_soon()
        return Deleted(id=req.conversation_id)

    async def erase_user(self, req: EraseUser) -> Erased:
        """Everything of the user's, as `delete` does for one conversation: all their
        conversations, and the requests named (the user's others); idempotent."""
        async with self.engine.begin() as conn:
            request_ids = [*await repo.user_request_ids(conn, req.user_id), *req.request_ids]
            conversations = await repo.erase_user(conn, req.user_id, self.clock())
            await repo.queue_erasures(conn, request_ids, self.clock())
        self.erase_soon()
        return Erased(conversations=conversations, requests=len(set(request_ids)))

    async def forget_request(self, req: RequestRef) -> Deleted:
        """One request (a deleted response): its turn's messages go, and it is queued for
        erasure from the event log; a turn projected later is dropped (`projection`). A
        conversation left without messages is deleted as `delete` does (so that a replay of the
        log, which no longer has the request, gives the same rows)."""
        async with self.engine.begin() as conn:
            request_ids = [req.request_id]
            emptied = await repo.delete_request_messages(conn, req.user_id, req.request_id)
            if emptied is not None:
                request_ids += await repo.request_ids(conn, emptied)
                await repo.delete_conversation(conn, req.user_id, emptied, self.clock())
            await repo.queue_erasures(conn, request_ids, self.clock())
        self.erase_soon()
        return Deleted(id=req.request_id)

    async def response_get(self, req: RequestRef) -> StoredResponse:
        async with self.engine.connect() as conn:
            terminal = await repo.stored_response(conn, req.user_id, req.request_id)
        if terminal is None:
            raise NotFound("response not found")
        return StoredResponse(terminal=terminal)

    async def export(self, req: ExportConversation) -> Exported:
        conversation = await self.get(
            ConversationRef(user_id=req.user_id, conversation_id=req.conversation_id)
        )
        return export(conversation, req.format)
