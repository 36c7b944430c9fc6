"""Conversations (the history service's projection), always scoped to the caller: another
user's conversation and a missing one are the same 404."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from llmchat_chat.api.deps import CallerDep, HistoryDep
from llmchat_chat.conversations import conversation_id
from llmchat_common.history_contracts import (
    MAX_PAGE,
    MAX_TITLE_CHARS,
    Conversation,
    ConversationPage,
    ConversationRef,
    ConversationSummary,
    DbText,
    Deleted,
    ExportConversation,
    Exported,
    ListConversations,
    RenameConversation,
)

router = APIRouter(tags=["conversations"])


class ConversationPatch(BaseModel):
    title: DbText = Field(min_length=1, max_length=MAX_TITLE_CHARS)


@router.get("/v1/conversations")
async def list_conversations(
    caller: CallerDep,
    history: HistoryDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=500, description="full-text search")] = None,
) -> ConversationPage:
    """Newest first; `next_cursor` fetches the next page."""
    request = ListConversations(user_id=caller.user_id, limit=limit, cursor=cursor, q=q or None)
    return await history.call("list", request, ConversationPage)


@router.get("/v1/conversations/{cid}")
async def get_conversation(cid: str, caller: CallerDep, history: HistoryDep) -> Conversation:
    ref = ConversationRef(user_id=caller.user_id, conversation_id=conversation_id(cid))
    return await history.call("get", ref, Conversation)


@router.patch("/v1/conversations/{cid}")
async def rename_conversation(
    cid: str, body: ConversationPatch, caller: CallerDep, history: HistoryDep
) -> ConversationSummary:
    request = RenameConversation(
        user_id=caller.user_id, conversation_id=conversation_id(cid), title=body.title
    )
    return await history.call("rename", request, ConversationSummary)


@router.delete("/v1/conversations/{cid}")
async def delete_conversation(cid: str, caller: CallerDep, history: HistoryDep) -> Deleted:
    """The conversation and all its messages go; answers still running are dropped when they end."""
    ref = ConversationRef(user_id=caller.user_id, conversation_id=conversation_id(cid))
    return await history.call("delete", ref, Deleted)


@router.get(
    "/v1/conversations/{cid}/export",
    response_class=Response,
    responses={
        200: {
            "description": "a download: the conversation as JSON (what GET returns) or Markdown",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/markdown": {"schema": {"type": "string"}},
            },
        }
    },
)
async def export_conversation(
    cid: str,
    caller: CallerDep,
    history: HistoryDep,
    format: Literal["json", "markdown"] = "json",
) -> Response:
    request = ExportConversation(user_id=caller.user_id, conversation_id=conversation_id(cid), format=format)
    exported = await history.call("export", request, Exported)
    return Response(
        exported.content,
        media_type=exported.media_type,
        headers={"Content-Disposition": f'attachment; filename="{exported.filename}"'},
    )
