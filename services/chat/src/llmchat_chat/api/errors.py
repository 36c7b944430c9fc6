"""The one place where failures become HTTP responses, always in OpenAI's error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from llmchat_chat.errors import ApiError, InvalidRequest, error_body
from llmchat_chat.observability import count_refusal

log = logging.getLogger(__name__)


def _json(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=exc.status, headers={**exc.headers, **(headers or {})})


async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    count_refusal(exc)
    return _json(exc)


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation of the request, and the contracts the edge builds from it for
    the services (e.g. a NUL character the database could not take): the caller's mistake."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = (
        exc.errors(include_url=False, include_input=False)
        if isinstance(exc, ValidationError)
        else exc.errors()
    )
    first = errors[0] if errors else {}
    # Field names and indexes only: pydantic also names the union member or validator it
    # tried (`function-after[_encodable(), str]`), which means nothing to a caller.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and _is_field(p)]
    if first.get("type") == "json_invalid":
        return _json(InvalidRequest("the request body is not valid JSON"))
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return _json(InvalidRequest(f"{param}: {message}" if param else message, param=param))


def _is_field(part: object) -> bool:
    return isinstance(part, int) or (isinstance(part, str) and part.replace("_", "").isalnum())


async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ApiError):
        # FastAPI wraps errors raised while reading the body (e.g. the size cap) in a 400.
        return _json(cause)
    error = ApiError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    error.status = exc.status_code
    return _json(error, headers=dict(exc.headers) if exc.headers else None)


async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    error = ApiError("internal error", code="internal_error")
    error.status = 500
    error.type = "server_error"
    return _json(error)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
