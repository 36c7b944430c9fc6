"""Business metrics for Prometheus, derived from the projection (not from the request path).

A background task re-reads a small snapshot from `usage.daily` (sums by model and status; no
per-user label, so the series count stays bounded by models x statuses); the collector serves
that snapshot on each scrape, never touching the database from the HTTP thread. Counters are
all-time sums of the table, so they only grow and survive restarts (the table is the state).

The collector joins prometheus-client's default registry, served with the consumer and RPC
metrics (llmchat_common.consumer_telemetry, llmchat_common.rpc) by `serve_metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from opentelemetry.instrumentation.utils import suppress_instrumentation
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_metrics.models import DAILY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    model: str
    status: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Snapshot:
    rows: list[ModelStatus] = field(default_factory=list)
    taken_at: float = 0.0


async def read_snapshot(engine: AsyncEngine) -> Snapshot:
    d = DAILY.c
    stmt = select(
        d.model,
        d.status,
        func.sum(d.requests),
        func.sum(d.prompt_tokens),
        func.sum(d.completion_tokens),
    ).group_by(d.model, d.status)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return Snapshot([ModelStatus(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows], time.time())


class SnapshotHolder:
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    async def refresh_forever(self, engine: AsyncEngine, interval_s: float) -> None:
        while True:
            try:
                # No query span: every few seconds, it would be a trace of its own each time.
                with suppress_instrumentation():
                    self.snapshot = await read_snapshot(engine)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres away: keep the last snapshot
                log.warning("metrics snapshot failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(interval_s)


class UsageCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        tokens = CounterMetricFamily(
            "llmchat_usage_tokens", "Tokens of finished requests (projected)", labels=["model", "kind"]
        )
        requests = CounterMetricFamily(
            "llmchat_usage_requests", "Finished requests (projected)", labels=["model", "status"]
        )
        prompt: dict[str, int] = {}
        completion: dict[str, int] = {}
        for row in snap.rows:
            requests.add_metric([row.model, row.status], row.requests)
            prompt[row.model] = prompt.get(row.model, 0) + row.prompt_tokens
            completion[row.model] = completion.get(row.model, 0) + row.completion_tokens
        for model in sorted(prompt):
            tokens.add_metric([model, "prompt"], prompt[model])
            tokens.add_metric([model, "completion"], completion[model])
        yield tokens
        yield requests
        yield GaugeMetricFamily(
            "llmchat_usage_snapshot_timestamp_seconds",
            "When the usage sums above were read from Postgres",
            value=snap.taken_at,
        )
