"""SQL of schema `history`, as Core statements on the model tables (so `schema_translate_map`
sends the same statements to a replay target). Functions take the caller's connection: the
projection's batch transaction, or one transaction per RPC operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    MetaData,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from llmchat_history.mapping import ConversationUpsert, TitleAnswer
from llmchat_history.models import conversations as C
from llmchat_history.models import erasures as E
from llmchat_history.models import messages as M
from llmchat_history.models import responses as R
from llmchat_history.titles import title_request_id

# Columns written by statements (the tsvector columns are generated).
CONVERSATION_COLUMNS = [c for c in C.columns if c.computed is None]
MESSAGE_COLUMNS = [c for c in M.columns if c.computed is None]


# -- projection -----------------------------------------------------------------------------------
async def upsert_conversations(
    conn: AsyncConnection, convs: Sequence[ConversationUpsert]
) -> set[tuple[str, str]]:
    """Creates the conversations or merges this batch's shares into them, in one statement.
    Returns the (id, owner) pairs that took; the others belong to another user or were
    deleted, and the caller drops their events. At most one share per id may be in `convs`
    (a statement may not touch a row twice)."""
    if not convs:
        return set()
    base = pg_insert(C).values([c.values() for c in convs])
    ex = base.excluded
    earlier = ex.created_at < C.c.created_at
    later = ex.updated_at >= C.c.updated_at
    renamed_fallback = and_(C.c.title_source == "fallback", earlier)
    stmt = base.on_conflict_do_update(
        index_elements=[C.c.id],
        set_={
            "created_at": func.least(C.c.created_at, ex.created_at),
            "updated_at": func.greatest(C.c.updated_at, ex.updated_at),
            "model": case((later, func.coalesce(ex.model, C.c.model)), else_=C.c.model),
            "system_prompt": case((earlier, ex.system_prompt), else_=C.c.system_prompt),
            "title": case((renamed_fallback, ex.title), else_=C.c.title),
            "title_at": case((renamed_fallback, ex.title_at), else_=C.c.title_at),
        },
        where=and_(C.c.user_id == ex.user_id, C.c.deleted_at.is_(None)),
    ).returning(C.c.id, C.c.user_id)
    return {(r.id, r.user_id) for r in await conn.execute(stmt)}


async def deleted_conversations(conn: AsyncConnection, ids: Sequence[str]) -> set[tuple[str, str]]:
    """The (id, owner) pairs among `ids` that their owner deleted (tombstones)."""
    if not ids:
        return set()
    rows = await conn.execute(
        select(C.c.id, C.c.user_id).where(C.c.id.in_(list(ids)), C.c.deleted_at.is_not(None))
    )
    return {(r.id, r.user_id) for r in rows}


# The primary key: ON CONFLICT names it.
MESSAGE_KEY = [M.c.request_id, M.c.role, M.c.position]


async def insert_inputs(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """The requests' own messages: user messages and tool results."""
    if not rows:
        return
    stmt = pg_insert(M)
    # The same message comes with `started` and with the terminal event: the earliest log
    # position is kept whichever arrives first.
    stmt = stmt.on_conflict_do_update(
        index_elements=MESSAGE_KEY,
        set_={"stream_seq": stmt.excluded.stream_seq},
        where=stmt.excluded.stream_seq < M.c.stream_seq,
    )
    await conn.execute(stmt, list(rows))


