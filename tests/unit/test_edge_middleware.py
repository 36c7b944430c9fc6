"""The edge runs pure ASGI middleware only: Starlette's BaseHTTPMiddleware hides a client's
disconnect from the streaming answer below it, so a cancelled request would keep its engine slot
and its concurrency slot. Checked on the app as built, without starting it."""

from __future__ import annotations

from typing import Any

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Router

from llmchat_chat.main import create_app
from llmchat_chat.settings import ChatSettings


def test_the_edge_has_no_base_http_middleware() -> None:
    app = create_app(ChatSettings())
    declared = [m.cls for m in app.user_middleware]
    assert len(declared) >= 4, declared  # the edge's own (body cap, CORS, headers, metrics)
    assert not [cls for cls in declared if isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)]
    # Also what instrumentation wraps around them: the whole stack down to the router.
    layer: Any = app.build_middleware_stack()
    seen = []
    while not isinstance(layer, Router):
        seen.append(type(layer).__name__)
        assert not isinstance(layer, BaseHTTPMiddleware), seen
        layer = layer.app
    assert {"CORSMiddleware", "BodySizeLimit"} <= set(seen)
