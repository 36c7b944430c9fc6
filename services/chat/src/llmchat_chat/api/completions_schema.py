"""The legacy OpenAI completions request (`POST /v1/completions`) as we accept it.

`prompt` takes OpenAI's four forms: a string, an array of strings, an array of token ids, or an
array of token-id arrays; an array of several prompts asks for a completion of each. It is read
by hand rather than as a pydantic union, so that a bad one gets one message naming `prompt` (and
the item), not one error per union member. Unknown fields are ignored, as OpenAI's SDK sends only
what the caller set; vLLM's sampling extensions are read as on chat completions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from llmchat_chat.api.schemas import (
    MAX_CHOICES,
    StreamOptions,
    Text,
    check_logit_bias,
    check_stops,
    logit_bias_ids,
    stop_list,
)
from llmchat_chat.errors import ApiError

# The legacy API's bound on `logprobs` (the most likely tokens reported per position).
MAX_LEGACY_LOGPROBS = 5
# OpenAI's and vLLM's default for completions (chat completions default to the whole context).
DEFAULT_MAX_TOKENS = 16
# Prompts per call: each is a request of its own (queue slot, limits, usage); more belong in a
# batch.
MAX_PROMPTS = 16

PROMPT_FORMS = "a string, an array of strings, an array of token ids, or an array of token-id arrays"
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
PromptSchema = WithJsonSchema(
    {
        "description": f"what to complete: {PROMPT_FORMS} (several prompts: a completion of each)",
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_PROMPTS},
            _TOKEN_IDS,
            {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": MAX_PROMPTS},
        ],
    }
)

Prompt = str | list[int]


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=256)
    prompt: Annotated[Any, PromptSchema]
    # Fill-in-the-middle: refused unless the model can (see completions.check_request).
    suffix: Text | None = None
    # null means the default, as in vLLM; 0 with `echo` returns the prompt alone.
    max_tokens: int | None = Field(default=DEFAULT_MAX_TOKENS, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    # Only as many as `n` (the server-side best-of-n is not offered).
    best_of: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LEGACY_LOGPROBS)
    echo: bool | None = False
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    # OpenAI's end-user id: accepted and ignored (the caller is known from its credentials).
    user: str | None = Field(default=None, max_length=256)
    # vLLM's sampling extensions.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    ignore_eos: bool = False
    # Extensions, as on chat completions.
    timeout: float | None = Field(default=None, gt=0, description="deadline in seconds")
    disconnect: Literal["cancel", "detach"] | None = None

    bounded_stops = field_validator("stop")(check_stops)
    token_biases = field_validator("logit_bias")(check_logit_bias)

    def stops(self) -> list[str]:
        return stop_list(self.stop)

    def choices(self) -> int:
        return self.n or 1

    def answer_tokens(self) -> int:
        return DEFAULT_MAX_TOKENS if self.max_tokens is None else self.max_tokens

    def logit_bias_ids(self) -> dict[int, float] | None:
        return logit_bias_ids(self.logit_bias)


def _bad(message: str) -> ApiError:
    return ApiError(message, param="prompt")


def _token_ids(value: list[Any], where: str) -> list[int]:
    if not value:
        raise _bad(f"{where} is an empty array of token ids")
    for item in value:
        # JSON's true/false are not token ids, though Python's bool is an int.
        if not isinstance(item, int) or isinstance(item, bool) or item < 0:
            raise _bad(f"{where} must hold token ids (integers from 0); it holds {item!r}")
    return list(value)


def parse_prompt(value: Any, *, max_chars: int) -> list[Prompt]:
    """The prompts to complete, each a string or an array of token ids (400 naming `prompt`)."""
    if isinstance(value, str):
        prompts: list[Prompt] = [value]
    elif isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            if not all(isinstance(item, str) for item in value):
                raise _bad(f"prompt must be {PROMPT_FORMS}; this array mixes strings with other values")
            prompts = list(value)
        elif isinstance(first, list):
            if not all(isinstance(item, list) for item in value):
                raise _bad(f"prompt must be {PROMPT_FORMS}; this array mixes arrays with other values")
            prompts = [_token_ids(item, f"prompt[{i}]") for i, item in enumerate(value)]
        else:
            prompts = [_token_ids(value, "prompt")]
    elif isinstance(value, list):
        raise _bad("prompt is an empty array")
    else:
        raise _bad(f"prompt must be {PROMPT_FORMS}")
    if len(prompts) > MAX_PROMPTS:
        raise _bad(
            f"at most {MAX_PROMPTS} prompts per request (there are {len(prompts)}); use a batch for more"
        )
    for i, prompt in enumerate(prompts):
        where = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
        if isinstance(prompt, str):
            _encodable(prompt, where)
            if len(prompt) > max_chars:
                raise _bad(f"{where} has {len(prompt)} characters; at most {max_chars}")
    return prompts


def _encodable(text: str, where: str) -> None:
    # JSON allows escaped lone surrogates; no UTF-8 text (the broker, the tokenizer) can hold them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{where} must be valid Unicode text (it holds a lone surrogate)") from None
