"""The history projection of CHAT_EVENTS, and the title requests it leads to.

`HistoryProjection.apply` runs inside the consumer's batch transaction (llmchat_common.projection).
A batch that completes the answer of a conversation's opening exchange (its first user message
and an answer that says something) also marks the conversation `title_requested` in that
transaction and leaves a `TitleJob` in `pending`; the `TitlePublisher` publishes those jobs
once the batch has committed, before it acks. So a title is requested only for committed
history, at most once per conversation (the mark), and a re-sent publish is a no-op
(Nats-Msg-Id = `title-<conversation>`). A publish that fails releases the mark: the
conversation's next completed answer asks again. Only `chat` turns are stored (mapping.py), so
nothing else ever leads to a title request.

A title request belongs to the trace of the batch that marked it (the consumer's batch span is
current when the publisher runs): its publish is a producer span there, the request carries that
context in its headers and the trace id in its body, like a request from the edge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llmchat_common import subjects
from llmchat_common.projection import StoredEvent
from llmchat_common.publish import LEADER_ELECTION_S
from llmchat_common.telemetry import publish_traced, trace_id_of
from llmchat_history import repository as repo
from llmchat_history.mapping import ConversationUpsert, plan_batch
from llmchat_history.titles import title_request

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class TitleJob:
    conversation_id: str
    user_id: str
    model: str
    first_user_message: str
    first_answer: str


class HistoryProjection:
    """Conversations and messages from `started` and terminal events (see mapping.py for the
    merge rules). `titles`: mark conversations for a title request (live and replay alike, so
    their rows agree); `collect`: also prepare the jobs to publish (live only)."""

    name = "history"
    event_types: tuple[str, ...] = ("started", "completed", "failed", "cancelled")

    def __init__(
        self,
        *,
        titles: bool = True,
        collect: bool = True,
        title_model: str | None = None,
        erase_late: bool = False,
    ) -> None:
        self.titles = titles
        self.collect = collect
        self.title_model = title_model
        # Queue for erasure the requests whose events name a deleted conversation (a turn that
        # ran on after the delete, a request queued before it); not when replaying.
        self.erase_late = erase_late
        # The jobs of the last `apply`; only read after its transaction committed.
        self.pending: list[TitleJob] = []

    async def apply(self, conn: AsyncConnection, events: Sequence[StoredEvent]) -> None:
        self.pending = []  # a retried batch starts over: only the committed attempt counts
        # Requests deleted (a response on its own, or with a conversation) before these events
        # of theirs were projected: nothing of them is stored again, not even a conversation.
        gone = await repo.erasing(conn, list({e.event.request_id for e in events}))
        if gone:
            events = [e for e in events if e.event.request_id not in gone]
        plan = plan_batch(events)
        # One statement for the first share of each id; a second owner claiming the same id
        # in this batch (rare: a forged id) gets statements of its own, after it.
        firsts: dict[str, ConversationUpsert] = {}
        rest: list[ConversationUpsert] = []
        for conv in plan.conversations:
            if conv.id in firsts:
                rest.append(conv)
            else:
                firsts[conv.id] = conv
        accepted = await repo.upsert_conversations(conn, list(firsts.values()))
        for conv in rest:
            accepted |= await repo.upsert_conversations(conn, [conv])
        dropped = [conv for conv in plan.conversations if (conv.id, conv.user_id) not in accepted]
        for conv in dropped:
            # No content in the log line: it is someone's conversation text.
            log.warning(
                "events for a conversation of another user or a deleted one dropped",
                extra={"conversation_id": conv.id},
            )
        if dropped and self.erase_late:
            await self._erase_late(conn, events, [conv.id for conv in dropped])
        inputs, answers = plan.messages_of(accepted)
        await repo.upsert_responses(
            conn,
            [row for row in plan.responses.values() if (row["conversation_id"], row["user_id"]) in accepted],
        )
        await repo.insert_inputs(conn, inputs)
        completed = await repo.insert_answers(conn, answers)
        for answer in plan.titles:
            await repo.set_model_title(conn, answer)
        if self.titles and completed:
            await self._claim_titles(conn, completed)

    async def _erase_late(
        self, conn: AsyncConnection, events: Sequence[StoredEvent], conversation_ids: list[str]
    ) -> None:
        """Events of a deleted conversation (of its owner's): their requests are queued for
        erasure in this batch's transaction (the eraser waits for them to end)."""
        deleted = await repo.deleted_conversations(conn, conversation_ids)
        late = [e.request_id for e in events if (e.event.conversation_id, e.event.user_id) in deleted]
        if late:
            # Queued at the time of the events (a replayed batch queues them at the same time).
            at = datetime.fromtimestamp(max(e.event.ts for e in events), UTC)
            await repo.queue_erasures(conn, late, at)

    async def _claim_titles(self, conn: AsyncConnection, conversation_ids: list[str]) -> None:
        # Only a conversation with an opening exchange to name it from is marked: one whose
        # first turns are tool turns (no user message yet) or answers that only call tools
        # waits for its next completed answer instead of spending its one request on nothing.
        openings = await repo.opening_exchanges(conn, conversation_ids)
        claimed = await repo.claim_title_requests(conn, list(openings))
        if not self.collect or not claimed:
            return
        for row in claimed:
            model = self.title_model or row.model
            opening = openings.get(row.id)
            if model is None or opening is None or not _token_safe(row.id):
                continue
            self.pending.append(TitleJob(row.id, row.user_id, model, *opening))

    def take_pending(self) -> list[TitleJob]:
        jobs, self.pending = self.pending, []
        return jobs


def _token_safe(conversation_id: str) -> bool:
    try:
        subjects.check_token(f"title-{conversation_id}")
    except ValueError:
        return False
    return True


class TitlePublisher:
    """The consumer's post-commit step (`ProjectionConsumer(after_commit=...)`): publish the
    title requests the committed batch marked."""

    def __init__(
        self,
        js: JetStreamContext,
        engine: AsyncEngine,
        projection: HistoryProjection,
        *,
        title_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._history = projection
        self._js_ctx = js
        self._engine_ref = engine
        self._title_timeout_s = title_timeout_s
        self._clock = clock
        self.titles_published = 0

    async def publish_pending(self) -> None:
        # Committed: the marks are durable, so the requests may go out.
        for job in self._history.take_pending():
            await self._publish(job)

    async def _publish(self, job: TitleJob) -> None:
        now = self._clock()
        request = title_request(
            trace_id=trace_id_of() or None,
            conversation_id=job.conversation_id,
            user_id=job.user_id,
            model=job.model,
            first_user_message=job.first_user_message,
            first_answer=job.first_answer,
            now=now,
            timeout_s=self._title_timeout_s,
        )
        payload = request.model_dump_json().encode()
        subject = subjects.request_subject(request.model)
        try:
            await self._send(subject, payload, request.request_id)
            self.titles_published += 1
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - released: the conversation keeps its fallback title
            log.warning(
                "title request publish failed",
                extra={"conversation_id": job.conversation_id, "error": type(exc).__name__},
            )
        await self._release(job.conversation_id)

    async def _send(self, subject: str, payload: bytes, request_id: str) -> None:
        await publish_traced(
            self._js_ctx,
            subject,
            payload,
            msg_id=request_id,
            timeout_s=PUBLISH_TIMEOUT_S,
            retry_s=LEADER_ELECTION_S,
            attributes={"llmchat.request_id": request_id},
        )

    async def _release(self, conversation_id: str) -> None:
        try:
            async with self._engine_ref.begin() as conn:
                await repo.release_title_request(conn, conversation_id)
        except Exception as exc:  # noqa: BLE001 - the conversation keeps its fallback title
            log.warning(
                "title request could not be released",
                extra={"conversation_id": conversation_id, "error": type(exc).__name__},
            )
