"""The event sink the worker's unit tests hand a runner: it keeps every event in order (typed
loosely: tests read them as whatever their runner emits)."""

from __future__ import annotations

from typing import Any


class ListSink:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def emit(self, event: Any) -> None:
        self.events.append(event)

    async def emit_terminal(self, event: Any) -> None:
        self.events.append(event)
