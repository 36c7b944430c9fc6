"""The chaos suite: a mixed load against the platform `make run` starts (infra/run.py, with its
supervisor), while each fault is injected in turn; then what the clients saw is checked against
the event log and the stores.

    python bench/chaos.py                 # every fault, SIGKILL and SIGSTOP alike (docs/reliability.md)
    python bench/chaos.py --short         # every target once (make test runs this, ~5 min)
    python bench/chaos.py --soak 1800     # a 30-minute run; RSS, FDs, consumer lag sampled
    python bench/chaos.py --cluster       # make cluster's platform (make test-cluster)

Load: streamed chats (a third with `disconnect: "detach"`, which drop on purpose mid-answer and
resume at /v1/jobs/{id}/events with Last-Event-ID; every stream cut by a fault resumes the same
way), jobs, and logins with API-key checks. Faults: worker, engine core, edge, nats-server,
history, metrics, auth, Postgres, Redis (SIGKILL, or SIGSTOP then SIGCONT), and a worker paused
past its ack_wait (the zombie). Checks, per request a client got an id for:
- exactly one terminal event in the log (none: lost; more: doubled);
- the client's text equals the terminal event's (a resumed client: what it saw before the cut
  is the beginning of it);
- exactly one usage row, and one stored answer for each completed chat;
- no unexpected 5xx (the documented 503s with Retry-After, and refused connections while a
  process restarts, are counted apart);
- nothing still running in the engine at the end.
A table per fault: requests, lost, doubled, mismatched, client errors by kind, recovery time.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
from httpx_sse import EventSource
from nats.aio.client import Client

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "libs" / "common" / "src")]

from llmchat_common import subjects  # noqa: E402
from llmchat_common.contracts import WorkerInfo, is_terminal  # noqa: E402
from llmchat_common.request_log import read_request_log  # noqa: E402

MODEL = "tiny-random"
# Redelivery after a lost worker within the run's patience (the zombie is paused past it).
ACK_WAIT_S = 8
PLATFORM_ENV = {
    "LLMCHAT_WORKER_ACK_WAIT_S": str(ACK_WAIT_S),
    "LLMCHAT_WORKER_IN_PROGRESS_INTERVAL_S": "2",
    # A stalled Postgres is given up on within seconds (the services retry).
    "LLMCHAT_POSTGRES_STATEMENT_TIMEOUT_S": "5",
    # Chaos clients are many and fast: the per-user limits and login throttles are not what
    # is tested here.
    **{
        f"LLMCHAT_CHAT_LIMITS__{scope}__{role}__{name}": "1000000"
        for scope in ("USER", "API_KEY")
        for role in ("USER", "ADMIN")
        for name in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "CONCURRENT")
    },
    "LLMCHAT_CHAT_LIMITS__LOGIN_PER_ACCOUNT": "1000000",
    "LLMCHAT_CHAT_LIMITS__LOGIN_PER_ADDRESS": "1000000",
}


@dataclass(frozen=True)
class Fault:
    # A process name of the supervisor; "engine" (the worker's engine core); "leader:<stream>"
    # or "follower:<stream>" (the nats-server leading that stream, or one following it);
    # "rolling" (every replicated process in turn: SIGTERM, started again, ready).
    target: str
    how: str  # "kill", "stop" or "term"
    pause_s: float = 0.0

    @property
    def name(self) -> str:
        if self.target == "worker" and self.how == "stop" and self.pause_s > ACK_WAIT_S:
            return "worker paused past ack_wait (zombie)"
        if self.target == "rolling":
            return "rolling restart"
        if ":" in self.target:
            role, stream = self.target.split(":")
            return f"{stream} {role} SIGKILL"
        return f"{self.target} {'SIGKILL' if self.how == 'kill' else f'SIGSTOP {self.pause_s:.0f}s'}"


SHORT = [
    Fault("engine", "kill"),
    Fault("worker", "stop", ACK_WAIT_S + 7),
    Fault("chat", "kill"),
    Fault("nats", "kill"),
    Fault("history", "kill"),
    Fault("metrics", "stop", 6),
    Fault("auth", "kill"),
    Fault("postgres", "kill"),
    Fault("redis", "stop", 6),
]
FULL = [
    Fault("worker", "kill"),
    *SHORT,
    Fault("chat", "stop", 6),
    Fault("nats", "stop", 6),
    Fault("history", "stop", 6),
    Fault("metrics", "kill"),
    Fault("auth", "stop", 6),
    Fault("postgres", "stop", 10),
    Fault("redis", "kill"),
]


# make cluster: 3 nats-servers, two of every service behind nginx (issue 18's faults).
CLUSTER = [
    Fault("leader:CHAT_REQUESTS", "kill"),
    Fault("leader:CHAT_EVENTS", "kill"),
    Fault("follower:CHAT_EVENTS", "kill"),
    Fault("chat-1", "kill"),
    Fault("worker-1", "kill"),
    Fault("history-1", "kill"),
    Fault("metrics-2", "kill"),
    Fault("rolling", "term"),
]
# Faults a client must not see at all (a stream leader's death, a rolling restart).
STRICT = {f.name for f in CLUSTER if f.target == "rolling" or f.target.startswith("leader:")}
# Not replicated, so not in a rolling restart: Postgres, Redis, nginx (docs/scaling.md).
SINGLE = ("postgres", "redis", "nginx")


@dataclass
class Record:
    """One request as its client saw it."""

    kind: str  # stream | job
    fault: str
    started: float
    request_id: str | None = None
    text: str = ""  # what the client was shown (a stream's content)
    final: str | None = None  # the terminal text the client ended with (completed)
    outcome: str | None = None  # completed | failed | cancelled, as the client learned it
    resumed: int = 0
    last_id: str | None = None
    errors: list[str] = field(default_factory=list)
    ended: float = 0.0


@dataclass
class Run:
    base: str
    token: str
    api_key: str
    email: str
    password: str
    fault: str = "warm-up"
    records: list[Record] = field(default_factory=list)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)  # (fault, kind)
    auth_checks: Counter[tuple[str, str]] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def refused(self, kind: str) -> None:
        self.refusals[(self.fault, kind)] += 1


def kind_of(status: int, headers: httpx.Headers) -> str:
    if status == 503 and headers.get("retry-after"):
        return "503+Retry-After"
    if status == 502 and headers.get("server", "").startswith("nginx"):
        # make cluster: the request was in flight to an edge that died (as a refused
        # connection is without a proxy); one not yet sent goes to the other edge.
        return "502 from nginx (its edge died)"
    return f"HTTP {status}"


# -- the load ------------------------------------------------------------------------------
async def stream_client(run: Run, http: httpx.AsyncClient, n: int) -> None:
    rng = random.Random(n)
    while not run.stop.is_set():
        detach = n % 3 == 0
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"chaos {n} {uuid.uuid4().hex[:6]}"}],
            "max_tokens": rng.choice([48, 120, 240]),
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        if detach:
            body["disconnect"] = "detach"
        record = Record("stream", run.fault, time.monotonic())
        drop_after = rng.randint(3, 20) if detach else None
        try:
            async with http.stream(
                "POST", "/v1/chat/completions", json=body, headers=bearer(run.token)
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    run.refused(kind_of(resp.status_code, resp.headers))
                    await asyncio.sleep(0.5)
                    continue
                record.request_id = resp.headers["x-request-id"]
                run.records.append(record)
                chunks = 0
                async for sse in EventSource(resp).aiter_sse():
                    if sse.id:
                        record.last_id = sse.id
                    if sse.data == "[DONE]":
                        break
                    data = json.loads(sse.data)
                    if "error" in data:
                        record.errors.append(str(data["error"].get("code")))
                        break
                    for choice in data.get("choices") or []:
                        record.text += (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            record.outcome, record.final = "completed", record.text
                    chunks += 1
                    if drop_after is not None and chunks >= drop_after:
                        break  # the client leaves on purpose; the answer goes on
        except httpx.TransportError as exc:
            if record.request_id is None:
                run.refused(f"connection ({type(exc).__name__})")
                await asyncio.sleep(0.5)
                continue
            record.errors.append(f"connection ({type(exc).__name__})")
        if record.outcome is None or record.errors:
            # Cut (by a fault, or on purpose): read the rest from the log, on any edge.
            await resume(run, http, record)
        record.ended = time.monotonic()


async def resume(run: Run, http: httpx.AsyncClient, record: Record) -> None:
    deadline = time.monotonic() + 180
    delay = 0.5
    while time.monotonic() < deadline:
        record.resumed += 1
        headers = bearer(run.token) | ({"Last-Event-ID": record.last_id} if record.last_id else {})
        try:
            async with http.stream("GET", f"/v1/jobs/{record.request_id}/events", headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    record.errors.append(f"resume {kind_of(resp.status_code, resp.headers)}")
                else:
                    async for sse in EventSource(resp).aiter_sse():
                        if sse.id:
                            record.last_id = sse.id
                        if sse.event in ("completed", "failed", "cancelled"):
                            event = json.loads(sse.data)
                            record.outcome = sse.event
                            record.final = event.get("text", "")
                            return
        except httpx.TransportError as exc:
            record.errors.append(f"resume connection ({type(exc).__name__})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def job_client(run: Run, http: httpx.AsyncClient) -> None:
    while not run.stop.is_set():
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"job {uuid.uuid4().hex[:6]}"}],
            "max_tokens": 64,
            "temperature": 0,
            "ignore_eos": True,
        }
        record = Record("job", run.fault, time.monotonic())
        try:
            resp = await http.post("/v1/jobs", json=body, headers=bearer(run.api_key))
        except httpx.TransportError as exc:
            run.refused(f"connection ({type(exc).__name__})")
            await asyncio.sleep(1)
            continue
        if resp.status_code not in (200, 201, 202):
            run.refused(kind_of(resp.status_code, resp.headers))
            await asyncio.sleep(1)
            continue
        record.request_id = resp.json()["id"]
        run.records.append(record)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, ValueError):
                job = (await http.get(f"/v1/jobs/{record.request_id}", headers=bearer(run.api_key))).json()
                if job.get("status") in ("completed", "failed", "cancelled"):
                    record.outcome = job["status"]
                    record.final = (
                        ((job.get("result") or {}).get("choices") or [{}])[0]
                        .get("message", {})
                        .get("content")
                    )
                    break
            await asyncio.sleep(1)
        record.ended = time.monotonic()


async def auth_client(run: Run, http: httpx.AsyncClient) -> None:
    """Logins (the auth service and its database) and API-key checks (the edges' cache)."""
    while not run.stop.is_set():
        login = {"email": run.email, "password": run.password}
        for what, method, path, body, token in (
            ("login", "POST", "/v1/auth/login", login, None),
            ("api key", "GET", "/v1/models", None, run.api_key),
        ):
            try:
                resp = await http.request(method, path, json=body, headers=bearer(token) if token else None)
                kind = "ok" if resp.status_code == 200 else kind_of(resp.status_code, resp.headers)
                if what == "login" and kind == "ok":
                    # The chats' token, renewed like a browser's session (access tokens live
                    # 15 minutes: a soak outlives one).
                    run.token = resp.json()["access_token"]
            except httpx.TransportError as exc:
                kind = f"connection ({type(exc).__name__})"
            run.auth_checks[(run.fault, f"{what}: {kind}")] += 1
        await asyncio.sleep(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the platform and the faults -----------------------------------------------------------
class Platform:
    def __init__(self, state: Path, models: Path | None, cluster: bool = False) -> None:
        self.state = state
        self.models = models
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> dict[str, str]:
        subprocess.run(["rm", "-rf", str(self.state)], check=True)
        self.state.mkdir(parents=True)
        if self.models is not None:
            (self.state / "models").symlink_to(self.models.resolve())
        argv = [sys.executable, str(REPO / "infra" / "run.py"), "--state-dir", str(self.state)]
        argv += ["--model", MODEL, "--embedding-model", "none", "--port", str(free_port())]
        argv += ["--cluster"] if self.cluster else []
        self.proc = subprocess.Popen(
            argv, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **PLATFORM_ENV}
        )
        deadline = time.monotonic() + 600
        platform = self.state / "platform.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"make run exited with {self.proc.returncode}; see {log}")
            if platform.exists() and "llmchat is ready" in log.read_text(errors="replace"):
                info: dict[str, str] = json.loads(platform.read_text())
                return info
            time.sleep(1)
        raise TimeoutError(f"the platform did not start; see {log}")

    def stop(self) -> tuple[int | None, list[int]]:
        """Ctrl-C, as a user stops `make run`: its exit status, and the pids of its processes
        still alive afterwards (none, or it leaked some)."""
        if self.proc is None:
            return None, []
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            code: int | None = self.proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        _, alive = psutil.wait_procs(children, timeout=10)
        return code, [p.pid for p in alive]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(supervisor: str) -> dict[str, Any]:
    try:
        reply: dict[str, Any] = httpx.get(f"{supervisor}/readyz", timeout=5).json()
        return reply
    except (httpx.HTTPError, ValueError):
        return {"ready": False, "processes": {}}


def target_pid(supervisor: str, target: str) -> int:
    processes = status(supervisor)["processes"]
    if target == "engine":
        worker = psutil.Process(processes["worker"]["pid"])
        engines = [p for p in worker.children(recursive=True) if "EngineCor" in p.name()]
        if not engines:
            raise RuntimeError("no engine core under the worker")
        return int(engines[0].pid)
    pid = processes[target]["pid"]
    if pid is None:
        raise RuntimeError(f"{target} is not running")
    return int(pid)


async def stream_node(info: dict[str, str], target: str) -> str:
    """The nats-server (its process name is its server_name) leading a stream, or following it."""
    role, stream = target.split(":")
    nc = await admin_nats(info)
    try:
        cluster = (await nc.jetstream().stream_info(stream)).cluster
    finally:
        await nc.close()
    if cluster is None or cluster.leader is None:
        raise RuntimeError(f"{stream} has no leader")
    if role == "leader":
        return cluster.leader
    followers = [r.name for r in cluster.replicas or [] if r.current and r.name]
    if not followers:
        raise RuntimeError(f"{stream} has no current follower")
    return followers[0]


async def rolling_restart(info: dict[str, str], supervisor: str) -> None:
    """Every replicated process in turn: SIGTERM (a clean stop: a nats-server hands its
    leaderships over, an edge drains, a worker finishes what it runs), then the supervisor
    starts it again; the next one once it is back and the platform is ready."""
    names = [n for n in status(supervisor)["processes"] if n not in SINGLE]
    for name in names:
        # As a rolling upgrade does: the next one only once it serves (a worker restarted by
        # an earlier fault may still be loading its model).
        deadline = time.monotonic() + 300
        while not await ready(info, name):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} is not ready")
            await asyncio.sleep(0.5)
        pid = await asyncio.to_thread(target_pid, supervisor, name)
        subscribed = await asyncio.to_thread(subscriptions, info, name)
        print(f"        {name}: SIGTERM", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 300
        while True:
            now = (await asyncio.to_thread(status, supervisor))["processes"].get(name, {})
            if (
                now.get("running")
                and now.get("pid") != pid
                and await ready(info, name)
                and (
                    subscribed is None
                    or (await asyncio.to_thread(subscriptions, info, name) or 0) > subscribed
                )
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come back")
            await asyncio.sleep(0.5)


def subscriptions(info: dict[str, str], name: str) -> int | None:
    """How many times a service without a port (auth, history, metrics) has said in its log that
    it answers (FastStream's "`...Ping` waiting for messages", once per start); None for the
    others (their ports say it)."""
    topology = json.loads(Path(info["topology"]).read_text())
    entry = next((p for p in topology["processes"] if p["name"] == name), None)
    if entry is None or entry["role"] not in ("auth", "history", "metrics"):
        return None
    try:
        return Path(entry["log"]).read_text(errors="replace").count("Ping` waiting for messages")
    except OSError:
        return 0


async def ready(info: dict[str, str], name: str) -> bool:
    """A restarted process serves again: its /readyz (edges, workers) or /healthz (nats)."""
    topology = json.loads(await asyncio.to_thread(Path(info["topology"]).read_text))
    entry = next((p for p in topology["processes"] if p["name"] == name), None)
    if entry is None:
        return False
    path = {"edge": "readyz", "worker": "readyz", "nats": "healthz"}.get(entry["role"])
    port = entry["ports"].get({"edge": "http", "worker": "health", "nats": "monitor"}.get(entry["role"], ""))
    if path is None or port is None:
        return True  # auth, history, metrics: see `subscriptions`
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"http://127.0.0.1:{port}/{path}")).status_code == 200
    except httpx.HTTPError:
        return False


