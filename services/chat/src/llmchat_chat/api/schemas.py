"""The OpenAI chat-completions request as we accept it (unknown fields are ignored, as OpenAI's
SDK only sends what the caller set); extensions are documented in the README."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


def _encodable(value: str) -> str:
    # JSON allows escaped lone surrogates ("\ud800"); no UTF-8 text can hold them, so nothing
    # downstream (the broker, the tokenizer, Postgres) could: a client error, caught here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


# Every string the edge forwards anywhere.
Text = Annotated[str, AfterValidator(_encodable)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1, max_length=256)
    messages: list[MessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    n: int | None = None
    user: str | None = Field(default=None, max_length=256)
    # Not supported yet: refused with a 400 rather than silently ignored.
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    response_format: dict[str, Any] | None = None
    # Extensions.
    timeout: float | None = Field(default=None, gt=0, description="deadline in seconds")
    ignore_eos: bool = False
    disconnect: Literal["cancel", "detach"] | None = None
    # The conversation this turn belongs to (history); without one a new conversation starts
    # and its id comes back (body field and `X-Conversation-Id` header).
    conversation_id: str | None = Field(default=None, max_length=64)
    # Another answer to the conversation's last user message (Regenerate): history stores the
    # new answer without storing that message a second time.
    regenerate: bool = False

    @field_validator("n")
    @classmethod
    def only_one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tool and function calling are not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("response_format")
    @classmethod
    def text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "text") != "text":
            raise ValueError("only the text response format is supported")
        return value

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def wanted_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
