"""Event contracts of the log (DESIGN.md §3), versioned with `schema_version`.

Rules: add fields only with defaults; a breaking change gets a new version and an upcaster in
`parse_event`. Times are Unix epoch seconds (float) so every service can compare them.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1

Role = Literal["system", "user", "assistant", "tool"]
DisconnectPolicy = Literal["cancel", "detach"]
CancelReason = Literal["client", "deadline", "shutdown"]
# `title`: a conversation title the history service asks the model for (low priority); not a
# message of the conversation. `completion`: the legacy `/v1/completions` (a raw prompt, no chat
# template). `embedding`: `/v1/embeddings`, served by a worker of the embedding kind.
# `response`: `/v1/responses` (a chat request that carries `ResponseFacts`).
RequestKind = Literal["chat", "title", "completion", "embedding", "response"]
# The kinds a conversation stores (history) and the jobs list shows.
CONVERSATION_KINDS = frozenset({"chat", "response"})
# How the request came in: a chat completion (someone usually watches it live), a job
# (`POST /v1/jobs`, fetched later; may carry a completion webhook) or a line of a batch
# (`POST /v1/batches`; its request id names the batch and the line).
RequestSource = Literal["chat", "job", "batch"]
# vLLM's priority scheduling: lower runs first.
PRIORITY_DEFAULT = 0
PRIORITY_BACKGROUND = 10


class _Contract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class FunctionCall(_Contract):
    name: str
    # JSON text, as the model wrote it (OpenAI's shape: a string, not an object).
    arguments: str


class ToolCall(_Contract):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def tool_call_id(request_id: str, choice: int, position: int) -> str:
    """The id of a request's tool call: the same for every reader that derives it (the edge
    names a streamed call before the terminal event exists; history and replays agree)."""
    digest = hashlib.sha256(f"{request_id}:{choice}:{position}".encode()).hexdigest()
    return f"chatcmpl-tool-{digest[:32]}"


class ChatMessage(_Contract):
    role: Role
    # "" for an assistant message that only calls tools (OpenAI's `content: null`).
    content: str
    # An assistant's calls; a `tool` message answers one of them by `tool_call_id`.
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


class FunctionTool(_Contract):
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str
    description: str | None = None
    # A JSON Schema (checked by the edge); None: the function takes no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(_Contract):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`: that call, forced."""

    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormat(_Contract):
    """Structured output, enforced by the engine's constrained decoding."""

    type: Literal["text", "json_object", "json_schema", "structural_tag"] = "text"
    # The schema itself for `json_schema` (checked by the edge).
    json_schema: dict[str, Any] | None = None
    # `structural_tag` (the worker's own, never from a client): a forced tool call in the
    # model's own call format, as vLLM's tool parser constrains it.
    structural_tag: str | None = None


class TopLogprob(_Contract):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Contract):
    """One generated token's log probability and, when asked for, the most likely ones
    (vLLM's order: as its sampler returns them)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[TopLogprob] = Field(default_factory=list)


class PromptLogprob(_Contract):
    """A prompt token's log probability (`completion` with `echo` and `logprobs`), in the legacy
    completions' shape: `top` maps each likely token's text to its log probability (tokens that
    decode alike collapse, as in vLLM). The first token has neither (nothing precedes it)."""

    token: str
    logprob: float | None = None
    top: dict[str, float] | None = None


class ResponseFacts(_Contract):
    """What a `/v1/responses` request adds to a chat request: what its Response object echoes,
    and what a later `previous_response_id` continues from. Carried by the request and repeated
    by its `started` and terminal events (like the other facts), so a response is read back
    from the log alone, at any edge."""

    # The request's own input items, in OpenAI's item shape (each with its id); a chain's
    # earlier items belong to the responses before it.
    input: list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    store: bool = True
    # The request's other fields as the Response object shows them (temperature, top_p,
    # max_output_tokens, tools, tool_choice, parallel_tool_calls, text).
    echo: dict[str, Any] = Field(default_factory=dict)


class GenerationParams(_Contract):
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    # Benchmarks need fixed output lengths; never set by the public API's defaults.
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's extensions (None: the engine's default).
    repetition_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    # Token id -> bias added to its logit (OpenAI's -100..100).
    logit_bias: dict[int, float] | None = None
    # None: no log probabilities; k: the sampled token's and the k most likely (0..20).
    logprobs: int | None = None
    # Choices generated for the one request (each its own `index`).
    n: int = Field(default=1, ge=1)
    response_format: ResponseFormat | None = None
    # False where a tool-call parser needs the special tokens that mark calls (vLLM's hermes).
    skip_special_tokens: bool = True


class ChatRequested(_Contract):
    """Published on `chat.v1.requests.<model>` with `Nats-Msg-Id = request_id`."""

    schema_version: int = SCHEMA_VERSION
    type: Literal["requested"] = "requested"
    request_id: str
    model: str
    messages: list[ChatMessage]
    params: GenerationParams = Field(default_factory=GenerationParams)
    user_id: str | None = None
    api_key_id: str | None = None
    conversation_id: str | None = None
    # Another answer to a user message the conversation already holds: not stored again.
    regenerate: bool = False
    kind: RequestKind = "chat"
    priority: int = PRIORITY_DEFAULT
    # W3C trace id (32 hex digits) of the request: from the caller's `traceparent`, else new.
    trace_id: str | None = None
    stream: bool = False
    disconnect: DisconnectPolicy = "cancel"
    source: RequestSource = "chat"
    # Jobs only: where the completion webhook goes (checked by the edge when submitted).
    webhook_url: str | None = None
    created_at: float
    deadline: float
    # Tool calling (chat only): the functions offered and how the model may use them.
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    # `completion`: the raw prompt (text or token ids; no chat template) and whether the answer
    # starts with it (`echo`).
    prompt: str | list[int] | None = None
    echo: bool = False
    # `embedding`: the inputs (texts or token id arrays).
    inputs: list[str] | list[list[int]] | None = None
    # Kind `response`: its Responses API fields.
    response: ResponseFacts | None = None
    # An attempt that cannot continue where the one before stopped fails (retriable) instead of
    # starting the answer over: its text may already have been shown to someone (a streamed or
    # background response, whose API has no way to take text back).
    no_reset: bool = False
    # Where the request is stored in CHAT_REQUESTS: set by its reader (`parse_request`), never
    # published. Its events repeat it (`request_seq`), so erasing a request finds its message.
    log_seq: int | None = Field(default=None, exclude=True)

    def tools_active(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def facts(self) -> dict[str, Any]:
        """What the `started` and terminal events repeat from the request, so consumers
        (history, usage) read one stream and need no join: the new turn (the last message when
        it is the user's), the system prompt, the conversation and the model."""
        last = self.messages[-1] if self.messages else None
        first = self.messages[0] if self.messages else None
        return {
            "user_id": self.user_id,
            "api_key_id": self.api_key_id,
            "model": self.model,
            "conversation_id": self.conversation_id,
            "kind": self.kind,
            "trace_id": self.trace_id,
            "created_at": self.created_at,
            "source": self.source,
            "webhook_url": self.webhook_url,
            "user_message": (
                last.content if last is not None and last.role == "user" and not self.regenerate else None
            ),
            "system_prompt": first.content if first is not None and first.role == "system" else None,
            # Like the user message, stored once: not again by a regenerated answer.
            "tool_results": [] if self.regenerate else self.tool_results(),
            "request_seq": self.log_seq,
            "response": self.response,
        }

    def tool_results(self) -> list[ChatMessage]:
        """The turn's tool answers: the `tool` messages after the last assistant message."""
        results: list[ChatMessage] = []
        for message in reversed(self.messages):
            if message.role != "tool":
                break
            results.append(message)
        return results[::-1]


class Usage(_Contract):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Timings(_Contract):
    """Milliseconds. TTFT and end-to-end are measured from the edge's `created_at`."""

    queue_ms: float = 0.0
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float = 0.0


class _Event(_Contract):
    schema_version: int = SCHEMA_VERSION
    request_id: str
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0)
    worker_id: str
    ts: float
    # The caller, copied from the request: consumers need no join to attribute an event.
    user_id: str | None = None
    api_key_id: str | None = None


class _WithFacts(_Event):
    """Facts of the request (`ChatRequested.facts`), on `started` and on terminal events (a
    request cancelled while queued ends without a `started`)."""

    model: str | None = None
    conversation_id: str | None = None
    kind: RequestKind = "chat"
    trace_id: str | None = None
    created_at: float | None = None
    source: RequestSource = "chat"
    webhook_url: str | None = None
    user_message: str | None = None
    system_prompt: str | None = None
    tool_results: list[ChatMessage] = Field(default_factory=list)
    response: ResponseFacts | None = None
    # The request's sequence in CHAT_REQUESTS (`forgetting` deletes it by that); None in logs
    # written before it was recorded.
    request_seq: int | None = None


class Started(_WithFacts):
    type: Literal["started"] = "started"
    queue_ms: float
    prompt_tokens: int
    # The engine's model (path or id): token ids only carry over to a worker of the same one.
    engine_model: str | None = None
    # Failover with continuation: this attempt goes on after the first `resumed_tokens`
    # generated tokens (whose text is the first `resumed_chars` characters of the answer) that
    # earlier attempts stored. 0 for a first attempt and after a `reset`.
    resumed_tokens: int = 0
    resumed_chars: int = 0
    # Tool calling with `tool_choice: auto`: the text that opens a tool call in this model's
    # output (its tool-call parser's marker). A streaming reader holds back text that may be
    # its beginning; None: the answer holds no tool-call markup it has to hide.
    tool_call_start: str | None = None
    # `completion` with `echo`: the prompt's text, which the answer starts with (a streaming
    # reader sends it first); with `logprobs` also its tokens' log probabilities, known only
    # once the engine has read the prompt: such a request's `started` comes after its prefill.
    echo_text: str | None = None
    prompt_logprobs: list[PromptLogprob] | None = None


class Reset(_Event):
    """An attempt that cannot continue where a dead one stopped starts the answer over: readers
    drop the text they hold for the request (the edge's OpenAI stream skips what it already
    sent instead). Published right after that attempt's `started` (whose `resumed_tokens` is 0);
    logs written before fencing have it before."""

    type: Literal["reset"] = "reset"
    reason: str


class Delta(_Event):
    type: Literal["delta"] = "delta"
    text: str
    token_ids: list[int]
    # One per token id, when the request asked for log probabilities.
    logprobs: list[TokenLogprob] | None = None
    # The choice (`n` > 1) these tokens belong to.
    index: int = 0


class Choice(_Contract):
    """One choice of a finished request: choice 0's outcome is also the terminal event's own
    fields (`text`, `finish_reason`, `tool_calls`, ...); `choices` lists every one when `n` > 1."""

    index: int
    text: str
    finish_reason: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    content: str | None = None
    logprobs: list[TokenLogprob] | None = None
    completion_tokens: int = 0


class Completed(_WithFacts):
    type: Literal["completed"] = "completed"
    finish_reason: str
    # The raw generated text (the deltas' texts joined), tool-call markup included.
    text: str
    usage: Usage
    timings: Timings
    # The calls parsed from `text` (finish_reason `tool_calls`, or `stop` for a forced named
    # call, as OpenAI does), and the text without their markup (None: `text` as it is).
    tool_calls: list[ToolCall] = Field(default_factory=list)
    content: str | None = None
    logprobs: list[TokenLogprob] | None = None
    # `completion` with `echo`: the prompt's text, which the answer starts with.
    echo_text: str | None = None
    # `n` > 1: every choice, choice 0 included (usage counts them all).
    choices: list[Choice] = Field(default_factory=list)
    # `embedding`: one vector per input, in input order.
    embeddings: list[list[float]] | None = None

    def visible_content(self) -> str | None:
        """The assistant message's `content`: None when it only calls tools."""
        if self.content is not None:
            return self.content or None
        return None if self.tool_calls and not self.text else self.text


class Failed(_WithFacts):
    type: Literal["failed"] = "failed"
    code: str
    message: str
    retriable: bool = False
    # `invalid_request`: the request field at fault, when known (OpenAI's `param`).
    param: str | None = None
    text: str = ""
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)


class Cancelled(_WithFacts):
    type: Literal["cancelled"] = "cancelled"
    reason: CancelReason
    text: str = ""
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)


class Released(_Event):
    """The worker handed the request back unfinished on purpose (it is shutting down and its
    drain time ran out): another worker continues it. Unlike a crash, this attempt does not
    count towards the request being poison."""

    type: Literal["released"] = "released"
    reason: str


ChatEvent = Annotated[
    Started | Delta | Reset | Released | Completed | Failed | Cancelled, Field(discriminator="type")
]
TerminalEvent = Completed | Failed | Cancelled
TERMINAL_TYPES = frozenset({"completed", "failed", "cancelled"})

AnyEvent = Started | Delta | Reset | Released | Completed | Failed | Cancelled
_event_adapter: TypeAdapter[AnyEvent] = TypeAdapter(ChatEvent)


class UnsupportedSchemaVersion(ValueError):
    pass


def parse_event(data: bytes | str) -> AnyEvent:
    event = _event_adapter.validate_json(data)
    if event.schema_version > SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(f"event schema {event.schema_version} is newer than ours")
    return event


def parse_request(data: bytes | str, *, log_seq: int | None = None) -> ChatRequested:
    """A request as stored; `log_seq` is where (its stream sequence), when read from the log."""
    request = ChatRequested.model_validate_json(data)
    if request.schema_version > SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(f"request schema {request.schema_version} is too new")
    return request if log_seq is None else request.model_copy(update={"log_seq": log_seq})


def is_terminal(event: _Event) -> bool:
    return getattr(event, "type", "") in TERMINAL_TYPES


class CancelRequest(_Contract):
    """Core NATS message on `chat.v1.cancel.<request_id>` (the KV entry covers queued ones)."""

    request_id: str
    reason: CancelReason = "client"


class ModelCapabilities(_Contract):
    """What a served model can do, as its profile declares (the edge refuses the rest)."""

    # `chat` (chat and legacy completions) or `embedding` (only `/v1/embeddings`).
    kind: Literal["chat", "embedding"] = "chat"
    tools: bool = True
    json_output: bool = True
    # Input modalities: `text`, `image`, `audio`.
    modalities: list[str] = Field(default_factory=lambda: ["text"])
    # Fill-in-the-middle (`suffix` on `/v1/completions`).
    fim: bool = False
    # `embedding`: the vector size, and whether `dimensions` may shorten it.
    dimensions: int | None = None
    matryoshka: bool = False


# A worker's state: `ready` serves its model; the others are steps of a model switch (nothing
# is served meanwhile); `failed`: a switch failed and so did the return to the old model.
WorkerStateName = Literal["ready", "draining", "unloading", "checking", "loading", "failed"]
SwitchStep = Literal["draining", "unloading", "checking", "loading", "ready", "failed", "rolled_back"]


class HardwareInfo(_Contract):
    """What a worker runs on, as it detected it (NVML on a GPU worker, RAM on a CPU one)."""

    kind: Literal["cpu", "gpu"] = "cpu"
    summary: str = ""
    # Per device (GPU): name and memory in bytes.
    devices: list[dict[str, Any]] = Field(default_factory=list)
    ram_bytes: int = 0


class SwitchStatus(_Contract):
    """A model switch as it goes: its current step, and why it failed or rolled back."""

    switch_id: str
    source: str = Field(serialization_alias="from", validation_alias=AliasChoices("from", "source"))
    target: str
    step: SwitchStep
    # Loading: a rough fraction (the engine reports no finer progress than its phases).
    progress: float | None = None
    message: str = ""
    error: str | None = None
    requested_by: str | None = None
    started_at: float
    updated_at: float


class WorkerInfo(_Contract):
    """A worker's heartbeat in the model registry (KV, expires by TTL)."""

    schema_version: int = SCHEMA_VERSION
    model: str
    engine_model: str
    worker_id: str
    capacity: int
    running: int
    max_model_len: int
    version: str
    heartbeat_at: float
    started_at: float
    capabilities: ModelCapabilities = Field(default_factory=ModelCapabilities)
    # Only `ready` workers are routed to; the others show a switch's progress.
    state: WorkerStateName = "ready"
    switch: SwitchStatus | None = None
    hardware: HardwareInfo | None = None


class ServedModel(_Contract):
    """A model some worker served lately (KV, kept for days): what the edge knows of it once
    its last worker is gone, so that its requests queue (until their deadline or a worker
    comes back) instead of being refused as unknown."""

    model: str
    max_model_len: int
    capabilities: ModelCapabilities = Field(default_factory=ModelCapabilities)
    seen_at: float


class SwitchModel(_Contract):
    """Request-reply to one worker: load another profile (refused before anything is unloaded
    when the profile is unknown, does not fit, or a switch is under way)."""

    profile: str
    requested_by: str | None = None
    switch_id: str


class SwitchReply(_Contract):
    accepted: bool
    # When refused: `profile_not_found`, `does_not_fit`, `switch_in_progress`, `same_profile`.
    code: str | None = None
    message: str = ""
    source: str = Field(
        default="", serialization_alias="from", validation_alias=AliasChoices("from", "source")
    )
    target: str = ""


class CatalogVerdict(_Contract):
    """The hardware check of one profile on one worker (`llmchat_worker.hardware`)."""

    worker_id: str
    hardware: str
    verdict: Literal["fits", "fits_with_changes", "does_not_fit", "unknown"]
    reason: str
    suggestion: str | None = None
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    activation_bytes: int = 0
    available_bytes: int = 0


class CatalogProfile(_Contract):
    alias: str
    model: str
    kind: Literal["chat", "embedding"] = "chat"
    source: Literal["builtin", "operator"] = "builtin"
    description: str = ""
    dtype: str = "auto"
    quantization: str | None = None
    tensor_parallel_size: int = 1
    max_model_len: int = 0
    max_num_seqs: int = 0
    tool_call_parser: str | None = None
    # `model` (the tokenizer's own), a template file's name, or `chatml (fallback)`.
    chat_template: str = "model"
    chat_template_fallback: bool = False
    parameters: int | None = None
    verdicts: list[CatalogVerdict] = Field(default_factory=list)


class CatalogReply(_Contract):
    """A worker's catalog: every profile it can load, checked against its hardware."""

    profiles: list[CatalogProfile]


class AuditEvent(_Contract):
    """An operator's action, on the audit stream (`audit.v1.<action>`): who, what, when."""

    schema_version: int = SCHEMA_VERSION
    action: str
    actor: str | None = None
    target: str
    detail: dict[str, Any] = Field(default_factory=dict)
    outcome: str
    ts: float
