"""The jobs projection's merge, without a database: every arrival order of a request's messages
gives the same row, redelivery changes nothing, and the status mapping is the edge's."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from llmchat_metrics.job_queries import decode_cursor, encode_cursor
from llmchat_metrics.jobs import (
    JobRequestsProjection,
    fold,
    merge,
    row_of_event,
    row_of_request,
)
from pydantic import ValidationError

from llmchat_chat.api.job_format import error_of, status_of
from llmchat_common.contracts import (
    Cancelled,
    ChatMessage,
    ChatRequested,
    Completed,
    Failed,
    Started,
    Timings,
    Usage,
)
from llmchat_common.launch.nats_auth import JOBS_REQUESTS_DURABLE
from llmchat_common.rpc import InvalidRequest
from llmchat_common.usage_contracts import JobListQuery

T0 = 1_800_000_000.0


def request(rid: str = "r1", *, kind: str = "chat", source: str = "job") -> ChatRequested:
    return ChatRequested(
        request_id=rid,
        model="m",
        messages=[ChatMessage(role="user", content="hi")],
        user_id="u1",
        api_key_id="k1",
        conversation_id="c1",
        kind=kind,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        trace_id="t" * 32,
        created_at=T0,
        deadline=T0 + 60,
    )


def facts(req: ChatRequested) -> dict[str, object]:
    return {k: v for k, v in req.facts().items() if k not in ("user_message", "system_prompt")}


def started(req: ChatRequested, attempt: int = 1, ts: float = T0 + 1) -> Started:
    return Started(
        request_id=req.request_id,
        attempt=attempt,
        seq=0,
        worker_id=f"w{attempt}",
        ts=ts,
        queue_ms=1.0,
        prompt_tokens=3,
        **facts(req),  # type: ignore[arg-type]
    )


def completed(req: ChatRequested, attempt: int = 1) -> Completed:
    return Completed(
        request_id=req.request_id,
        attempt=attempt,
        seq=9,
        worker_id="w",
        ts=T0 + 5,
        finish_reason="length",
        text="hello",
        usage=Usage(prompt_tokens=3, completion_tokens=8),
        timings=Timings(queue_ms=1.0, ttft_ms=2.0, e2e_ms=5000.0),
        **facts(req),  # type: ignore[arg-type]
    )


def cancelled(req: ChatRequested, reason: str) -> Cancelled:
    return Cancelled(
        request_id=req.request_id,
        attempt=1,
        seq=4,
        worker_id="w",
        ts=T0 + 3,
        reason=reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=3, completion_tokens=2),
        **facts(req),  # type: ignore[arg-type]
    )


def failed(req: ChatRequested) -> Failed:
    return Failed(
        request_id=req.request_id,
        attempt=3,
        seq=0,
        worker_id="w",
        ts=T0 + 9,
        code="poison",
        message="gave up after 3 deliveries",
        **facts(req),  # type: ignore[arg-type]
    )


def rows_for(
    req: ChatRequested, *events: Started | Completed | Failed | Cancelled
) -> list[dict[str, object]]:
    rows = [row_of_request(req), *(row_of_event(e) for e in events)]
    return [r for r in rows if r is not None]


def folded(rows: list[dict[str, object]]) -> dict[str, object]:
    (row,) = fold(rows)
    return row


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def test_queued_running_completed() -> None:
    req = request()
    queued = folded(rows_for(req))
    assert queued["status"] == "queued" and queued["attempts"] == 0
    assert queued["created_at"] == utc(T0) and queued["source"] == "job"
    assert queued["started_at"] is None and queued["finished_at"] is None
    running = folded(rows_for(req, started(req)))
    assert running["status"] == "running" and running["attempts"] == 1
    assert running["started_at"] == utc(T0 + 1)
    done = folded(rows_for(req, started(req), completed(req)))
    assert done["status"] == "completed" and done["finish_reason"] == "length"
    assert (done["prompt_tokens"], done["completion_tokens"]) == (3, 8)
    assert done["finished_at"] == utc(T0 + 5) and done["error_code"] is None
    assert (done["user_id"], done["api_key_id"], done["model"], done["conversation_id"]) == (
        "u1",
        "k1",
        "m",
        "c1",
    )
    assert done["trace_id"] == "t" * 32


@pytest.mark.parametrize(
    "terminal",
    ["completed", "failed", "client", "deadline", "shutdown"],
)
def test_every_arrival_order_and_any_redelivery_give_the_same_row(terminal: str) -> None:
    """Two attempts (a failover), the terminal event, and the request itself, in every order
    and with copies: one row, always the same."""
    req = request()
    end: Completed | Failed | Cancelled
    if terminal == "completed":
        end = completed(req, attempt=2)
    elif terminal == "failed":
        end = failed(req)
    else:
        end = cancelled(req, terminal)
    rows = rows_for(req, started(req, 1, T0 + 1), started(req, 2, T0 + 4), end)
    expected = folded(rows)
    for order in itertools.permutations(rows):
        assert folded(list(order)) == expected
        # Redelivery: the whole set again, after the row is final, changes nothing.
        assert folded([*order, *rows]) == expected
    # Pairwise too: the SQL merge sees (stored row, incoming row).
    for a, b in itertools.permutations(rows, 2):
        assert merge(merge(a, b), b) == merge(a, b)
    assert expected["started_at"] == utc(T0 + 1)  # the first start
    assert expected["attempts"] == max(2, end.attempt)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda r: completed(r), "completed", None),
        (lambda r: failed(r), "failed", "poison"),
        (lambda r: cancelled(r, "client"), "cancelled", "cancelled"),
        (lambda r: cancelled(r, "shutdown"), "cancelled", "cancelled"),
        (lambda r: cancelled(r, "deadline"), "failed", "deadline_exceeded"),
    ],
)
def test_status_and_error_are_the_edges(make: object, status: str, code: str | None) -> None:
    req = request()
    end = make(req)  # type: ignore[operator]
    row = folded(rows_for(req, end))
    assert row["status"] == status == status_of(None, end)
    edge_error = error_of(end)
    assert row["error_code"] == code == (edge_error["code"] if edge_error else None)
    assert row["error_message"] == (edge_error["message"] if edge_error else None)


def test_a_lower_rank_never_overwrites_a_higher_one() -> None:
    req = request()
    end = cancelled(req, "client")
    final = folded(rows_for(req, end))
    late = [row_of_request(req), row_of_event(started(req))]
    row = final
    for r in late:
        assert r is not None
        row = merge(row, r)
    assert row["status"] == "cancelled" and row["finished_at"] == utc(T0 + 3)
    assert row["started_at"] == utc(T0 + 1)  # the start is still learnt
    # A cancel while queued: no start at all.
    assert final["started_at"] is None and final["status"] == "cancelled"


def test_event_first_row_takes_the_request_facts() -> None:
    req = request()
    bare = Started(request_id="r1", attempt=1, seq=0, worker_id="w", ts=T0 + 1, queue_ms=1.0, prompt_tokens=3)
    first = row_of_event(bare)
    assert first is not None and first["user_id"] == "" and first["created_at"] == utc(T0 + 1)
    row = merge(first, rows_for(req)[0])
    assert (row["user_id"], row["model"], row["source"]) == ("u1", "m", "chat")  # source was set
    assert row["status"] == "running"


def test_title_requests_are_not_jobs() -> None:
    req = request(kind="title")
    assert row_of_request(req) is None
    assert row_of_event(completed(req)) is None
    assert fold([row_of_request(req)]) == []


def test_fold_is_sorted_by_request_id() -> None:
    rows = [row_of_request(request(rid)) for rid in ("c", "a", "b")]
    assert [r["request_id"] for r in fold(rows)] == ["a", "b", "c"]


def test_cursor_round_trip_and_garbage() -> None:
    when = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "req-1")) == (when, "req-1")
    for bad in ("", "!!!", "bm90IGpzb24", encode_cursor(when, "x")[:-3], "WzEsMl0"):
        with pytest.raises(InvalidRequest):
            decode_cursor(bad)


def test_list_query_bounds() -> None:
    assert JobListQuery(user_id="u").limit == 20
    bads: list[dict[str, object]] = [
        {"limit": 0},
        {"limit": 101},
        {"status": ["done"]},
        {"status": []},
        {"surprise": 1},
    ]
    for bad in bads:
        with pytest.raises(ValidationError):
            JobListQuery.model_validate({"user_id": "u", **bad})
    with pytest.raises(ValidationError):
        JobListQuery(user_id="")


def test_the_nats_grant_names_the_projections_durable() -> None:
    assert f"projection-{JobRequestsProjection.name}" == JOBS_REQUESTS_DURABLE
