"""Pipeline capacity: how many concurrent streams llmchat carries at a fixed token rate.

The worker runs the synthetic token source (LLMCHAT_WORKER_ENGINE=synthetic: token `i` is due
at `start + i / rate`, text `"i "`), so the engine costs nothing and the platform itself is
measured: worker events, JetStream, the edge, SSE, with auth, limits, history and usage on.
For each coalescing setting the benchmark ramps the number of concurrent streams until the
added inter-token latency p99 passes the threshold or a request fails or loses, doubles or
reorders a token.

Added latency of a token: its arrival at the client minus when it was due, taking the
stream's fastest token as on time (arrival_i - i / rate, minus the minimum of that over the
stream). A token held back by coalescing, a slow hop or a stalled event loop all count.

    .venv/bin/python bench/capacity.py                                   # 50 tok/s, 3 settings
    .venv/bin/python bench/capacity.py --coalesce 8:10 --streams 256 512
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

import psutil
from loadgen import LoopLag, Sample, chat_body, pct, run_streams
from profiles import Profiler, report
from systems import REPO, System, cpu_snapshot, start_llmchat

sys.path.insert(0, str(REPO))
from llmchat_worker.synthetic import synthetic_text


def added_latencies(sample: Sample, interval: float) -> list[float]:
    """Per token: how much later than due it arrived, relative to the stream's fastest."""
    due: list[float] = []
    index = 0
    for arrival, text in zip(sample.arrivals, sample.texts, strict=True):
        for _ in range(text.count(" ")):
            due.append(arrival - index * interval)
            index += 1
    if not due:
        return []
    anchor = min(due)
    return [d - anchor for d in due]


def delivered_rate(samples: list[Sample]) -> float:
    """Tokens/s arriving while every stream was running (after the last start, before the
    first end)."""
    ok = [s for s in samples if s.arrivals]
    if not ok:
        return 0.0
    begin = max(s.arrivals[0] for s in ok)
    end = min(s.arrivals[-1] for s in ok)
    if end - begin < 0.5:
        return float("nan")
    tokens = sum(
        text.count(" ") for s in ok for t, text in zip(s.arrivals, s.texts, strict=True) if begin < t <= end
    )
    return tokens / (end - begin)


def step(
    system: System,
    streams: int,
    tokens: int,
    rate: float,
    ramp_s: float,
    profile_dir: Path | None = None,
) -> dict[str, Any]:
    expected = synthetic_text(tokens)

    def body(i: int) -> dict[str, Any]:
        return chat_body(system.model, f"Stream {i}: count for me.", tokens)

    async def go() -> tuple[list[Sample], float, list[float]]:
        with LoopLag() as lag:
            samples, wall = await run_streams(
                system.base_url, system.api_key, body, streams=streams, ramp_s=ramp_s
            )
        return samples, wall, lag.lags

    me = psutil.Process()
    before = {**cpu_snapshot(system), "load client": sum(me.cpu_times()[:2])}
    if profile_dir is None:
        samples, wall, lags = asyncio.run(go())
    else:
        # The services on the hot path, sampled while every stream runs.
        pids = {name: system.pids[name][0] for name in ("chat", "worker", "history", "metrics")}
        with Profiler(pids, tokens / rate, profile_dir / f"{streams}-streams") as profiler:
            samples, wall, lags = asyncio.run(go())
        print(report(profiler), flush=True)
    after = {**cpu_snapshot(system), "load client": sum(me.cpu_times()[:2])}
    errors = [s.error for s in samples if s.error is not None]
    broken = [s for s in samples if s.error is None and s.text != expected]
    added = [a for s in samples if s.error is None for a in added_latencies(s, 1.0 / rate)]
    delivered = sum(s.text.count(" ") for s in samples if s.error is None)
    ms = 1000.0
    return {
        "streams": streams,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "lost_or_reordered": len(broken),
        "added_p50_ms": pct(added, 50) * ms,
        "added_p99_ms": pct(added, 99) * ms,
        "added_max_ms": max(added, default=float("nan")) * ms,
        "chunks_per_stream": sum(len(s.arrivals) for s in samples) / len(samples),
        "ttft_p99_ms": pct([s.ttft for s in samples if s.arrivals], 99) * ms,
        "tokens_per_s": delivered_rate(samples),
        "client_loop_lag_p99_ms": pct(lags, 99) * ms,
        "wall_s": wall,
        "cpu_s_per_1k_tokens": {
            label: 1000.0 * (after[label] - before.get(label, 0.0)) / max(delivered, 1) for label in after
        },
        "cpu_s": {label: after[label] - before.get(label, 0.0) for label in after},
    }


