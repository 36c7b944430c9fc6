"""Which conversation a chat turn joins: a new one, or one of the caller's own.

The history service is the authority, but it learns of a conversation only once the first
turn's events are projected; a client that sends the next turn at once could otherwise be told
its fresh conversation does not exist. So the edge remembers the ids it issued (Redis, shared
by every edge, for an hour) and asks history only about the others. When history is
unavailable the turn is accepted: the projection itself drops turns on another user's or a
deleted conversation.
"""

from __future__ import annotations

import logging
import uuid

from redis.asyncio import Redis

from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import NotFound, ServiceUnavailable
from llmchat_common.history_contracts import ConversationRef, Owned

log = logging.getLogger(__name__)

ISSUED_TTL_S = 3600


def conversation_id(value: str) -> str:
    """Conversation ids are UUIDs (the edge makes them); anything else cannot exist."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound("conversation not found", code="conversation_not_found") from None


def _key(cid: str) -> str:
    return f"llmchat:conversation:{cid}"


class ConversationGuard:
    def __init__(self, history: ServiceClient, redis: Redis) -> None:
        self._history = history
        self._redis = redis

    async def resolve(self, wanted: str | None, user_id: str) -> str:
        if wanted is None:
            cid = str(uuid.uuid4())
            try:
                await self._redis.set(_key(cid), user_id, ex=ISSUED_TTL_S)
            except Exception as exc:  # noqa: BLE001 - history answers for it once projected
                log.warning("conversation id not cached", extra={"error": type(exc).__name__})
            return cid
        try:
            cid = conversation_id(wanted)
        except NotFound:
            raise self._missing() from None
        try:
            issued_to = await self._redis.get(_key(cid))
        except Exception:  # noqa: BLE001 - ask history instead
            issued_to = None
        if issued_to is not None:
            if issued_to.decode() != user_id:
                raise self._missing()
            return cid
        try:
            await self._history.call("check", ConversationRef(user_id=user_id, conversation_id=cid), Owned)
        except ServiceUnavailable:
            log.warning("history unavailable; conversation not checked", extra={"conversation_id": cid})
        except NotFound:
            raise self._missing() from None
        return cid

    @staticmethod
    def _missing() -> NotFound:
        return NotFound("conversation not found", param="conversation_id", code="conversation_not_found")