async def insert_answers(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Inserts answers not yet there; the conversation ids of the completed ones inserted now."""
    if not rows:
        return []
    stmt = (
        pg_insert(M)
        .on_conflict_do_nothing(index_elements=MESSAGE_KEY)
        .returning(M.c.conversation_id, M.c.status)
    )
    result = await conn.execute(stmt, list(rows))
    return [r.conversation_id for r in result if r.status == "completed"]


async def set_model_title(conn: AsyncConnection, answer: TitleAnswer) -> None:
    """A user's title is never replaced; a model's title replaces the fallback or an older one."""
    await conn.execute(
        update(C)
        .where(
            C.c.id == answer.conversation_id,
            C.c.user_id == answer.user_id,
            C.c.deleted_at.is_(None),
            or_(
                C.c.title_source == "fallback",
                and_(C.c.title_source == "model", C.c.title_at <= answer.at),
            ),
        )
        .values(title=answer.title, title_source="model", title_at=answer.at)
    )


def _untitled(conversation_ids: Sequence[str]) -> Any:
    """Conversations that may still get their one title request: not yet asked for, not
    deleted, not named by their user."""
    return and_(
        C.c.id.in_(sorted(set(conversation_ids))),
        C.c.title_requested.is_(False),
        C.c.deleted_at.is_(None),
        C.c.title_source != "user",
    )


async def opening_exchanges(
    conn: AsyncConnection, conversation_ids: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """The opening exchange of each conversation that may still get a title: its first user
    message and the first completed answer from that request on that says something (an
    answer that only calls tools does not; the answer to the tool results does). A
    conversation without both (its only turn so far is a tool turn, say) is left out."""
    if not conversation_ids:
        return {}
    ids = sorted(set(conversation_ids))
    first_user = (
        select(M.c.conversation_id, M.c.content, M.c.created_at, M.c.request_id)
        .ext(distinct_on(M.c.conversation_id))
        .join(C, and_(C.c.id == M.c.conversation_id, _untitled(ids)))
        .where(M.c.conversation_id.in_(ids), M.c.role == "user")
        .order_by(M.c.conversation_id, M.c.created_at, M.c.request_id)
        .subquery("first_user")
    )
    answer = M.alias("answer")
    stmt = (
        select(
            first_user.c.conversation_id,
            first_user.c.content.label("question"),
            answer.c.content.label("answer"),
        )
        .ext(distinct_on(first_user.c.conversation_id))
        .join(
            answer,
            and_(
                answer.c.conversation_id == first_user.c.conversation_id,
                answer.c.role == "assistant",
                answer.c.status == "completed",
                answer.c.content != "",
                tuple_(answer.c.created_at, answer.c.request_id)
                >= tuple_(first_user.c.created_at, first_user.c.request_id),
            ),
        )
        .order_by(first_user.c.conversation_id, answer.c.created_at, answer.c.request_id)
    )
    return {row.conversation_id: (row.question, row.answer) for row in await conn.execute(stmt)}


async def claim_title_requests(conn: AsyncConnection, conversation_ids: Sequence[str]) -> list[Row[Any]]:
    """Marks conversations that get their one title request; those not yet marked come back.
    A user who already named the conversation needs none."""
    if not conversation_ids:
        return []
    result = await conn.execute(
        update(C)
        .where(_untitled(conversation_ids))
        .values(title_requested=True)
        .returning(C.c.id, C.c.user_id, C.c.model)
    )
    return list(result)


async def release_title_request(conn: AsyncConnection, conversation_id: str) -> None:
    """The request could not be published: the next completed answer tries again."""
    await conn.execute(update(C).where(C.c.id == conversation_id).values(title_requested=False))


# -- reads ----------------------------------------------------------------------------------------
def _message_count() -> Any:
    return (select(func.count()).select_from(M).where(M.c.conversation_id == C.c.id).scalar_subquery()).label(
        "message_count"
    )


_SUMMARY = [
    C.c.id,
    C.c.title,
    C.c.title_source,
    C.c.model,
    C.c.created_at,
    C.c.updated_at,
    C.c.system_prompt,
]


async def list_conversations(
    conn: AsyncConnection,
    user_id: str,
    *,
    limit: int,
    after: tuple[datetime, str] | None,
    q: str | None,
) -> list[Row[Any]]:
    stmt = select(*_SUMMARY, _message_count()).where(C.c.user_id == user_id, C.c.deleted_at.is_(None))
    if after is not None:
        stmt = stmt.where(tuple_(C.c.updated_at, C.c.id) < tuple_(*after))
    if q:
        query = func.websearch_to_tsquery(literal_column("'simple'::regconfig"), q)
        in_messages = exists(select(1).where(M.c.conversation_id == C.c.id, M.c.content_tsv.op("@@")(query)))
        stmt = stmt.where(or_(C.c.title_tsv.op("@@")(query), in_messages))
    stmt = stmt.order_by(C.c.updated_at.desc(), C.c.id.desc()).limit(limit)
    return list(await conn.execute(stmt))


async def conversation(conn: AsyncConnection, user_id: str, conversation_id: str) -> Any:
    """The caller's live conversation (another user's or a deleted one reads as missing)."""
    result = await conn.execute(
        select(*_SUMMARY, _message_count()).where(
            C.c.id == conversation_id, C.c.user_id == user_id, C.c.deleted_at.is_(None)
        )
    )
    return result.first()


async def conversation_messages(conn: AsyncConnection, conversation_id: str) -> list[Row[Any]]:
    # Request order; within a request what it brought (the user's turn, or the tool results in
    # their order) before its answer: user → assistant (tool calls) → tool results → answer.
    rank = case((M.c.role == "user", 0), (M.c.role == "tool", 1), else_=2)
    result = await conn.execute(
        select(*MESSAGE_COLUMNS)
        .where(M.c.conversation_id == conversation_id)
        .order_by(M.c.created_at, M.c.request_id, rank, M.c.position)
    )
    return list(result)


# -- user actions ---------------------------------------------------------------------------------
async def rename(
    conn: AsyncConnection, user_id: str, conversation_id: str, title: str, now: datetime
) -> bool:
    result = await conn.execute(
        update(C)
        .where(C.c.id == conversation_id, C.c.user_id == user_id, C.c.deleted_at.is_(None))
        .values(title=title, title_source="user", title_at=now)
        .returning(C.c.id)
    )
    return result.first() is not None


async def request_ids(conn: AsyncConnection, conversation_id: str) -> list[str]:
    """The requests whose messages the conversation holds, and its title request if it was
    ever asked for (one never asked for has nothing in the log to wait for)."""
    rows = await conn.execute(select(M.c.request_id).where(M.c.conversation_id == conversation_id).distinct())
    titled = await conn.scalar(select(C.c.title_requested).where(C.c.id == conversation_id))
    return [row.request_id for row in rows] + ([title_request_id(conversation_id)] if titled else [])


# -- erasures --------------------------------------------------------------------------------
async def queue_erasures(conn: AsyncConnection, request_ids: Sequence[str], now: datetime) -> int:
    """Requests to erase from the log, in the caller's transaction (a request already queued
    keeps its place); how many were new."""
    if not request_ids:
        return 0
    rows = [{"request_id": r, "requested_at": now} for r in dict.fromkeys(request_ids)]
    stmt = pg_insert(E).values(rows)
    # A tombstone (done) is queued again: events of it may have come since.
    result = await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[E.c.request_id],
            set_={"done_at": None, "requested_at": stmt.excluded.requested_at},
            where=E.c.done_at.is_not(None),
        ).returning(E.c.request_id)
    )
    return len(result.all())


async def delete_request_messages(conn: AsyncConnection, user_id: str, request_id: str) -> str | None:
    """The request's messages and stored response gone, in the caller's transaction; the id of
    its conversation if that has no messages left."""
    result = await conn.execute(
        delete(M).where(M.c.request_id == request_id, M.c.user_id == user_id).returning(M.c.conversation_id)
    )
    conversations = {row.conversation_id for row in result}
    await conn.execute(delete(R).where(R.c.request_id == request_id, R.c.user_id == user_id))
    for conversation_id in conversations:
        left = await conn.scalar(
            select(func.count()).select_from(M).where(M.c.conversation_id == conversation_id)
        )
        if not left:
            return str(conversation_id)
    return None


async def upsert_responses(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """A response's row is its newest attempt's terminal event (an older one never replaces
    it, whatever the order the log is read in)."""
    if not rows:
        return
    stmt = pg_insert(R)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[R.c.request_id],
            set_={
                "attempt": stmt.excluded.attempt,
                "terminal": stmt.excluded.terminal,
                "stream_seq": stmt.excluded.stream_seq,
            },
            where=R.c.attempt < stmt.excluded.attempt,
        ),
        list(rows),
    )


async def stored_response(conn: AsyncConnection, user_id: str, request_id: str) -> dict[str, Any] | None:
    result = await conn.execute(
        select(R.c.terminal).where(R.c.request_id == request_id, R.c.user_id == user_id)
    )
    terminal: dict[str, Any] | None = result.scalar_one_or_none()
    return terminal


async def erasing(conn: AsyncConnection, request_ids: Sequence[str]) -> set[str]:
    """Those of the requests queued for erasure (not to be stored again)."""
    if not request_ids:
        return set()
    result = await conn.execute(select(E.c.request_id).where(E.c.request_id.in_(set(request_ids))))
    return set(result.scalars().all())


async def pending_erasures(conn: AsyncConnection, limit: int) -> Sequence[Row[Any, Any, Any]]:
    """The oldest erasures not done yet."""
    result = await conn.execute(
        select(E.c.request_id, E.c.requested_at, E.c.tries)
        .where(E.c.done_at.is_(None))
        .order_by(E.c.requested_at)
        .limit(limit)
    )
    return result.all()


async def erasures_queued(conn: AsyncConnection) -> int:
    query = select(func.count()).select_from(E).where(E.c.done_at.is_(None))
    return int((await conn.execute(query)).scalar_one())


async def erasure_done(conn: AsyncConnection, request_id: str, now: datetime) -> None:
    await conn.execute(update(E).where(E.c.request_id == request_id).values(done_at=now))


async def drop_tombstones(conn: AsyncConnection, done_before: datetime) -> None:
    """Done erasures older than the log's retention: nothing of them can come back."""
    await conn.execute(delete(E).where(E.c.done_at < done_before))


