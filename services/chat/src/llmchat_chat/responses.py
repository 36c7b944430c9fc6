"""Where a response is read from, at any edge: the event log first (its latest `started` and
terminal events carry its facts), then, for a background response not started yet, the edge
that queued it (Redis, as for any job), and past the log's retention the history service's
projection (`history.responses`: its terminal event as the log had it). The Response is rendered
from these the same way whatever the source (`api.responses_format`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from llmchat_chat.api.responses_format import ResponseView, Terminal
from llmchat_chat.backends import ServiceClient
from llmchat_chat.errors import ApiError, NotFound, ServiceUnavailable
from llmchat_chat.jobs import JobDirectory
from llmchat_chat.service import ChatService
from llmchat_common import subjects
from llmchat_common.contracts import Cancelled, Completed, Failed, ResponseFacts, parse_event
from llmchat_common.history_contracts import Deleted, RequestRef, StoredResponse

# How long cancel and delete wait for a running response to end, or to be erased.
END_WAIT_S = 10.0


def not_found(param: str | None = None) -> NotFound:
    return NotFound("response not found", param=param, code="response_not_found")


class ResponseDirectory:
    def __init__(self, service: ChatService, jobs: JobDirectory, history: ServiceClient) -> None:
        self._service = service
        self._jobs = jobs
        self._history = history

    async def find(self, response_id: str, user_id: str) -> ResponseView:
        """The user's stored response, or 404 (another user's, one stored with `store: false`,
        one deleted)."""
        try:
            subjects.check_token(response_id)
        except ValueError:
            raise not_found() from None
        state = await self._service.job_state(response_id)
        event = state.terminal or state.started
        if event is not None:
            if event.user_id != user_id or event.response is None or event.model is None:
                raise not_found()
            view = self._view(response_id, event.model, event.created_at or event.ts, event.response)
            if state.started is not None:
                view.saw(state.started)
            if state.terminal is not None:
                view.saw(state.terminal)
            return view
        pending = await self._jobs.pending(response_id)
        if pending is not None:
            if pending.user_id != user_id or pending.response is None:
                raise not_found()
            view = self._view(response_id, pending.model, pending.created_at, pending.response)
            if await self._service.cancel_requested(response_id):
                # Cancelled before a worker took it: it ends so (the worker that pulls it
                # publishes the same), and a replay shows that end.
                view.saw(
                    Cancelled(
                        request_id=response_id,
                        attempt=1,
                        seq=0,
                        worker_id="",
                        ts=time.time(),
                        reason="client",
                        user_id=user_id,
                        model=pending.model,
                        created_at=pending.created_at,
                        response=pending.response,
                    )
                )
            return view
        terminal = await self._stored(response_id, user_id)
        if terminal is None or terminal.response is None or terminal.model is None:
            raise not_found()
        view = self._view(response_id, terminal.model, terminal.created_at or terminal.ts, terminal.response)
        view.saw(terminal)
        return view

    @staticmethod
    def _view(response_id: str, model: str, created_at: float, facts: ResponseFacts) -> ResponseView:
        if not facts.store:
            raise not_found()
        return ResponseView(response_id, model, created_at, facts)

    async def _stored(self, response_id: str, user_id: str) -> Terminal | None:
        try:
            subjects.check_token(response_id)
            stored = await self._history.call(
                "response_get", RequestRef(user_id=user_id, request_id=response_id), StoredResponse
            )
        except (ValueError, NotFound):
            return None
        event = parse_event(orjson.dumps(stored.terminal))
        return event if isinstance(event, Completed | Failed | Cancelled) else None

    async def chain(self, previous: str, user_id: str) -> tuple[list[dict[str, Any]], str | None]:
        """The items of the chain that ends with response `previous` (oldest first: each
        response's input items, then its output), and the conversation it is stored in."""
        param = "previous_response_id"
        segments: list[list[dict[str, Any]]] = []
        conversation: str | None = None
        current: str | None = previous
        while current is not None:
            try:
                view = await self.find(current, user_id)
            except NotFound:
                if current == previous:
                    raise not_found(param) from None
                raise NotFound(
                    f"response {current!r} of the chain before {previous!r} no longer exists",
                    param=param,
                    code="response_not_found",
                ) from None
            if view.terminal is None:
                raise ApiError(f"the response {current!r} is still in progress", param=param)
            if current == previous:
                conversation = view.terminal.conversation_id
            segments.append(view.facts.input + view.output)
            current = view.facts.previous_response_id
        return [item for segment in reversed(segments) for item in segment], conversation

    async def wait_end(self, response_id: str, user_id: str) -> ResponseView:
        """The response once it has ended, or as it is after `END_WAIT_S`."""
        deadline = time.monotonic() + END_WAIT_S
        while True:
            view = await self.find(response_id, user_id)
            if view.ended or time.monotonic() > deadline:
                return view
            await asyncio.sleep(0.2)

    async def forget(self, response_id: str, user_id: str) -> None:
        """Deleting forgets (a running response is cancelled first): its turn leaves its
        conversation and its stored copy goes at once, and the history service's eraser erases
        its request and events from the log once it has ended, as for a deleted conversation.
        Returns once the log no longer has it (or after `END_WAIT_S`: the erasure is queued,
        and happens)."""
        view = await self.find(response_id, user_id)
        if not view.ended:
            await self._service.cancel(response_id, "client")
        await self._history.call(
            "forget_request", RequestRef(user_id=user_id, request_id=response_id), Deleted
        )
        await self._jobs.forget(response_id)
        deadline = time.monotonic() + END_WAIT_S
        while time.monotonic() < deadline:
            try:
                state = await self._service.job_state(response_id)
            except ServiceUnavailable:
                # A direct get racing the eraser's deletes may fail: the delete itself is done
                # (history has queued the erasure), so the client is not told to try again.
                await asyncio.sleep(0.1)
                continue
            if state.started is None and state.terminal is None:
                return
            await asyncio.sleep(0.1)
