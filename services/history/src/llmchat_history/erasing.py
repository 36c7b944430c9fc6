"""The eraser: works off the queue of erasures (`models.Erasure`), forgetting each request from
the event log (`llmchat_common.forgetting`) once it has ended.

Deleting is instant for the user (the rows go in the delete's transaction); erasing the log
takes a secure delete per stored event (a few ms each), so it runs here, in the background,
from a queue that survives restarts. A request still running is tried again at the next pass
(every `interval_s`, or sooner when woken). An erasure older than the event log's retention is
dropped: the log has let the request go by itself. Replicas may erase the same request at the
same time: erasing is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from llmchat_common.forgetting import Forget
from llmchat_history import repository as repo
from llmchat_history.service import utcnow

log = logging.getLogger(__name__)

PENDING = Gauge(
    "llmchat_history_erasures_pending", "Requests queued for erasure from the event log, not done yet"
)
BATCH = 200


class Eraser:
    def __init__(self, engine: AsyncEngine, forget: Forget, *, interval_s: float, retention_s: float) -> None:
        self._engine = engine
        self._forget = forget
        self._interval_s = interval_s
        self._retention = timedelta(seconds=retention_s)
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        while True:
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the queue stays; the next pass retries
                log.warning("erasure pass failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._woken.wait()
            self._woken.clear()

    async def work(self, now: datetime | None = None) -> int:
        """One pass over the queue, oldest first; how many erasures it finished."""
        done = 0
        now = now or utcnow()
        async with self._engine.connect() as conn:
            pending = await repo.pending_erasures(conn, BATCH)
        waiting = []
        for row in pending:
            expired = row.requested_at < now - self._retention
            if expired or await self._forget([row.request_id]):
                async with self._engine.begin() as conn:
                    await repo.erasure_done(conn, row.request_id, now)
                done += 1
            else:
                waiting.append(row.request_id)
        async with self._engine.begin() as conn:
            if waiting:
                await repo.erasure_tried(conn, waiting)
            PENDING.set(await repo.erasures_queued(conn))
            await repo.drop_tombstones(conn, now - self._retention)
        if done:
            log.info("requests erased from the log", extra={"requests": done, "waiting": len(waiting)})
        return done