def row(r: dict[str, Any]) -> str:
    cpu = r["cpu_s_per_1k_tokens"]
    top = ", ".join(
        f"{k} {v:.3f}"
        for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
        if k in {"worker", "chat", "nats", "postgres", "history", "metrics", "redis", "auth", "load client"}
    )
    return (
        f"| {r['streams']} | {r['errors']} | {r['lost_or_reordered']} | {r['added_p50_ms']:.1f} "
        f"| {r['added_p99_ms']:.1f} | {r['added_max_ms']:.0f} | {r['chunks_per_stream']:.0f} "
        f"| {r['tokens_per_s']:.0f} | {r['client_loop_lag_p99_ms']:.1f} | {top} |"
    )


HEADER = (
    "| streams | errors | lost/reordered | added p50 ms | added p99 ms | added max ms | events/stream "
    "| delivered tok/s | client lag p99 ms | CPU-s per 1k tokens |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s of each stream")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each stream")
    parser.add_argument("--ramp-s", type=float, default=2.0, help="stream starts spread over this")
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 128, 256, 384, 512, 768, 1024])
    parser.add_argument(
        "--coalesce",
        nargs="+",
        default=["1:0", "8:10", "32:50"],
        help="worker delta coalescing settings as max_tokens:max_ms",
    )
    parser.add_argument("--threshold-ms", type=float, default=20.0)
    parser.add_argument("--keep-going", action="store_true", help="run every step even past the threshold")
    parser.add_argument(
        "--profile", type=int, nargs="*", default=[], help="py-spy the services at these stream counts"
    )
    parser.add_argument("--profile-dir", type=Path, default=REPO / "bench" / "results" / "profiles")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "capacity.json")
    args = parser.parse_args()
    tokens = round(args.rate * args.seconds)

    report: dict[str, Any] = {}
    for setting in args.coalesce:
        max_tokens, max_ms = setting.split(":")
        worker_env = {
            "LLMCHAT_WORKER_ENGINE": "synthetic",
            "LLMCHAT_WORKER_SYNTHETIC_TOKENS_PER_S": str(args.rate),
            "LLMCHAT_WORKER_CAPACITY": str(max(args.streams) * 2),
            "LLMCHAT_WORKER_MAX_ACK_PENDING": str(max(args.streams) * 2),
            "LLMCHAT_WORKER_DELTA_MAX_TOKENS": max_tokens,
            "LLMCHAT_WORKER_DELTA_MAX_MS": max_ms,
        }
        system = start_llmchat(worker_env=worker_env)
        try:
            warm = step(system, 16, 20, args.rate, 0.2)
            if warm["errors"] or warm["lost_or_reordered"]:
                raise SystemExit(f"warm-up failed: {warm}")
            print(f"\ncoalescing {max_tokens} tokens / {max_ms} ms, {args.rate:g} tok/s per stream")
            print(HEADER, flush=True)
            steps = []
            for streams in args.streams:
                profile_dir = args.profile_dir / f"coalesce-{max_tokens}-{max_ms}"
                r = step(
                    system,
                    streams,
                    tokens,
                    args.rate,
                    args.ramp_s,
                    profile_dir if streams in args.profile else None,
                )
                steps.append(r)
                print(row(r), flush=True)
                ok = not r["errors"] and not r["lost_or_reordered"] and r["added_p99_ms"] <= args.threshold_ms
                if not ok and not args.keep_going:
                    break
        finally:
            system.stop()
        passed = [
            s["streams"]
            for s in steps
            if not s["errors"] and not s["lost_or_reordered"] and s["added_p99_ms"] <= args.threshold_ms
        ]
        report[setting] = {"max_streams": max(passed, default=0), "steps": steps}
        print(f"max streams within {args.threshold_ms:g} ms: {max(passed, default=0)}", flush=True)

    record = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.platform(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "settings": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
