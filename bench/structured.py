"""The cost of constrained decoding: `response_format: json_schema` against plain text.

The same prompt, the same output length (greedy, `ignore_eos`, `max_tokens`), streamed, on
llmchat (the whole platform, as bench/compare.py starts it) and directly on `vllm serve` (same
model and engine arguments), so the reader sees whether a cost is the engine's (vLLM's
structured outputs, xgrammar) or the pipeline's. The systems and formats take turns inside
each round (the order rotates from round to round).

With `ignore_eos` vLLM keeps generating after a grammar has ended, but from then on without
any mask (its structured-output manager stops constraining a terminated grammar), so a
schema the model can finish early would measure mostly free text. The formats here cannot end
within `max_tokens`: an object whose one string field has a `minLength` of 100,000 characters
(`long-string`: free text inside a JSON string, the grammar checks every token's characters)
and an object whose one array needs 1,000 items from an enum of eight words (`enum-array`: the
model's next token is confined to a few choices at every step). After the run every answer is
checked with xgrammar against its schema (with the model's tokenizer): the whole text must be
an accepted, unfinished prefix; the counts go into the table ("in grammar").

    .venv/bin/python bench/structured.py                      # concurrency 1 16, 3 rounds
    .venv/bin/python bench/structured.py --formats text long-string --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compare import PROMPT, psutil_cpus, ratio, versions
from loadgen import Sample, chat_body, run_closed, summarize
from systems import (
    DEFAULT_MODEL,
    MODELS_DIR,
    REPO,
    System,
    cpu_snapshot,
    engine_profile,
    load_average,
    start_llmchat,
    start_vllm_serve,
)

from llmchat_worker.profiles import resolve_model_path

WORDS = ["harbour", "ferry", "storm", "lighthouse", "market", "quay", "island", "boat"]

# Schemas that cannot be finished within a benchmark's output length (see the module's doc).
SCHEMAS: dict[str, dict[str, Any]] = {
    "long-string": {
        "type": "object",
        "properties": {"text": {"type": "string", "minLength": 100_000, "maxLength": 200_000}},
        "required": ["text"],
        "additionalProperties": False,
    },
    "enum-array": {
        "type": "object",
        "properties": {"words": {"type": "array", "items": {"enum": WORDS}, "minItems": 1000}},
        "required": ["words"],
        "additionalProperties": False,
    },
    # One a model can finish at once: with ignore_eos the rest of the output is unconstrained
    # (to show that, not in the default set).
    "short-object": {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 40}},
        "required": ["answer"],
        "additionalProperties": False,
    },
}
FORMATS = ["text", *SCHEMAS]


def extra_body(fmt: str) -> dict[str, Any]:
    if fmt == "text":
        return {}
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": fmt.replace("-", "_"), "schema": SCHEMAS[fmt], "strict": True},
        }
    }


async def one_batch(
    system: System, fmt: str, concurrency: int, requests: int, max_tokens: int
) -> tuple[list[Sample], float]:
    def body(i: int) -> dict[str, Any]:
        return chat_body(system.model, PROMPT.format(i=i), max_tokens, **extra_body(fmt))

    return await run_closed(system.base_url, system.api_key, body, concurrency=concurrency, requests=requests)


def grammar_checker(model: str) -> Callable[[str, str], str]:
    """`check(fmt, text)`: "open" (an accepted prefix, not finished), "ended" (the grammar
    finished inside the text: what follows it was generated unconstrained) or "rejected"."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    path = resolve_model_path(engine_profile(model), MODELS_DIR)
    info = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(path))
    compiler = xgr.GrammarCompiler(info)
    compiled = {name: compiler.compile_json_schema(json.dumps(schema)) for name, schema in SCHEMAS.items()}

    def check(fmt: str, text: str) -> str:
        matcher = xgr.GrammarMatcher(compiled[fmt], terminate_without_stop_token=True)
        for i, char in enumerate(text):
            if matcher.is_terminated():
                return "ended" if text[i:] else "open"
            if not matcher.accept_string(char):
                return "rejected"
        return "ended" if matcher.is_terminated() else "open"

    return check


