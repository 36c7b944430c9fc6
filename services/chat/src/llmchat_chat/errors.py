"""Every failure a caller can see, as one type each; mapped once to HTTP in api/errors.py."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = dict(headers or {})
        if code is not None:
            self.code = code


class InvalidRequest(ApiError):
    code = "invalid_request"


class ContextLengthExceeded(ApiError):
    code = "context_length_exceeded"


class Unauthorized(ApiError):
    """Missing or invalid credentials; always sent with a `WWW-Authenticate` challenge."""

    status = 401
    code = "invalid_api_key"

    def __init__(self, message: str, *, code: str | None = None, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="llmchat"'
        if error is not None:
            challenge += f', error="{error}"'
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class ServiceUnavailable(ApiError):
    """A part the request needs is away for now (a service restarting, the broker or database
    in an outage): always with `Retry-After`, so clients know to try again and when."""

    status = 503
    type = "service_unavailable_error"
    code = "service_unavailable"
    retry_after_s = 2

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(self.retry_after_s))


class DeadlineExceeded(ApiError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class UpstreamFailed(ApiError):
    status = 502
    type = "server_error"
    code = "generation_failed"


class RequestCancelled(ApiError):
    status = 499
    type = "cancelled"
    code = "cancelled"


def error_body(exc: ApiError) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}


def from_service(code: str, message: str, status: int) -> ApiError:
    """A service's error reply (llmchat_common.rpc codes) as the edge's error."""
    if status == 401:
        return Unauthorized(message, code=code)
    kinds: dict[int, type[ApiError]] = {
        400: InvalidRequest,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
    }
    return kinds.get(status, ServiceUnavailable)(message, code=code)