async def inject(fault: Fault, supervisor: str, info: dict[str, str]) -> None:
    if fault.target == "rolling":
        await rolling_restart(info, supervisor)
        return
    target = await stream_node(info, fault.target) if ":" in fault.target else fault.target
    if target != fault.target:
        print(f"        {fault.target} is {target}", flush=True)
    pid = await asyncio.to_thread(target_pid, supervisor, target)
    if fault.how == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    # The process and every descendant: a worker with its engine, Postgres with its backends
    # (each backend leads a process group of its own, so a group signal would miss them).
    frozen = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(fault.pause_s)
    finally:
        for proc in reversed(frozen):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)


async def recovered(run: Run, fault: str, supervisor: str, since: float, patience_s: float = 240) -> float:
    """Seconds from the fault until every process runs and a request started after it completed."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        done = [
            r
            for r in run.records
            if r.fault == fault and r.started >= since and r.outcome == "completed" and not r.errors
        ]
        if done and (await asyncio.to_thread(status, supervisor))["ready"]:
            return min(r.ended for r in done) - since
        await asyncio.sleep(0.5)
    return float("nan")


# -- the checks ----------------------------------------------------------------------------
@dataclass
class Verdict:
    terminals: dict[str, list[Any]]
    usage: Counter[str]
    answers: Counter[str]
    running: int


async def verify(info: dict[str, str], records: list[Record]) -> Verdict:
    nc = await admin_nats(info)
    ids = [r.request_id for r in records if r.request_id]
    terminals: dict[str, list[Any]] = {}
    try:
        deadline = time.monotonic() + 180
        while True:
            for rid in ids:
                if rid not in terminals or not terminals[rid]:
                    terminals[rid] = [
                        e.event for e in await read_request_log(nc, rid) if is_terminal(e.event)
                    ]
            if all(terminals[rid] for rid in ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        # The workers' heartbeats say what their engines still run (every few seconds).
        kv = await nc.jetstream().key_value(subjects.REGISTRY_BUCKET)
        deadline = time.monotonic() + 60
        while True:
            running = 0
            for key in await kv.keys():
                entry = await kv.get(key)
                running += WorkerInfo.model_validate_json(entry.value or b"{}").running
            if running == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    finally:
        await nc.close()
    # The projections catch up (they may have been down): one row each, never more.
    completed_chats = {r.request_id for r in records if r.kind == "stream" and r.outcome == "completed"}
    conn = await asyncpg.connect(info["postgres_dsn"])
    try:
        deadline = time.monotonic() + 180
        while True:
            usage = await rows_per_request(conn, "usage.requests", ids)
            answers = await rows_per_request(conn, "history.messages", ids, "AND role = 'assistant'")
            if (len(usage) == len(ids) and completed_chats <= set(answers)) or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
    finally:
        await conn.close()
    return Verdict(terminals, usage, answers, running)


async def rows_per_request(
    conn: asyncpg.Connection, table: str, ids: list[str], where: str = ""
) -> Counter[str]:
    """How many rows `table` holds per request id (a fixed table name, never input)."""
    rows = await conn.fetch(
        f"SELECT request_id, count(*) AS n FROM {table} WHERE request_id = ANY($1) {where} "
        "GROUP BY request_id",
        ids,
    )
    return Counter({r["request_id"]: r["n"] for r in rows})


def report(run: Run, verdict: Verdict, recovery: dict[str, float], faults: list[str]) -> tuple[str, bool]:
    rows = [
        "| fault | requests | lost | doubled | text differs | streams cut, then resumed | "
        "refused (documented) | auth checks failed | recovery s |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |",
    ]
    ok = True
    for fault in faults:
        records = [r for r in run.records if r.fault == fault]
        lost = doubled = differs = 0
        errors: Counter[str] = Counter()
        for r in records:
            assert r.request_id is not None
            found = verdict.terminals.get(r.request_id, [])
            usage = verdict.usage.get(r.request_id, 0)
            answers = verdict.answers.get(r.request_id, 0)
            lost += (
                not found or usage == 0 or (r.kind == "stream" and r.outcome == "completed" and answers == 0)
            )
            doubled += len(found) > 1 or usage > 1 or answers > 1
            terminal = found[0] if found else None
            if terminal is not None and r.outcome == "completed":
                stored = getattr(terminal, "text", None)
                if r.kind == "stream" and not r.resumed:
                    differs += r.text != stored
                elif r.kind == "stream":
                    differs += r.final != stored or not (stored or "").startswith(r.text)
            if r.outcome is None:
                errors["no outcome"] += 1
            for e in r.errors:
                errors[e] += 1
        refused = {k: v for (f, k), v in run.refusals.items() if f == fault}
        unexpected = {k: v for k, v in refused.items() if k.startswith("HTTP 5") or k == "HTTP 500"}
        auth_failed = {k: v for (f, k), v in run.auth_checks.items() if f == fault and not k.endswith(": ok")}
        ok &= lost == 0 and doubled == 0 and differs == 0 and not unexpected and errors["no outcome"] == 0
        if fault in STRICT:
            # Replicas take over: not even a documented refusal, a cut stream or a failed login.
            ok &= not refused and not errors and not auth_failed
        rows.append(
            f"| {fault} | {len(records)} | {lost} | {doubled} | {differs} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(errors.items())) or '-'} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(refused.items())) or '-'} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(auth_failed.items())) or '-'} | "
            f"{recovery.get(fault, float('nan')):.1f} |"
        )
    ok &= verdict.running == 0
    rows.append(f"\nstill running in the engines at the end: {verdict.running}")
    return "\n".join(rows), ok


# -- the run -------------------------------------------------------------------------------
def prepare(args: argparse.Namespace) -> tuple[Path, Platform]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Path(args.models) if args.models else None
    return out, Platform(Path(args.state_dir).resolve(), models, cluster=args.cluster)


async def admin_nats(info: dict[str, str]) -> Client:
    passwords = json.loads(await asyncio.to_thread(Path(info["nats_passwords"]).read_text))
    return await nats.connect(info["nats"].split(","), user="admin", password=passwords["admin"])


async def chaos(args: argparse.Namespace) -> int:
    out, platform = prepare(args)
    t0 = time.monotonic()
    info = await asyncio.to_thread(platform.start, out / "platform.log")
    print(f"platform up in {time.monotonic() - t0:.0f}s: {info['edge']}", flush=True)
    faults = CLUSTER if args.cluster else SHORT if args.short else FULL
    try:
        # Longer than a worker's restart: a request waits in the queue meanwhile, not an error.
        async with httpx.AsyncClient(base_url=info["edge"], timeout=httpx.Timeout(30, read=120)) as http:
            email, password = f"chaos-{uuid.uuid4().hex[:8]}@example.com", f"pw-{uuid.uuid4().hex}"
            (
                await http.post("/v1/auth/register", json={"email": email, "password": password})
            ).raise_for_status()
            tokens = (await http.post("/v1/auth/login", json={"email": email, "password": password})).json()
            key = (
                await http.post(
                    "/v1/auth/api-keys", json={"name": "chaos"}, headers=bearer(tokens["access_token"])
                )
            ).json()
            run = Run(info["edge"], tokens["access_token"], key["key"], email, password)
            page = await http.get("/")
            if page.status_code != 200 or '<div id="root">' not in page.text:
                raise RuntimeError("make run does not serve the web app")
            clients = [asyncio.create_task(stream_client(run, http, n)) for n in range(args.streams)]
            clients += [
                asyncio.create_task(job_client(run, http)),
                asyncio.create_task(auth_client(run, http)),
            ]
            recovery: dict[str, float] = {}
            await asyncio.sleep(args.settle_s)
            for fault in faults:
                run.fault = fault.name
                since = time.monotonic()
                print(f"{time.monotonic() - t0:6.0f}s  {fault.name}", flush=True)
                try:
                    await inject(fault, info["supervisor"], info)
                except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                    print(f"        could not inject: {exc}", flush=True)
                recovery[fault.name] = await recovered(run, fault.name, info["supervisor"], since)
                print(f"        recovered in {recovery[fault.name]:.1f}s", flush=True)
                await asyncio.sleep(args.settle_s)
            if args.soak:
                run.fault = "soak"
                await soak(info, args.soak, out)
            run.fault = "end"
            run.stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=300)
        verdict = await verify(info, run.records)
        table, ok = report(
            run, verdict, recovery, ["warm-up", *[f.name for f in faults], *(["soak"] if args.soak else [])]
        )
    finally:
        code, leaked = await asyncio.to_thread(platform.stop)
    dump = [
        {**r.__dict__, "text": len(r.text), "final": None if r.final is None else len(r.final)}
        for r in run.records
    ]
    (out / "records.json").write_text(json.dumps(dump, indent=1))
    ok = ok and code == 0 and not leaked
    summary = (
        f"{table}\n\nmake run stopped with {code} (processes left running: {len(leaked)}); "
        f"{len(run.records)} requests; {'PASS' if ok else 'FAIL'}"
    )
    print("\n" + summary, flush=True)
    (out / "chaos.md").write_text(summary + "\n")
    return 0 if ok else 1


async def soak(info: dict[str, str], seconds: float, out: Path) -> None:
    """Samples memory (PSS: shared pages divided among their sharers, so a family of processes
    is not counted twice, as RSS would for Postgres's shared buffers) and open files of every
    supervised process with its children, and the consumers' lag."""
    samples: list[dict[str, Any]] = []
    nc = await admin_nats(info)
    try:
        js = nc.jetstream()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            row: dict[str, Any] = {"t": time.time()}
            for name, p in status(info["supervisor"])["processes"].items():
                if p["pid"]:
                    with contextlib.suppress(psutil.Error):
                        proc = psutil.Process(p["pid"])
                        family = [proc, *proc.children(recursive=True)]
                        row[f"{name}.pss_mb"] = sum(c.memory_full_info().pss for c in family) / 2**20
                        row[f"{name}.fds"] = sum(c.num_fds() for c in family)
            for consumer in ("projection-history", "projection-usage"):
                with contextlib.suppress(Exception):
                    ci = await js.consumer_info(subjects.EVENTS_STREAM, consumer)
                    row[f"{consumer}.pending"] = (ci.num_pending or 0) + (ci.num_ack_pending or 0)
            samples.append(row)
            await asyncio.sleep(10)
    finally:
        await nc.close()
    (out / "soak.json").write_text(json.dumps(samples))
    (out / "soak.md").write_text(soak_report(samples, out) + "\n")


# The first minutes of a soak are warm-up (caches, pools, the engine's first batches): growth
# is measured from the median of the first window after it to the median of the last window.
WARM_UP_S = 300.0
WINDOW_S = 300.0


def soak_report(samples: list[dict[str, Any]], out: Path) -> str:
    """A table of memory (PSS) and open files per process (after warm-up → at the end, growth)
    and the consumers' lag, and their plots (`soak-memory.png`, `soak-fds.png`, `soak-lag.png`)."""
    if not samples:
        return "no samples"
    t0 = samples[0]["t"]
    names = sorted({k.rsplit(".", 1)[0] for row in samples for k in row if k.endswith(".pss_mb")})

    def series(key: str) -> list[tuple[float, float]]:
        return [(row["t"] - t0, row[key]) for row in samples if key in row]

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    end = samples[-1]["t"] - t0
    start_of_end = max(WARM_UP_S, end - WINDOW_S)
    rows = [
        "| process | PSS MB after warm-up | PSS MB at the end | growth | open files after warm-up "
        "| at the end |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        cells = []
        for metric in ("pss_mb", "fds"):
            points = series(f"{name}.{metric}")
            early = median([v for t, v in points if WARM_UP_S <= t < WARM_UP_S + WINDOW_S])
            late = median([v for t, v in points if t >= start_of_end])
            cells.append((early, late))
        (mem_early, mem_late), (fds_early, fds_late) = cells
        growth = (mem_late - mem_early) / mem_early * 100 if mem_early else float("nan")
        rows.append(
            f"| {name} | {mem_early:.0f} | {mem_late:.0f} | {growth:+.1f} % "
            f"| {fds_early:.0f} | {fds_late:.0f} |"
        )
    lags = sorted({k for row in samples for k in row if k.endswith(".pending")})
    for key in lags:
        values = [v for _, v in series(key)]
        rows.append(
            f"\n{key.rsplit('.', 1)[0]} lag (messages): max {max(values):.0f}, at the end {values[-1]:.0f}"
        )
    _plot(samples, t0, names, lags, out)
    return "\n".join(rows)


def _plot(samples: list[dict[str, Any]], t0: float, names: list[str], lags: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = [
        ("soak-memory.png", "memory (PSS, MB), process and its children", [f"{n}.pss_mb" for n in names]),
        ("soak-fds.png", "open file descriptors", [f"{n}.fds" for n in names]),
        ("soak-lag.png", "projection consumers' lag (messages pending or unacked)", lags),
    ]
    for filename, title, keys in charts:
        fig, ax = plt.subplots(figsize=(10, 5))
        for key in keys:
            points = [((row["t"] - t0) / 60, row[key]) for row in samples if key in row]
            if points:
                ax.plot(*zip(*points, strict=True), label=key.rsplit(".", 1)[0])
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.axvline(WARM_UP_S / 60, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=90)
        plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="every target once (about 5 minutes)")
    parser.add_argument("--cluster", action="store_true", help="make cluster's platform and its faults")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--settle-s", type=float, default=3.0, help="load between faults")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of load after the faults")
    parser.add_argument("--state-dir", default=str(REPO / ".state" / "chaos"))
    parser.add_argument("--models", default=str(REPO / ".state" / "models"), help="built models to reuse")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "chaos"))
    return asyncio.run(chaos(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
