"""Projection ingest rate and lag: synthetic events into a real stack (nats-server, Postgres) and
a real metrics (or history) process, measured from the rows they write.

`--service metrics` (default): terminal events into `usage.requests`. `--service history`: each
request is a `started` and a `completed` of a conversation (ten turns each, titles off), into
`history.messages` (rates count requests, i.e. terminal events; lag is measured for metrics
only, whose rows record when they were projected).

Three runs on one new stack (state under .state/bench-ingest):
  live     publish N events as fast as possible with the consumer running: events/s from the
           first publish until all N rows exist;
  backlog  publish N events with the consumer stopped, then start it: drain rate (N over the
           span between the first and last batch's commit, from projected_at), and wall time
           from the process start;
  steady   publish at a fixed rate; lag = projected_at - the event's ts, p50/p99.

    .venv/bin/python bench/projection_ingest.py [--events 20000] [--rate 200] [--seconds 20]
        [--batch-size 500] [--linger 0.02] [--service metrics|history]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats

from llmchat_common import subjects
from llmchat_common.contracts import Completed, Started, Timings, Usage
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_history, start_metrics
from llmchat_common.launch.stack import LocalStack, StackPorts

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".state" / "bench-ingest"


SERVICE = "metrics"


def event(run: str, i: int, ts: float | None = None) -> bytes:
    ts = ts if ts is not None else time.time()
    conversation = str(uuid.UUID(int=hash((run, i // 10)) % (1 << 128)))
    e = Completed(
        request_id=f"{run}-{i}",
        attempt=1,
        seq=9,
        worker_id="bench",
        ts=ts,
        user_id=f"user-{(i // 10) % 50}",  # a conversation (ten turns) has one owner
        model=f"model-{i % 3}",
        trace_id=uuid.uuid4().hex,
        created_at=ts - 1.0,
        conversation_id=conversation,
        user_message=f"question {i} of the benchmark",
        finish_reason="stop",
        text="x" * 200,
        usage=Usage(prompt_tokens=30 + i % 17, completion_tokens=64),
        timings=Timings(queue_ms=3.0, ttft_ms=40.0, tpot_ms=8.0, e2e_ms=550.0),
    )
    return e.model_dump_json().encode()


def started(run: str, i: int) -> bytes:
    completed = Completed.model_validate_json(event(run, i))
    facts = completed.model_dump(
        include={"request_id", "user_id", "model", "conversation_id", "user_message"}
    )
    return (
        Started(
            **facts,
            attempt=1,
            seq=0,
            worker_id="bench",
            ts=completed.ts - 0.9,
            queue_ms=3.0,
            prompt_tokens=30,
        )
        .model_dump_json()
        .encode()
    )


async def publish_one(js: Any, run: str, i: int) -> None:
    if SERVICE == "history":
        await js.publish(subjects.event_subject(f"{run}-{i}", "started"), started(run, i))
    await js.publish(subjects.event_subject(f"{run}-{i}", "completed"), event(run, i))


async def publish(js: Any, run: str, start: int, stop: int, *, chunk: int = 500) -> None:
    for lo in range(start, stop, chunk):
        await asyncio.gather(*(publish_one(js, run, i) for i in range(lo, min(lo + chunk, stop))))


def start_service(stack: LocalStack, env: dict[str, str]) -> ManagedProcess:
    if SERVICE == "history":
        return start_history(
            stack, extra_env={k.replace("_METRICS_", "_HISTORY_"): v for k, v in env.items()}
        )
    return start_metrics(stack, extra_env=env)


async def count(db: asyncpg.Connection, run: str) -> int:
    if SERVICE == "history":
        sql = "SELECT count(*) FROM history.messages WHERE role = 'assistant' AND request_id LIKE $1"
    else:
        sql = "SELECT count(*) FROM usage.requests WHERE request_id LIKE $1"
    return int(await db.fetchval(sql, f"{run}-%"))


async def wait_count(db: asyncpg.Connection, run: str, n: int, limit_s: float = 600) -> float:
    deadline = time.monotonic() + limit_s
    while await count(db, run) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run}: {await count(db, run)} of {n} rows")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def live(js: Any, db: asyncpg.Connection, n: int) -> dict[str, float]:
    run = f"live{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    await publish(js, run, 0, n)
    published = time.perf_counter()
    done = await wait_count(db, run, n)
    return {"events": n, "publish_s": published - t0, "total_s": done - t0, "rate": n / (done - t0)}


async def backlog(
    stack: LocalStack, js: Any, db: asyncpg.Connection, n: int, env: dict[str, str], proc: ManagedProcess
) -> tuple[dict[str, float], ManagedProcess]:
    run = f"backlog{uuid.uuid4().hex[:6]}"
    proc.stop()
    await publish(js, run, 0, n)
    t0 = time.perf_counter()
    proc = start_service(stack, env)
    done = await wait_count(db, run, n)
    if SERVICE == "history":
        return {"events": n, "wall_s_from_start": done - t0, "rate": n / (done - t0)}, proc
    span = await db.fetchval(
        "SELECT extract(epoch FROM max(projected_at) - min(projected_at)) FROM usage.requests "
        "WHERE request_id LIKE $1",
        f"{run}-%",
    )
    batches = await db.fetchval(
        "SELECT count(DISTINCT projected_at) FROM usage.requests WHERE request_id LIKE $1", f"{run}-%"
    )
    span = float(span or 0.0)
    return {
        "events": n,
        "wall_s_from_start": done - t0,
        "drain_span_s": span,
        "batches": int(batches),
        # projected_at is each batch's transaction start: the span misses the last batch's
        # own duration, so add one average batch.
        "drain_rate": n / (span + span / max(int(batches) - 1, 1)) if span else float("nan"),
    }, proc


async def steady(js: Any, db: asyncpg.Connection, rate: float, seconds: float) -> dict[str, float]:
    run = f"steady{uuid.uuid4().hex[:6]}"
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        # Paced by the schedule, not by sleeps that drift.
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await js.publish(subjects.event_subject(f"{run}-{i}", "completed"), event(run, i))
    await wait_count(db, run, n)
    row = await db.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99, max(lag) AS max FROM ("
        "  SELECT extract(epoch FROM projected_at - finished_at) * 1000 AS lag FROM usage.requests"
        "  WHERE request_id LIKE $1) t",
        f"{run}-%",
    )
    return {
        "events": n,
        "rate": rate,
        "lag_p50_ms": row["p50"],
        "lag_p99_ms": row["p99"],
        "lag_max_ms": row["max"],
    }


async def main_async(args: argparse.Namespace) -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    stack = LocalStack(STATE, preferred=StackPorts(0, 0, 0, 0)).start()
    env = {
        "LLMCHAT_METRICS_PROMETHEUS_PORT": "0",
        "LLMCHAT_METRICS_PROJECTION__BATCH_SIZE": str(args.batch_size),
        "LLMCHAT_METRICS_PROJECTION__LINGER_S": str(args.linger),
        "LLMCHAT_METRICS_TITLES": "false",  # history only (titles need a model)
        "LLMCHAT_LOG_LEVEL": "WARNING",
    }
    proc = start_service(stack, env)
    admin = stack.env()  # the admin user: publishes like a worker would
    nc = await nats.connect(
        admin["LLMCHAT_NATS_URL"], user=admin["LLMCHAT_NATS_USER"], password=admin["LLMCHAT_NATS_PASSWORD"]
    )
    db = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        js = nc.jetstream()
        print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
        print(f"service: {SERVICE}; settings: batch_size={args.batch_size} linger_s={args.linger}")
        print("live    ", await live(js, db, args.events))
        result, proc = await backlog(stack, js, db, args.events, env, proc)
        print("backlog ", result)
        if SERVICE == "metrics":
            print("steady  ", await steady(js, db, args.rate, args.seconds))
    finally:
        await db.close()
        await nc.close()
        proc.stop()
        stack.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--linger", type=float, default=0.02)
    p.add_argument("--service", choices=("metrics", "history"), default="metrics")
    args = p.parse_args()
    global SERVICE
    SERVICE = args.service
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