async def erasure_tried(conn: AsyncConnection, request_ids: Sequence[str]) -> None:
    if request_ids:
        await conn.execute(update(E).where(E.c.request_id.in_(list(request_ids))).values(tries=E.c.tries + 1))


async def user_request_ids(conn: AsyncConnection, user_id: str) -> list[str]:
    """Every request whose messages the user's conversations hold, and their title requests."""
    rows = await conn.execute(select(M.c.request_id).where(M.c.user_id == user_id).distinct())
    titles = await conn.execute(
        select(C.c.id).where(C.c.user_id == user_id, C.c.deleted_at.is_(None), C.c.title_requested)
    )
    return [row.request_id for row in rows] + [title_request_id(row.id) for row in titles]


async def erase_user(conn: AsyncConnection, user_id: str, now: datetime) -> int:
    """All the user's conversations deleted (tombstones, as `delete_conversation` leaves), in
    the caller's transaction; how many there were."""
    result = await conn.execute(
        update(C)
        .where(C.c.user_id == user_id, C.c.deleted_at.is_(None))
        .values(deleted_at=now, title="", system_prompt=None)
        .returning(C.c.id)
    )
    erased = len(result.all())
    await conn.execute(delete(M).where(M.c.user_id == user_id))
    await conn.execute(delete(R).where(R.c.user_id == user_id))
    return erased


