"""What each part of `make cluster` costs under load: CPU seconds per 1,000 output tokens and
resident memory, per role (nats-server nodes, edges, nginx, workers, auth, history, metrics,
Postgres, Redis), and the tokens/s delivered through nginx. For docs/scaling.md.

    python bench/cluster_cost.py [--streams 32] [--seconds 60]

It starts the cluster as `make cluster` does (infra/run.py --cluster, tiny-random workers), opens
`--streams` concurrent streamed chats through nginx for `--seconds`, and reads every process's
CPU time (its process tree: a worker with its engine, Postgres with its backends) before and
after, from the pids in topology.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil
from httpx_sse import EventSource

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos import REPO, Platform, bearer
from systems import write_result

MODEL = "tiny-random"


def tree_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0
    cpu, rss = 0.0, 0
    for proc in procs:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system
            rss += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return cpu, rss


def sample(topology: Path) -> dict[str, tuple[str, float, int]]:
    processes = json.loads(topology.read_text())["processes"]
    return {p["name"]: (p["role"], *tree_cpu(p["pid"])) for p in processes if p["pid"]}


async def stream(
    http: httpx.AsyncClient, token: str, until: float, counts: list[int], errors: list[str]
) -> None:
    while time.monotonic() < until:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"cost {uuid.uuid4().hex[:6]}"}],
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body, headers=bearer(token)) as resp:
                if resp.status_code != 200:
                    errors.append(f"HTTP {resp.status_code}")
                    await resp.aread()
                    continue
                async for sse in EventSource(resp).aiter_sse():
                    if sse.data == "[DONE]":
                        break
                    usage = json.loads(sse.data).get("usage")
                    if usage:
                        counts.append(int(usage["completion_tokens"]))
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)


async def measure(args: argparse.Namespace, platform: Platform, out: Path) -> dict[str, Any]:
    info = await asyncio.to_thread(platform.start, out / "cluster.log")
    topology = Path(info["topology"])
    try:
        async with httpx.AsyncClient(base_url=info["edge"], timeout=httpx.Timeout(30, read=120)) as http:
            email, password = f"cost-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
            (
                await http.post("/v1/auth/register", json={"email": email, "password": password})
            ).raise_for_status()
            token = (await http.post("/v1/auth/login", json={"email": email, "password": password})).json()[
                "access_token"
            ]
            # Warm-up: both engines and every replica have served.
            warm: list[int] = []
            await asyncio.gather(*(stream(http, token, time.monotonic() + 10, warm, []) for _ in range(8)))
            before = sample(topology)
            counts: list[int] = []
            errors: list[str] = []
            started = time.monotonic()
            until = started + args.seconds
            await asyncio.gather(*(stream(http, token, until, counts, errors) for _ in range(args.streams)))
            elapsed = time.monotonic() - started
            after = sample(topology)
    finally:
        await asyncio.to_thread(platform.stop)
    tokens = sum(counts)
    per_role: dict[str, dict[str, float]] = defaultdict(
        lambda: {"cpu_s": 0.0, "rss_mib": 0.0, "processes": 0}
    )
    for name, (role, cpu, rss) in after.items():
        if name not in before:
            continue  # restarted during the run: not comparable
        entry = per_role[role]
        entry["cpu_s"] += cpu - before[name][1]
        entry["rss_mib"] += rss / 2**20
        entry["processes"] += 1
    rows = {
        role: {
            "processes": int(v["processes"]),
            "cpu_s_per_1k_tokens": round(v["cpu_s"] / tokens * 1000, 3) if tokens else None,
            "rss_mib": round(v["rss_mib"]),
        }
        for role, v in sorted(per_role.items())
    }
    return {
        "streams": args.streams,
        "seconds": round(elapsed, 1),
        "tokens": tokens,
        "tokens_per_s": round(tokens / elapsed, 1),
        "requests": len(counts),
        "errors": errors,
        "per_role": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--state-dir", default=str(REPO / ".state" / "cluster-cost"))
    parser.add_argument("--models", default=str(REPO / ".state" / "models"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "cluster-cost"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    platform = Platform(Path(args.state_dir).resolve(), Path(args.models), cluster=True)
    result = asyncio.run(measure(args, platform, out))
    write_result("cluster_cost", "cluster-cost", **result)
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
