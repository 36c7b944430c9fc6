"""Checks every generating route makes (chat completions, legacy completions, embeddings) before
it queues a request, and queueing an admitted one."""

from __future__ import annotations

from llmchat_chat.errors import ApiError, ContextLengthExceeded, ModelNotFound
from llmchat_chat.ratelimit import Admission, Limiter
from llmchat_chat.service import ChatService, Submitted
from llmchat_common.contracts import ChatRequested, ModelCapabilities


async def known_model(service: ChatService, model: str) -> ModelCapabilities | None:
    """What the model can do (None: no live worker says yet); a 404 naming `model` when no
    worker serves it."""
    if not await service.registry.known(model):
        raise ModelNotFound(f"the model {model!r} does not exist", param="model")
    return await service.registry.capabilities_of(model)


def check_kind(model: str, capabilities: ModelCapabilities | None, kind: str, refusal: str) -> None:
    """A model of another kind is a 400 naming `model`: `the model '<model>' <refusal>`."""
    if capabilities is not None and capabilities.kind != kind:
        raise ApiError(f"the model {model!r} {refusal}", param="model")


def check_max_tokens(max_tokens: int | None, context: int | None) -> None:
    """`max_tokens` leaves room for a prompt in the model's context (when both are known)."""
    if max_tokens is not None and context is not None and max_tokens >= context:
        raise ContextLengthExceeded(
            f"max_tokens ({max_tokens}) must be below this model's context of {context} tokens",
            param="max_tokens",
        )


async def submit_admitted(
    service: ChatService, limiter: Limiter, request: ChatRequested, admission: Admission
) -> Submitted:
    """Queues an admitted request and follows it; one that was never queued gives its
    admission back whole."""
    try:
        handle = await service.submit(request)
        assert handle is not None
    except BaseException:
        admission.used_tokens = 0  # never queued: nothing was used
        await limiter.release(admission)
        raise
    return handle