async def delete_conversation(
    conn: AsyncConnection, user_id: str, conversation_id: str, now: datetime
) -> bool:
    """Tombstone and messages gone, in the caller's transaction."""
    result = await conn.execute(
        update(C)
        .where(C.c.id == conversation_id, C.c.user_id == user_id, C.c.deleted_at.is_(None))
        .values(deleted_at=now, title="", system_prompt=None)
        .returning(C.c.id)
    )
    if result.first() is None:
        return False
    await conn.execute(delete(M).where(M.c.conversation_id == conversation_id))
    await conn.execute(delete(R).where(R.c.conversation_id == conversation_id))
    return True


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT 1"))


# -- replay ---------------------------------------------------------------------------------------
async def copy_user_state(conn: AsyncConnection, source: str, target: str) -> int:
    """Copies the conversations users renamed or deleted (state the log does not hold) from
    schema `source` into `target`. Whole rows: every later merge of the replayed events into
    them is idempotent, so they end as they are live."""
    src = C.to_metadata(MetaData(), schema=source)
    dst = C.to_metadata(MetaData(), schema=target)
    cols = [c.name for c in CONVERSATION_COLUMNS]
    picked = select(*(src.c[n] for n in cols)).where(
        or_(src.c.title_source == "user", src.c.deleted_at.is_not(None))
    )
    result = await conn.execute(insert(dst).from_select(cols, picked))
    return int(result.rowcount or 0)


async def row_count(conn: AsyncConnection, schema: str) -> int:
    table = C.to_metadata(MetaData(), schema=schema)
    return int(await conn.scalar(select(func.count()).select_from(table)) or 0)
