"""Request-scoped dependencies: the services from the app state and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from llmchat_chat.auth import Authenticator
from llmchat_chat.backends import ServiceClient
from llmchat_chat.conversations import ConversationGuard
from llmchat_chat.errors import Forbidden, Unauthorized
from llmchat_chat.files import FileStore
from llmchat_chat.jobs import JobDirectory
from llmchat_chat.ratelimit import Limiter
from llmchat_chat.responses import ResponseDirectory
from llmchat_chat.service import ChatService
from llmchat_common.auth_contracts import Principal
from llmchat_common.logging import bind_log_fields

# Declares bearer auth in the OpenAPI schema; the header itself is parsed by the Authenticator
# (for precise 401s).
bearer_scheme = HTTPBearer(auto_error=False, description="an access token (JWT) or an API key")


def get_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service


def get_authenticator(request: Request) -> Authenticator:
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator


def get_limiter(request: Request) -> Limiter:
    limiter: Limiter = request.app.state.limiter
    return limiter


def get_history(request: Request) -> ServiceClient:
    client: ServiceClient = request.app.state.history
    return client


def get_usage(request: Request) -> ServiceClient:
    client: ServiceClient = request.app.state.usage
    return client


def get_jobs(request: Request) -> JobDirectory:
    jobs: JobDirectory = request.app.state.jobs
    return jobs


def get_responses(request: Request) -> ResponseDirectory:
    responses: ResponseDirectory = request.app.state.responses
    return responses


def get_files(request: Request) -> FileStore:
    files: FileStore = request.app.state.files
    return files


def get_conversations(request: Request) -> ConversationGuard:
    guard: ConversationGuard = request.app.state.conversations
    return guard


@dataclass(frozen=True)
class Caller:
    principal: Principal
    # The access token's claims; None when the caller used an API key.
    claims: dict[str, Any] | None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"


async def get_caller(
    request: Request,
    authenticator: Annotated[Authenticator, Depends(get_authenticator)],
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    principal, claims = await authenticator.authenticate(request.headers.get("authorization"))
    bind_log_fields(user_id=principal.user_id)
    return Caller(principal, claims)


async def get_session(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """Account management needs a logged-in session (a JWT), not an API key."""
    if caller.claims is None:
        raise Unauthorized("this route needs a login session (an access token), not an API key")
    return caller


async def get_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden("this route is for administrators")
    return caller


ServiceDep = Annotated[ChatService, Depends(get_service)]
AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]
LimiterDep = Annotated[Limiter, Depends(get_limiter)]
HistoryDep = Annotated[ServiceClient, Depends(get_history)]
UsageDep = Annotated[ServiceClient, Depends(get_usage)]
ConversationsDep = Annotated[ConversationGuard, Depends(get_conversations)]
JobsDep = Annotated[JobDirectory, Depends(get_jobs)]
ResponsesDep = Annotated[ResponseDirectory, Depends(get_responses)]
FilesDep = Annotated[FileStore, Depends(get_files)]
CallerDep = Annotated[Caller, Depends(get_caller)]
SessionDep = Annotated[Caller, Depends(get_session)]
AdminDep = Annotated[Caller, Depends(get_admin)]
