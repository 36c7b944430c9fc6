"""A batch's lines at the edge: each input line checked as its endpoint's route checks a request
and turned into the request that route would publish (`prepare`), and each finished line
rendered as that route would have answered it (`output_line`), in OpenAI's batch JSONL shape:
`{id, custom_id, response: {status_code, request_id, body}, error}`.

A line is refused (an error-file line, not a failed batch) for: bad JSON, a missing or repeated
`custom_id`, a `method` other than POST, a `url` other than the batch's endpoint, a body the
endpoint refuses (the same 400 as the route, its `param` kept), `stream` or `background` (a
batch is the background), or a legacy completion with several prompts (one line, one answer).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from llmchat_chat.api import chat, completions, embeddings
from llmchat_chat.api.chat import to_request as chat_request
from llmchat_chat.api.completions import check_request, to_completion_request
from llmchat_chat.api.completions_format import Echo, completion_choices, completion_object
from llmchat_chat.api.completions_schema import CompletionRequest
from llmchat_chat.api.deps import Caller
from llmchat_chat.api.embedding_schemas import EmbeddingRequest, embedding_list
from llmchat_chat.api.embeddings import to_request as embedding_request
from llmchat_chat.api.openai_format import completion_body
from llmchat_chat.api.responses import response_view
from llmchat_chat.api.responses_schema import ResponsesRequest
from llmchat_chat.api.schemas import ChatCompletionRequest
from llmchat_chat.errors import ApiError
from llmchat_chat.service import ChatService
from llmchat_common.batch_contracts import BatchLine, LineError, PreparedLine, batch_request_id
from llmchat_common.contracts import PRIORITY_BACKGROUND, ChatRequested, Completed, Failed, parse_event

SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/responses": ResponsesRequest,
}
MAX_CUSTOM_ID = 512
# A `/v1/responses` line's request, as the route makes it (its caller and stores bound).
ResponseRequestMaker = Callable[[ResponsesRequest, str], Awaitable[ChatRequested]]


def _refused(
    line: int, code: str, message: str, param: str | None = None, custom_id: str | None = None
) -> PreparedLine:
    # NUL characters are dropped: the error is stored (Postgres text cannot hold them).
    error = LineError(
        code=code, message=message.replace("\x00", ""), param=param and param.replace("\x00", ""), line=line
    )
    return PreparedLine(line=line, custom_id=custom_id, error=error)


def _validation_error(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first.get("loc", ()) if isinstance(p, int | str)]
    param = ".".join(["body", *loc]) if loc else "body"
    return f"{param}: {first.get('msg', 'invalid')}", param


class LinePreparer:
    """Turns one batch's input lines into requests, as the endpoint's route would."""

    def __init__(
        self,
        endpoint: str,
        batch_id: str,
        expires_at: float,
        service: ChatService,
        caller: Caller,
        responses: ResponseRequestMaker,
    ) -> None:
        self.endpoint = endpoint
        self.batch_id = batch_id
        self.expires_at = expires_at
        self.service = service
        self.caller = caller
        self.responses = responses
        self.seen: set[str] = set()
        self.makers: dict[str, Callable[[Any, str], Awaitable[ChatRequested]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completion,
            "/v1/embeddings": self._embedding,
            "/v1/responses": self._response,
        }

    async def prepare(self, number: int, raw: bytes) -> PreparedLine:
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _refused(number, "invalid_json", f"line {number} is not valid JSON")
        if not isinstance(line, dict):
            return _refused(number, "invalid_json", f"line {number} is not a JSON object")
        custom_id = line.get("custom_id")
        if (
            not isinstance(custom_id, str)
            or not custom_id
            or len(custom_id) > MAX_CUSTOM_ID
            or "\x00" in custom_id
        ):
            return _refused(
                number,
                "invalid_custom_id",
                f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters (no NUL)",
                "custom_id",
            )
        if custom_id in self.seen:
            return _refused(
                number,
                "duplicate_custom_id",
                f"custom_id {custom_id!r} is used by an earlier line",
                "custom_id",
                custom_id,
            )
        self.seen.add(custom_id)
        if line.get("method") != "POST":
            return _refused(number, "invalid_method", "method must be POST", "method", custom_id)
        if line.get("url") != self.endpoint:
            return _refused(
                number, "invalid_url", f"url must be the batch's endpoint {self.endpoint!r}", "url", custom_id
            )
        body = line.get("body")
        if not isinstance(body, dict):
            return _refused(number, "invalid_request", "body must be a JSON object", "body", custom_id)
        for field in ("stream", "background"):
            if body.get(field):
                return _refused(
                    number,
                    "invalid_request",
                    f"{field} is not supported in a batch",
                    f"body.{field}",
                    custom_id,
                )
        try:
            parsed = SCHEMAS[self.endpoint].model_validate(body)
        except ValidationError as exc:
            message, param = _validation_error(exc)
            return _refused(number, "invalid_request", message, param, custom_id)
        try:
            request = await self.makers[self.endpoint](parsed, batch_request_id(self.batch_id, number))
        except ApiError as exc:
            param = f"body.{exc.param}" if exc.param else "body"
            return _refused(number, exc.code or "invalid_request", exc.message, param, custom_id)
        queued = request.model_copy(
            update={
                "source": "batch",
                "priority": PRIORITY_BACKGROUND,
                "disconnect": "detach",
                "stream": False,
                "no_reset": False,
                "deadline": self.expires_at,
            }
        )
        return PreparedLine(
            line=number, custom_id=custom_id, body=body, request=queued, tokens=await self._tokens(queued)
        )

    async def _tokens(self, request: ChatRequested) -> int:
        """What the line's route would reserve against the per-minute token budget."""
        limits = self.service.settings.limits
        if self.endpoint == "/v1/completions":
            return completions.reservation(request, limits)
        context = await self.service.context_of(request.model)
        if self.endpoint == "/v1/embeddings":
            return embeddings.reservation(request, limits, context)
        return chat.reservation(request, limits, context)

    async def _chat(self, body: ChatCompletionRequest, request_id: str) -> ChatRequested:
        return await chat_request(
            body, self.service, self.caller, conversation=None, source="job", request_id=request_id
        )

    async def _completion(self, body: CompletionRequest, request_id: str) -> ChatRequested:
        prompts = await check_request(body, self.service)
        if len(prompts) != 1:
            raise ApiError("a batch line completes one prompt (send one line per prompt)", param="prompt")
        return to_completion_request(
            body, prompts[0], self.service, self.caller, request_id=request_id, now=time.time()
        )

    async def _embedding(self, body: EmbeddingRequest, request_id: str) -> ChatRequested:
        request = await embedding_request(body, self.service, self.caller)
        return request.model_copy(update={"request_id": request_id})

    async def _response(self, body: ResponsesRequest, request_id: str) -> ChatRequested:
        return await self.responses(body, request_id)


