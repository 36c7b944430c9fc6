"""The OpenAI chat-completions request as we accept it (unknown fields are ignored, as OpenAI's
SDK only sends what the caller set); extensions are documented in the README."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


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


# Tool and function names as OpenAI allows them.
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20
MAX_STOPS = 64
MAX_TOOLS = 128


# `stop` and `logit_bias` as chat and legacy completions take them (each request model's
# validators and accessors).
def check_stops(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences")
    if value == "" or (isinstance(value, list) and "" in value):
        raise ValueError("stop sequences must not be empty")
    return value


def check_logit_bias(value: dict[str, float] | None) -> dict[str, float] | None:
    for token, bias in (value or {}).items():
        if not token.isdigit():
            raise ValueError(f"keys are token ids; {token!r} is not one")
        if not -100 <= bias <= 100:
            raise ValueError(f"the bias of token {token} must be within -100..100")
    return value


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def logit_bias_ids(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    if not logit_bias:
        return None
    return {int(token): bias for token, bias in logit_bias.items()}


class ContentPart(BaseModel):
    """One part of a message's content. Only text is read; the other kinds OpenAI defines
    (`image_url`, `input_audio`, `file`) are accepted here so that the edge can refuse them with
    a message naming what the model reads, not a parser's path."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(max_length=64)
    text: Text | None = None


class FunctionCallIn(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)
    arguments: Text = Field(max_length=1024 * 1024)


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Checked in this order: `content` is checked knowing the role and the calls.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)
    content: Text | list[ContentPart] | None = Field(default=None, validate_default=True)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def other_parts(self) -> list[str]:
        """Kinds of content parts that are not text (images, audio, files)."""
        if not isinstance(self.content, list):
            return []
        return [part.type for part in self.content if part.type != "text"]

    @field_validator("tool_calls")
    @classmethod
    def calls_by_assistants(
        cls, value: list[ToolCallIn] | None, info: ValidationInfo
    ) -> list[ToolCallIn] | None:
        if value and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return value

    @field_validator("tool_call_id")
    @classmethod
    def tool_answers_a_call(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("role") == "tool" and not value:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return value

    @field_validator("content")
    @classmethod
    def content_present(
        cls, value: str | list[ContentPart] | None, info: ValidationInfo
    ) -> str | list[ContentPart] | None:
        if value is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("content is required (null only for an assistant message with tool_calls)")
        if isinstance(value, list):
            for part in value:
                if part.type == "text" and part.text is None:
                    raise ValueError("a text part needs its text")
        return value


class StreamOptions(BaseModel):
    include_usage: bool = False


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=FUNCTION_NAME)
    description: Text | None = Field(default=None, max_length=64 * 1024)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoiceIn(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(default="response", pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaIn | None = None

    @model_validator(mode="after")
    def schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("json_schema.schema is required for the json_schema format")
        return self


class ChatCompletionRequest(BaseModel):
    """Parameters OpenAI accepts that a text model has no use for (`reasoning_effort`,
    `metadata`, `service_tier`, `prediction`, ...) are unknown fields here, ignored as
    OpenAI-compatible servers do."""

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
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    # Legacy function calling (replaced by `tools`): refused with a pointer to `tools`.
    functions: list[Any] | None = None
    function_call: Any = None
    # OpenAI's: whether the exchange is kept (here: as a conversation in history).
    store: bool | None = None
    # vLLM's sampling extensions.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    # Extensions.
    timeout: float | None = Field(default=None, gt=0, description="deadline in seconds")
    ignore_eos: bool = False
    disconnect: Literal["cancel", "detach"] | None = None
    # The conversation this turn belongs to (history); with `store` (or a login session) and
    # without one, a new conversation starts and its id comes back (body field and
    # `X-Conversation-Id` header).
    conversation_id: str | None = Field(default=None, max_length=64)
    # Another answer to the conversation's last user message (Regenerate): history stores the
    # new answer without storing that message a second time.
    regenerate: bool = False

    bounded_stops = field_validator("stop")(check_stops)
    token_biases = field_validator("logit_bias")(check_logit_bias)

    @field_validator("functions", "function_call")
    @classmethod
    def no_legacy_functions(cls, value: Any) -> Any:
        if value:
            raise ValueError("legacy function calling is not supported; use tools and tool_choice")
        return value

    def stops(self) -> list[str]:
        return stop_list(self.stop)

    def wanted_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def tools_active(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"
