"""The usage projection's row building and aggregation, without a database."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace

from llmchat_metrics.projection import daily_increments, request_row, request_rows

from llmchat_common.contracts import Cancelled, Completed, Failed, Started, Timings, Usage
from llmchat_common.projection import StoredEvent

TS = datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC).timestamp()


def completed(
    rid: str = "r1", *, user: str | None = "u1", ts: float = TS, prompt: int = 10, out: int = 5
) -> Completed:
    return Completed(
        request_id=rid,
        attempt=2,
        seq=7,
        worker_id="w1",
        ts=ts,
        user_id=user,
        api_key_id="k1",
        model="m",
        conversation_id="c1",
        trace_id="t" * 32,
        created_at=ts - 2,
        finish_reason="stop",
        text="hello",
        usage=Usage(prompt_tokens=prompt, completion_tokens=out),
        timings=Timings(queue_ms=1.5, ttft_ms=20.0, tpot_ms=3.0, e2e_ms=2000.0),
    )


def stored(event: object, seq: int) -> StoredEvent:
    return StoredEvent(event, seq, TS + 1)  # type: ignore[arg-type]


def test_completed_row_carries_the_request_facts() -> None:
    row = request_row(stored(completed(), 42))
    assert row is not None
    assert row["request_id"] == "r1"
    assert row["status"] == "completed" and row["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (10, 5)
    assert (row["queue_ms"], row["ttft_ms"], row["tpot_ms"], row["e2e_ms"]) == (1.5, 20.0, 3.0, 2000.0)
    assert row["attempts"] == 2 and row["worker_id"] == "w1" and row["stream_seq"] == 42
    assert row["finished_at"] == datetime.fromtimestamp(TS, UTC)
    assert row["created_at"] == datetime.fromtimestamp(TS - 2, UTC)
    assert row["day"] == date(2026, 12, 1)  # the UTC date of the terminal event
    assert row["user_id"] == "u1" and row["api_key_id"] == "k1" and row["conversation_id"] == "c1"


def test_failed_and_cancelled_keep_partial_usage_and_their_reason() -> None:
    failed = Failed(
        request_id="f",
        attempt=1,
        seq=3,
        worker_id="w",
        ts=TS,
        code="engine_error",
        message="boom",
        usage=Usage(prompt_tokens=4, completion_tokens=2),
    )
    cancelled = Cancelled(
        request_id="c",
        attempt=1,
        seq=0,
        worker_id="edge",
        ts=TS,
        reason="client",
        usage=Usage(prompt_tokens=3, completion_tokens=1),
    )
    f = request_row(stored(failed, 1))
    c = request_row(stored(cancelled, 2))
    assert f is not None and c is not None
    assert (f["status"], f["finish_reason"], f["completion_tokens"]) == ("failed", "engine_error", 2)
    assert (c["status"], c["finish_reason"], c["prompt_tokens"]) == ("cancelled", "client", 3)
    # Old events without a user or model: stored as '' (the aggregate key cannot be NULL).
    assert c["user_id"] == "" and c["model"] == "" and c["created_at"] is None and c["ttft_ms"] is None


def test_non_terminal_events_make_no_row() -> None:
    started = Started(request_id="r", attempt=1, seq=0, worker_id="w", ts=TS, queue_ms=1.0, prompt_tokens=3)
    assert request_row(stored(started, 1)) is None


def test_duplicates_in_one_batch_keep_the_first_stored_copy() -> None:
    first = completed("dup", out=5)
    copy = completed("dup", out=99)  # a re-published copy, stored later
    rows = request_rows([stored(copy, 20), stored(completed("a"), 15), stored(first, 10)])
    assert [r["request_id"] for r in rows] == ["a", "dup"]  # one per id, sorted by id
    dup = rows[1]
    assert dup["stream_seq"] == 10 and dup["completion_tokens"] == 5


def test_daily_increments_group_inserted_rows() -> None:
    d1, d2 = date(2026, 12, 1), date(2026, 12, 2)

    def row(day: date, status: str, prompt: int, out: int) -> SimpleNamespace:
        return SimpleNamespace(
            user_id="u", model="m", day=day, status=status, prompt_tokens=prompt, completion_tokens=out
        )

    def inc(day: date, status: str, n: int, prompt: int, out: int) -> dict[str, object]:
        return {
            "user_id": "u",
            "model": "m",
            "day": day,
            "status": status,
            "requests": n,
            "prompt_tokens": prompt,
            "completion_tokens": out,
        }

    inserted = [row(d1, "completed", 1, 2), row(d1, "completed", 3, 4), row(d1, "failed", 5, 0)]
    inserted.append(row(d2, "completed", 1, 1))
    assert daily_increments(inserted) == [
        inc(d1, "completed", 2, 4, 6),
        inc(d1, "failed", 1, 5, 0),
        inc(d2, "completed", 1, 1, 1),
    ]
    assert daily_increments([]) == []