def table(results: dict[str, Any]) -> str:
    lines = [
        "| concurrency | system | format | requests | errors | TTFT p50 ms | TTFT p95 ms | TPOT p50 ms "
        "| output tokens per request | output tok/s | in grammar |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, by_system in results.items():
        for name, by_format in by_system.items():
            for fmt, r in by_format.items():
                low, mean, high = r["tokens_per_request"]
                per_request = f"{mean:.0f}" if low == high else f"{mean:.1f} ({low}-{high})"
                done = r["requests"] - r["errors"]
                grammar = "" if fmt == "text" else f"{r['grammar'].get('open', 0)}/{done}"
                lines.append(
                    f"| {level} | {name} | {fmt} | {r['requests']} | {r['errors']} "
                    f"| {r['ttft_p50_ms']:.1f} | {r['ttft_p95_ms']:.1f} | {r['tpot_p50_ms']:.2f} "
                    f"| {per_request} | {r['tokens_per_s']:.0f} | {grammar} |"
                )
    return "\n".join(lines)


def ratios_table(results: dict[str, Any]) -> str:
    lines = [
        "| concurrency | system | format | TTFT p50 (json / text) | TTFT p95 (json / text) "
        "| output tok/s (json / text) |",
        "|---|---|---|---|---|---|",
    ]
    for level, by_system in results.items():
        for name, by_format in by_system.items():
            text = by_format.get("text")
            if text is None:
                continue
            for fmt, r in by_format.items():
                if fmt == "text":
                    continue
                lines.append(
                    f"| {level} | {name} | {fmt} | {ratio(r['ttft_p50_ms'], text['ttft_p50_ms']):.2f} "
                    f"| {ratio(r['ttft_p95_ms'], text['ttft_p95_ms']):.2f} "
                    f"| {ratio(r['tokens_per_s'], text['tokens_per_s']):.2f} |"
                )
    return "\n".join(lines)


def peer_table(results: dict[str, Any]) -> str:
    lines = [
        "| concurrency | format | TTFT p50 (llmchat / vllm serve) | output tok/s (llmchat / vllm serve) |",
        "|---|---|---|---|",
    ]
    for level, by_system in results.items():
        ours, peer = by_system.get("llmchat"), by_system.get("vllm serve")
        if ours is None or peer is None:
            continue
        for fmt, r in ours.items():
            p = peer[fmt]
            lines.append(
                f"| {level} | {fmt} | {ratio(r['ttft_p50_ms'], p['ttft_p50_ms']):.2f} "
                f"| {ratio(r['tokens_per_s'], p['tokens_per_s']):.2f} |"
            )
    return "\n".join(lines)


def cpu_table(results: dict[str, Any]) -> str:
    """CPU seconds per 1,000 output tokens: the engine's process tree (vLLM's server, or
    llmchat's worker with its engine) and, for llmchat, everything else."""
    lines = [
        "| concurrency | system | format | engine process tree | rest of the platform | total |",
        "|---|---|---|---|---|---|",
    ]
    for level, by_system in results.items():
        for name, by_format in by_system.items():
            for fmt, r in by_format.items():
                by_label = r["cpu_s_per_1k_tokens"]
                engine = by_label.get("worker", by_label.get("vllm serve", 0.0))
                total = r["cpu_s_per_1k_tokens_total"]
                rest = f"{total - engine:.3f}" if name == "llmchat" else ""
                lines.append(f"| {level} | {name} | {fmt} | {engine:.3f} | {rest} | {total:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, help="per system and format per round (default: max(16, 2 x concurrency))"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model profile both systems serve")
    parser.add_argument(
        "--formats", nargs="+", choices=FORMATS, default=["text", "long-string", "enum-array"]
    )
    parser.add_argument("--systems", nargs="+", choices=["llmchat", "vllm"], default=["llmchat", "vllm"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "structured.json")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="llmchat-structured-"))
    print(f"logs: {logs}", flush=True)
    started: list[System] = []
    try:
        if "vllm" in args.systems:
            started.append(start_vllm_serve(logs, args.model))
        if "llmchat" in args.systems:
            started.append(start_llmchat(model=args.model))
        names = [s.name for s in started]
        for system in started:
            for fmt in args.formats:
                # Warm-up: connections, the engine's first batches, each schema's grammar compiled
                # (both servers cache compiled grammars).
                samples, _ = asyncio.run(one_batch(system, fmt, 4, 8, 16))
                bad = [s.error for s in samples if s.error]
                if bad:
                    raise SystemExit(f"{system.name} failed its warm-up ({fmt}): {bad[0]}")

        pairs = [(system, fmt) for system in started for fmt in args.formats]
        load_before = load_average("before")
        raw: dict[str, dict[str, dict[str, list[Sample]]]] = {}
        walls: dict[str, dict[str, dict[str, float]]] = {}
        cpu: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        rounds: dict[str, dict[str, dict[str, list[float]]]] = {}
        for level in args.concurrency:
            key = str(level)
            raw[key] = {n: {f: [] for f in args.formats} for n in names}
            walls[key] = {n: dict.fromkeys(args.formats, 0.0) for n in names}
            cpu[key] = {n: {f: {} for f in args.formats} for n in names}
            rounds[key] = {n: {f: [] for f in args.formats} for n in names}
            count = args.requests or max(16, 2 * level)
            for r in range(args.rounds):
                shift = r % len(pairs)
                for system, fmt in pairs[shift:] + pairs[:shift]:
                    before = cpu_snapshot(system)
                    samples, wall = asyncio.run(one_batch(system, fmt, level, count, args.max_tokens))
                    spent = cpu[key][system.name][fmt]
                    for label, value in cpu_snapshot(system).items():
                        spent[label] = spent.get(label, 0.0) + value - before.get(label, 0.0)
                    raw[key][system.name][fmt] += samples
                    walls[key][system.name][fmt] += wall
                    tps = sum(s.tokens for s in samples if s.error is None) / wall
                    rounds[key][system.name][fmt].append(tps)
                    print(f"c={level} round {r + 1} {system.name} {fmt}: {tps:.0f} tok/s", flush=True)
        load_after = load_average("after")

        check = grammar_checker(args.model)
        results: dict[str, Any] = {}
        for key, by_system in raw.items():
            results[key] = {}
            for name, by_format in by_system.items():
                results[key][name] = {}
                for fmt, samples in by_format.items():
                    summary = summarize(samples, walls[key][name][fmt])
                    ok = [s for s in samples if s.error is None]
                    tokens = [s.tokens for s in ok] or [0]
                    summary["tokens_per_request"] = [min(tokens), sum(tokens) / len(tokens), max(tokens)]
                    summary["round_tokens_per_s"] = rounds[key][name][fmt]
                    per_1k = 1000.0 / (summary["output_tokens"] or 1)
                    by_label = {label: per_1k * s for label, s in cpu[key][name][fmt].items()}
                    summary["cpu_s_per_1k_tokens"] = by_label
                    summary["cpu_s_per_1k_tokens_total"] = sum(by_label.values())
                    grammar: dict[str, int] = {}
                    if fmt != "text":
                        for s in ok:
                            verdict = check(fmt, s.text)
                            grammar[verdict] = grammar.get(verdict, 0) + 1
                    summary["grammar"] = grammar
                    summary["example"] = ok[0].text[:300] if ok else ""
                    results[key][name][fmt] = summary

        print(table(results))
        print()
        print(ratios_table(results))
        print()
        print(cpu_table(results))
        if len(names) > 1:
            print()
            print(peer_table(results))
        record = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {psutil_cpus()} CPUs, {platform.platform()}",
            "versions": versions(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "args": {k: str(v) for k, v in vars(args).items()},
            "schemas": {fmt: SCHEMAS[fmt] for fmt in args.formats if fmt in SCHEMAS},
            "systems": names,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")
    finally:
        for system in reversed(started):
            system.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