def _line_id(line: BatchLine) -> str:
    return f"batch_req_{line.request_id}"


def _failure_status(code: str) -> int:
    return {"invalid_request": 400, "context_length_exceeded": 400, "deadline_exceeded": 504}.get(code, 500)


def output_line(endpoint: str, line: BatchLine) -> bytes:
    """The line of the output file (a completed line) or of the error file (any other)."""
    out: dict[str, Any] = {"id": _line_id(line), "custom_id": line.custom_id, "response": None, "error": None}
    if line.status == "invalid":
        error = line.error or LineError(code="invalid_request", message="refused")
        out["error"] = {
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "line": error.line,
        }
    elif line.status == "skipped":
        out["error"] = {
            "code": "batch_not_run",
            "message": "the batch ended (cancelled or expired) before this line ran",
        }
    elif line.terminal is None or line.request is None:
        out["error"] = {"code": "batch_line_lost", "message": "the line's outcome is not known"}
    else:
        event = parse_event(orjson.dumps(line.terminal))
        if isinstance(event, Completed):
            out["response"] = {
                "status_code": 200,
                "request_id": line.request_id,
                "body": render_body(endpoint, line.body or {}, line.request, event),
            }
        elif isinstance(event, Failed):
            out["response"] = {
                "status_code": _failure_status(event.code),
                "request_id": line.request_id,
                "body": {
                    "error": {
                        "message": event.message,
                        "type": "server_error",
                        "param": None,
                        "code": event.code,
                    }
                },
            }
        else:
            out["error"] = {
                "code": "batch_cancelled",
                "message": f"the line was cancelled ({getattr(event, 'reason', '')})",
            }
    return orjson.dumps(out) + b"\n"


def render_body(
    endpoint: str, body: dict[str, Any], request: ChatRequested, event: Completed
) -> dict[str, Any]:
    created = int(request.created_at)
    model = str(body.get("model", request.model))
    if endpoint == "/v1/chat/completions":
        return completion_body(request.request_id, model, created, event, None)
    if endpoint == "/v1/completions":
        parsed = CompletionRequest.model_validate(body)
        echo = Echo.of(None, event) if parsed.echo else None
        choices = completion_choices(event, echo=echo, logprobs=parsed.logprobs is not None)
        return completion_object(request.request_id, model, created, choices, event.usage)
    if endpoint == "/v1/embeddings":
        embedding = EmbeddingRequest.model_validate(body)
        return embedding_list(
            model,
            event.embeddings or [],
            event.usage,
            encoding_format=embedding.encoding_format,
            dimensions=embedding.dimensions,
        )
    view = response_view(request)
    view.saw(event)
    return view.body()
