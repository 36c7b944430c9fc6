"""Request body cap, enforced before anything is parsed or queued (pure ASGI: no buffering).

An oversized body is read and discarded (up to `discard_limit`) before the 413 is sent: a
client still uploading would otherwise see a reset connection instead of the error.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmchat_chat.errors import PayloadTooLarge, error_body


class BodySizeLimit:
    """`paths` raise the cap for some routes (file uploads), by exact path."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        discard_limit: int = 64 * 1024 * 1024,
        paths: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.default_bytes = max_bytes
        self.discard_limit = discard_limit
        self.paths = paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _Limit(self, self.paths.get(scope.get("path", ""), self.default_bytes))
        await limit(scope, receive, send)


class _Limit:
    def __init__(self, outer: BodySizeLimit, max_bytes: int) -> None:
        self.app = outer.app
        self.max_bytes = max_bytes
        self.discard_limit = outer.discard_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._discard(receive, 0)
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await self._discard(receive, seen)
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, limited, send)

    async def _discard(self, receive: Receive, seen: int) -> None:
        while seen <= self.discard_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _message(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes"

    async def _reject(self, send: Send) -> None:
        body = orjson.dumps(error_body(PayloadTooLarge(self._message())))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
