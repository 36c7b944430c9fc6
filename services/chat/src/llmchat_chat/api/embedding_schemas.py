"""The OpenAI embeddings request as we accept it, and the response's shapes.

`input` takes OpenAI's four forms: a string, an array of strings, an array of token ids, or an
array of token-id arrays. It is read by hand rather than as a pydantic union, so that a bad one
gets one message naming `input` (and the item), not one error per union member.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from llmchat_chat.api.schemas import Text
from llmchat_chat.errors import ApiError
from llmchat_common.contracts import ModelCapabilities, Usage

# OpenAI's cap on inputs per request.
MAX_INPUTS = 2048
# The vectors travel back in one event: a float32 in JSON takes at most 16 bytes ("-1.2345678e-05,"),
# and the event's other fields stay within this.
BYTES_PER_FLOAT = 16
EVENT_OVERHEAD_BYTES = 64 * 1024

INPUT_FORMS = "a string, an array of strings, an array of token ids, or an array of token-id arrays"
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
# What OpenAPI says `input` is (it is read by `parse_input`).
InputSchema = WithJsonSchema(
    {
        "description": f"what to embed: {INPUT_FORMS}",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            _TOKEN_IDS,
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
        ],
    }
)


class EmbeddingRequest(BaseModel):
    """Unknown fields are ignored, as OpenAI's SDK sends only what the caller set."""

    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=256)
    input: Annotated[Any, InputSchema]
    encoding_format: Literal["float", "base64"] = "float"
    # Shortened embeddings: only for a model that supports them (matryoshka).
    dimensions: int | None = Field(default=None, ge=1)
    # OpenAI's end-user id: accepted and ignored (the caller is known from its credentials).
    user: str | None = Field(default=None, max_length=256)
    # Extension: the deadline in seconds, as on chat completions.
    timeout: float | None = Field(default=None, gt=0, description="deadline in seconds")


def _bad(message: str) -> ApiError:
    return ApiError(message, param="input")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_array(value: list[Any], where: str) -> list[int]:
    if not value:
        raise _bad(f"{where} is an empty token array")
    for token in value:
        if not _is_token(token):
            raise _bad(f"{where}: a token array holds integers only")
        if token < 0:
            raise _bad(f"{where}: token ids are not negative (got {token})")
    return list(value)


def _text(value: str, where: str, max_chars: int) -> str:
    if not value:
        raise _bad(f"{where} is an empty string")
    if len(value) > max_chars:
        raise _bad(f"{where} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{where} is not valid Unicode text (it holds a lone surrogate)") from None
    return value


def parse_input(value: Any, *, max_inputs: int, max_chars: int) -> list[str] | list[list[int]]:
    """The inputs as the worker takes them: texts, or token-id arrays (one array for OpenAI's
    flat array of token ids)."""
    if isinstance(value, str):
        return [_text(value, "input", max_chars)]
    if not isinstance(value, list):
        raise _bad(f"input must be {INPUT_FORMS}")
    if not value:
        raise _bad("input is an empty array")
    if all(_is_token(item) for item in value):
        return [_token_array(value, "input")]
    if len(value) > max_inputs:
        raise _bad(f"at most {max_inputs} inputs per request for this model (got {len(value)})")
    if all(isinstance(item, str) for item in value):
        return [_text(item, f"input[{i}]", max_chars) for i, item in enumerate(value)]
    if all(isinstance(item, list) for item in value):
        return [_token_array(item, f"input[{i}]") for i, item in enumerate(value)]
    raise _bad(f"input must be {INPUT_FORMS}; this array mixes kinds")


def max_inputs(capabilities: ModelCapabilities | None, max_event_bytes: int) -> int:
    """OpenAI's cap, lowered for a model whose vectors of that many inputs would not fit in one
    event (384 dimensions: 1,354 inputs in 8 MiB)."""
    if capabilities is None or not capabilities.dimensions:
        return MAX_INPUTS
    fits = (max_event_bytes - EVENT_OVERHEAD_BYTES) // (capabilities.dimensions * BYTES_PER_FLOAT)
    return max(1, min(MAX_INPUTS, fits))


def check_dimensions(model: str, dimensions: int | None, capabilities: ModelCapabilities | None) -> None:
    """`dimensions` only where the model says its embeddings may be shortened."""
    if dimensions is None:
        return
    if capabilities is None:
        raise ApiError(
            f"the model {model!r} has no live worker yet to say whether it supports dimensions; "
            "retry without dimensions or later",
            param="dimensions",
        )
    size = capabilities.dimensions
    if not capabilities.matryoshka:
        have = f": its embeddings have {size} dimensions" if size else ""
        raise ApiError(f"the model {model!r} does not support dimensions{have}", param="dimensions")
    if size and dimensions > size:
        raise ApiError(
            f"the model {model!r} makes embeddings of at most {size} dimensions (got {dimensions})",
            param="dimensions",
        )


def shortened(vector: list[float], dimensions: int | None) -> list[float]:
    """A matryoshka embedding cut to its first `dimensions` and normalised again, as vLLM's
    pooler does for `dimensions`."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def as_base64(vector: list[float]) -> str:
    """OpenAI's `base64` encoding: the vector's little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_list(
    model: str,
    vectors: list[list[float]],
    usage: Usage,
    *,
    encoding_format: Literal["float", "base64"],
    dimensions: int | None,
) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(vectors):
        cut = shortened(vector, dimensions)
        data.append(
            {
                "object": "embedding",
                "index": i,
                "embedding": as_base64(cut) if encoding_format == "base64" else cut,
            }
        )
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }
