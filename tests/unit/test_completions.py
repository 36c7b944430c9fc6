"""Legacy completions: the wire format built from events (vLLM's shapes), the prompt's four
forms, and the worker's runner for `kind: completion` (raw prompt, echo, the prompt's log
probabilities before any token)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any, cast

import pytest
from llmchat_metrics.jobs import row_of_request

from llmchat_chat.api.completions import check_request
from llmchat_chat.api.completions_format import (
    CompletionChunkWriter,
    Echo,
    LogprobEntry,
    TextChoiceStream,
    completion_choices,
    generated_entries,
    legacy_logprobs,
    prompt_entries,
)
from llmchat_chat.api.completions_schema import MAX_PROMPTS, CompletionRequest, parse_prompt
from llmchat_chat.errors import ApiError
from llmchat_common.contracts import (
    ChatRequested,
    Choice,
    Completed,
    Delta,
    Failed,
    GenerationParams,
    ModelCapabilities,
    PromptLogprob,
    Started,
    Timings,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llmchat_worker.handlers import RequestConsumer
from llmchat_worker.service import CoalesceConfig, RequestRunner, Resume, TokenChunk
from tests.unit.sinks import ListSink


def lp(token: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob, top=[TopLogprob(token=t, logprob=v) for t, v in top])


PROMPT_LPS = [
    PromptLogprob(token="Hello"),
    PromptLogprob(token=" world", logprob=-2.0, top={" world": -2.0, " there": -0.5}),
]


def test_legacy_logprobs_offsets_count_token_lengths_from_the_start() -> None:
    entries = generated_entries([lp("ab", -0.1, ("ab", -0.1), ("c", -3.0)), lp(" d", -1.5, ("x", -0.2))])
    body, end = legacy_logprobs(entries, start=5)
    assert body == {
        "tokens": ["ab", " d"],
        "token_logprobs": [-0.1, -1.5],
        "top_logprobs": [{"ab": -0.1, "c": -3.0}, {"x": -0.2}],
        "text_offset": [5, 7],
    }
    assert end == 9
    assert legacy_logprobs([], start=3) == (
        {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
        3,
    )


def test_top_logprobs_of_tokens_that_decode_alike_collapse_as_in_vllm() -> None:
    [entry] = generated_entries([lp("a", -1.0, ("a", -1.0), ("b", -2.0), ("a", -3.0))])
    assert entry.top == {"a": -3.0, "b": -2.0}
    assert list(entry.top) == ["a", "b"]


def test_prompt_logprobs_first_token_is_null() -> None:
    body, end = legacy_logprobs([*prompt_entries(PROMPT_LPS), LogprobEntry("!", -0.3, {"!": -0.3})])
    assert body["tokens"] == ["Hello", " world", "!"]
    assert body["token_logprobs"] == [None, -2.0, -0.3]
    assert body["top_logprobs"] == [None, {" world": -2.0, " there": -0.5}, {"!": -0.3}]
    assert body["text_offset"] == [0, 5, 11]
    assert end == 12


def completed(text: str, logprobs: list[TokenLogprob] | None = None, **extra: Any) -> Completed:
    return Completed(
        request_id="cmpl-1",
        attempt=1,
        seq=3,
        worker_id="w",
        ts=1.0,
        kind="completion",
        finish_reason="length",
        text=text,
        usage=Usage(prompt_tokens=2, completion_tokens=2),
        timings=Timings(),
        logprobs=logprobs,
        **extra,
    )


def test_choice_with_echo_starts_with_the_prompt_and_its_logprobs() -> None:
    event = completed(
        " ok!", [lp(" ok", -0.1, (" ok", -0.1)), lp("!", -0.2, ("!", -0.2))], echo_text="Hello world"
    )
    [choice] = completion_choices(event, echo=Echo("Hello world", PROMPT_LPS), logprobs=True, first_index=4)
    assert (
        choice["index"] == 4 and choice["text"] == "Hello world ok!" and choice["finish_reason"] == "length"
    )
    assert choice["logprobs"]["tokens"] == ["Hello", " world", " ok", "!"]
    assert choice["logprobs"]["token_logprobs"] == [None, -2.0, -0.1, -0.2]
    assert choice["logprobs"]["text_offset"] == [0, 5, 11, 14]
    [plain] = completion_choices(event, echo=None, logprobs=False)
    assert plain == {"index": 0, "text": " ok!", "logprobs": None, "finish_reason": "length"}


def test_choices_of_several_answers_are_indexed_after_the_prompts_before() -> None:
    event = completed(
        "a",
        choices=[
            Choice(index=0, text="a", finish_reason="stop"),
            Choice(index=1, text="b", finish_reason="length"),
        ],
    )
    choices = completion_choices(event, echo=Echo("P: "), logprobs=False, first_index=2)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in choices] == [
        (2, "P: a", "stop"),
        (3, "P: b", "length"),
    ]


def delta(seq: int, text: str, ids: list[int], logprobs: list[TokenLogprob] | None = None) -> Delta:
    return Delta(
        request_id="cmpl-1",
        attempt=1,
        seq=seq,
        worker_id="w",
        ts=1.0,
        text=text,
        token_ids=ids,
        logprobs=logprobs,
    )


def started(echo_text: str | None = None, prompt_logprobs: list[PromptLogprob] | None = None) -> Started:
    return Started(
        request_id="cmpl-1",
        attempt=1,
        seq=0,
        worker_id="w",
        ts=1.0,
        queue_ms=1.0,
        prompt_tokens=2,
        kind="completion",
        echo_text=echo_text,
        prompt_logprobs=prompt_logprobs,
    )


def chunks_of(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f)["choices"][0] for f in frames]


def test_stream_sends_the_echo_with_the_first_text_and_offsets_run_on() -> None:
    writer = CompletionChunkWriter("cmpl-1", "m", 1, include_usage=False)
    stream = TextChoiceStream(writer, 0, echo=True, logprobs=True)
    assert stream.current(started("Hello world", PROMPT_LPS))
    first = chunks_of(stream.delta(delta(1, " ok", [7], [lp(" ok", -0.1, (" ok", -0.1))])))
    # A token whose text is held back still reports its log probability, with no text.
    held = chunks_of(stream.delta(delta(2, "", [8], [lp("\ufffd", -0.4, ("\ufffd", -0.4))])))
    second = chunks_of(stream.delta(delta(3, "!", [9], [lp("!", -0.2, ("!", -0.2))])))
    assert first[0]["text"] == "Hello world ok"
    assert first[0]["logprobs"]["tokens"] == ["Hello", " world", " ok"]
    assert first[0]["logprobs"]["text_offset"] == [0, 5, 11]
    assert held[0]["text"] == "" and held[0]["logprobs"]["text_offset"] == [14]
    assert second[0]["text"] == "!" and second[0]["logprobs"]["text_offset"] == [15]
    end = chunks_of(stream.finish(Choice(index=0, text=" ok!", finish_reason="stop"), completed(" ok!")))
    assert end == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]


def test_stream_echo_without_any_text_goes_out_with_the_finish() -> None:
    writer = CompletionChunkWriter("cmpl-1", "m", 1, include_usage=True)
    stream = TextChoiceStream(writer, 3, echo=True, logprobs=False)
    stream.current(started("Only the prompt"))
    frames = stream.finish(Choice(index=0, text="", finish_reason="length"), completed(""))
    assert [json.loads(f)["usage"] for f in frames] == [None, None]
    assert chunks_of(frames) == [
        {"index": 3, "text": "Only the prompt", "logprobs": None, "finish_reason": None},
        {"index": 3, "text": "", "logprobs": None, "finish_reason": "length"},
    ]
    usage = json.loads(writer.usage(Usage(prompt_tokens=3, completion_tokens=0)))
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 0,
        "total_tokens": 3,
    }
    assert usage["object"] == "text_completion"


def test_prompt_forms() -> None:
    assert parse_prompt("hi", max_chars=10) == ["hi"]
    assert parse_prompt(["a", "b"], max_chars=10) == ["a", "b"]
    assert parse_prompt([1, 2, 3], max_chars=10) == [[1, 2, 3]]
    assert parse_prompt([[1], [2, 3]], max_chars=10) == [[1], [2, 3]]


@pytest.mark.parametrize(
    "value",
    [
        [],
        [[]],
        [1, "a"],
        ["a", 1],
        [[1], 2],
        [True, 2],
        [-1],
        {"text": "hi"},
        None,
        "x" * 11,
        ["a"] * (MAX_PROMPTS + 1),
        "\ud800",
    ],
)
def test_bad_prompts_name_prompt(value: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_prompt(value, max_chars=10)
    assert caught.value.param == "prompt"


class PromptEngine:
    """A scripted engine that serves completions: the prompt's words are its tokens."""

    max_model_len = 64
    model_path = "scripted"
    stop_token_ids = frozenset({0})

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def encode_chat(self, messages: Any, tools: Any = None) -> list[int]:
        raise AssertionError("a completion has no chat template")

    def encode_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        if isinstance(prompt, str):
            return [len(w) for w in prompt.split()], prompt
        if any(i > 99 for i in prompt):
            raise ValueError("token id outside the vocabulary")
        return list(prompt), " ".join(f"w{i}" for i in prompt)

    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i} " for i in ids)

    async def generate(
        self,
        key: str,
        prompt_ids: list[int],
        params: GenerationParams,
        max_tokens: int,
        priority: int = 0,
        trace_headers: Mapping[str, str] | None = None,
        *,
        all_top: bool = False,
        prompt_logprobs: bool = False,
    ) -> AsyncIterator[TokenChunk]:
        self.calls.append({"prompt_ids": prompt_ids, "all_top": all_top, "prompt_logprobs": prompt_logprobs})
        plps = [PromptLogprob(token="p")] if prompt_logprobs else None
        for i in range(max_tokens):
            logprobs = [lp(f"t{i} ", -0.5)] if params.logprobs is not None else None
            last = i == max_tokens - 1
            yield TokenChunk(f"t{i} ", [10 + i], "length" if last else None, logprobs, prompt_logprobs=plps)
            plps = None

    async def abort(self, key: str) -> None:
        pass


def completion_request(
    prompt: str | list[int], *, echo: bool = False, logprobs: int | None = None
) -> ChatRequested:
    now = time.time()
    return ChatRequested(
        request_id="cmpl-test",
        model="m",
        messages=[],
        kind="completion",
        prompt=prompt,
        echo=echo,
        params=GenerationParams(max_tokens=3, logprobs=logprobs),
        created_at=now,
        deadline=now + 30,
    )


async def run(engine: Any, request: ChatRequested) -> tuple[object, list[object]]:
    sink = ListSink()
    runner = RequestRunner(
        request,
        attempt=1,
        worker_id="w",
        engine=engine,
        sink=sink,
        coalesce=CoalesceConfig(max_tokens=1, max_ms=0),
    )
    terminal = await runner.run()
    return terminal, sink.events


async def test_runner_encodes_the_raw_prompt_and_echoes_it() -> None:
    engine = PromptEngine()
    terminal, events = await run(engine, completion_request([5, 6], echo=True))
    assert isinstance(events[0], Started) and events[0].echo_text == "w5 w6" and events[0].prompt_tokens == 2
    assert events[0].prompt_logprobs is None
    assert isinstance(terminal, Completed)
    assert terminal.kind == "completion" and terminal.echo_text == "w5 w6"
    # The terminal text is the generated text alone: the deltas' texts joined.
    assert terminal.text == "t0 t1 t2 " == "".join(e.text for e in events if isinstance(e, Delta))
    assert terminal.usage == Usage(prompt_tokens=2, completion_tokens=3)
    assert engine.calls == [{"prompt_ids": [5, 6], "all_top": True, "prompt_logprobs": False}]


async def test_runner_with_echo_and_logprobs_starts_after_the_prefill() -> None:
    engine = PromptEngine()
    terminal, events = await run(engine, completion_request("a bb", echo=True, logprobs=2))
    assert engine.calls[0]["prompt_logprobs"] is True
    first = events[0]
    assert isinstance(first, Started) and first.prompt_logprobs == [PromptLogprob(token="p")]
    assert first.echo_text == "a bb" and first.seq == 0
    assert [e.seq for e in events] == list(range(len(events)))  # type: ignore[attr-defined]
    assert isinstance(terminal, Completed) and terminal.logprobs is not None and len(terminal.logprobs) == 3


async def test_runner_refuses_a_bad_prompt_and_an_engine_without_completions() -> None:
    terminal, _ = await run(PromptEngine(), completion_request([5, 500]))
    assert isinstance(terminal, Failed) and terminal.code == "invalid_request"
    assert "outside the vocabulary" in terminal.message

    class ChatOnly(PromptEngine):
        encode_prompt = None  # type: ignore[assignment]

    terminal, _ = await run(ChatOnly(), completion_request("hi"))
    assert isinstance(terminal, Failed) and terminal.message == "this model does not serve completions"


class FakeRegistry:
    def __init__(self, capabilities: ModelCapabilities | None) -> None:
        self.capabilities = capabilities

    async def known(self, model: str) -> bool:
        return model == "m"

    async def capabilities_of(self, model: str) -> ModelCapabilities | None:
        return self.capabilities


class FakeService:
    def __init__(self, capabilities: ModelCapabilities | None = None, context: int | None = 64) -> None:
        self.registry = FakeRegistry(capabilities)
        self.settings = SimpleNamespace(max_message_chars=100)
        self.context = context

    async def context_of(self, model: str) -> int | None:
        return self.context


async def checked(body: dict[str, Any], service: FakeService | None = None) -> list[str | list[int]]:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "hi", **body})
    return await check_request(request, cast(Any, service or FakeService()))


@pytest.mark.parametrize(
    ("body", "capabilities", "param", "says"),
    [
        ({}, ModelCapabilities(kind="embedding"), "model", "embedding model"),
        ({"suffix": "x"}, ModelCapabilities(), "suffix", "cannot fill in the middle"),
        ({"suffix": "x"}, ModelCapabilities(fim=True), "suffix", "not served yet"),
        ({"best_of": 2}, None, "best_of", "must equal n"),
        ({"n": 2, "temperature": 0}, None, "n", "greedy"),
        ({"echo": True, "logprobs": 0, "max_tokens": 0}, None, "max_tokens", "at least 1"),
        ({"max_tokens": 64}, None, "max_tokens", "context"),
        ({"prompt": list(range(60)), "max_tokens": 5}, None, "prompt", "context"),
        ({"prompt": ["a", list(range(70))]}, None, "prompt", "mixes"),
    ],
)
async def test_check_request_names_the_field(
    body: dict[str, Any], capabilities: ModelCapabilities | None, param: str, says: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await checked(body, FakeService(capabilities))
    assert caught.value.param == param and says in caught.value.message


async def test_check_request_passes_what_it_can_serve() -> None:
    assert await checked({"best_of": 3, "n": 3, "prompt": [[1, 2], [3]], "max_tokens": 0}) == [[1, 2], [3]]
    # No worker yet: nothing to check capabilities or the context against.
    assert await checked({"max_tokens": 10_000}, FakeService(None, None)) == ["hi"]
    with pytest.raises(ApiError) as caught:
        await checked({"model": "other"})
    assert caught.value.status == 404 and caught.value.param == "model"


def test_a_completion_is_a_job_a_title_is_not() -> None:
    assert row_of_request(completion_request("hi")) is not None
    title = completion_request("hi").model_copy(update={"kind": "title"})
    assert row_of_request(title) is None


def test_failover_settles_a_completion_against_its_raw_prompt() -> None:
    class Recording(PromptEngine):
        prompts: list[str | list[int]] = []

        def encode_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
            self.prompts.append(prompt)
            return super().encode_prompt(prompt)

    engine = Recording()
    consumer = cast(Any, SimpleNamespace(engine=engine))
    stored = Resume([10, 11], "t10 t11 ")
    assert RequestConsumer._settle(consumer, completion_request([5, 6]), stored) == stored
    assert engine.prompts == [[5, 6]]
