"""Session fixtures: one real stack (nats-server, Postgres, Redis), one engine-backed worker and
one edge per test run, all as real processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmchat_common.launch.process import ManagedProcess, wait_until
from llmchat_common.launch.services import (
    start_auth,
    start_edge,
    start_history,
    start_metrics,
    start_worker,
    wait_for_worker,
)
from llmchat_common.launch.stack import LocalStack, StackPorts
from llmchat_common.testing.otlp import OtlpReceiver
from tests.helpers import Account, register_account

REPO = Path(__file__).resolve().parents[1]
# Aliases the edge serves: the main pool, a pool whose workers the failover tests start and
# kill, and one that never gets a worker.
MAIN_MODEL = "tiny-random"
FAILOVER_MODEL = "tiny-random-b"
IDLE_MODEL = "tiny-random-idle"


@dataclass
class Worker:
    proc: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Edge:
    proc: ManagedProcess
    url: str


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return REPO / ".state" / "models"


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """A real OTLP/HTTP endpoint every service of the run sends its spans to."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def stack(otlp: OtlpReceiver) -> Iterator[LocalStack]:
    # Its own folder per concurrent run (e.g. two checkouts' suites on one machine).
    state = Path(os.environ.get("LLMCHAT_TEST_STATE_DIR", REPO / ".state" / "test-run"))
    shutil.rmtree(state, ignore_errors=True)
    local = LocalStack(state, preferred=StackPorts(0, 0, 0, 0))
    # Every service exports its spans there, within a fraction of a second; and gives up on a
    # statement a stalled Postgres does not answer within seconds (the fault tests pause it).
    local.telemetry_env = {**otlp.env(), "LLMCHAT_POSTGRES_STATEMENT_TIMEOUT_S": "5"}
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def worker(stack: LocalStack, models_dir: Path) -> Iterator[Worker]:
    proc, port = start_worker(stack, models_dir=models_dir, name="worker-main", wait=False)
    try:
        wait_for_worker(proc, port, timeout=300)
        yield Worker(proc, port)
    finally:
        proc.stop()


# The built-in embedding model: its worker is started only for the tests that ask for it.
EMBEDDING_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def embedding_worker(stack: LocalStack, models_dir: Path) -> Iterator[Worker]:
    """A worker of the embedding model (its own engine, ~35 s or more to start), serving it to
    the shared edge through the registry. Started, not waited for, so that it starts while the
    edge's fixtures do; `wait_for_worker` before use (tests/e2e/test_embeddings.py)."""
    proc, port = start_worker(
        stack, model=EMBEDDING_MODEL, models_dir=models_dir, name="worker-embedding", wait=False
    )
    try:
        yield Worker(proc, port)
    finally:
        proc.stop()


# The shared edge's limits are out of the way of the functional tests; the limits tests start
# their own edge with small ones.
ROOMY_LIMITS = {
    f"LLMCHAT_CHAT_LIMITS__{scope}__{role}__{name}": "1000000"
    for scope in ("USER", "API_KEY")
    for role in ("USER", "ADMIN")
    for name in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "CONCURRENT")
}
# ... and so is admission control: bursts of the load tests (and their title requests) must not
# hit the queue bound; the overload test starts its own edge with small bounds.
ROOMY_LIMITS |= {"LLMCHAT_CHAT_QUEUE__INTERACTIVE": "1000000", "LLMCHAT_CHAT_QUEUE__JOBS": "1000000"}
# A file cap the tests can pass quickly (the default is 200 MB).
FILE_CAP_BYTES = 4 * 1024 * 1024
ROOMY_LIMITS |= {"LLMCHAT_CHAT_FILES__MAX_BYTES": str(FILE_CAP_BYTES)}
# A batch window short enough to see a batch expire (OpenAI's only window is 24h).
SHORT_WINDOW = "8s"
ROOMY_LIMITS |= {"LLMCHAT_CHAT_BATCHES__WINDOWS": f'{{"24h": 86400, "{SHORT_WINDOW}": 8}}'}


# Conversation titles are asked of the main pool, so the failover tests' counts of requests on
# their own pool stay exact.
HISTORY_ENV = {"LLMCHAT_HISTORY_TITLE_MODEL": MAIN_MODEL}


@pytest.fixture(scope="session")
def history_service(stack: LocalStack) -> Iterator[ManagedProcess]:
    proc = start_history(stack, extra_env=HISTORY_ENV)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def metrics_service(stack: LocalStack) -> Iterator[ManagedProcess]:
    proc = start_metrics(stack)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def edge_service(
    stack: LocalStack,
    worker: Worker,
    auth_service: ManagedProcess,
    history_service: ManagedProcess,
    metrics_service: ManagedProcess,
) -> Iterator[Edge]:
    """The whole platform: the edge with auth, history and metrics behind it."""
    proc, port = start_edge(stack, models=[MAIN_MODEL, FAILOVER_MODEL, IDLE_MODEL], extra_env=ROOMY_LIMITS)
    try:
        yield Edge(proc, f"http://127.0.0.1:{port}")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def edge_url(edge_service: Edge) -> str:
    return edge_service.url


@pytest.fixture(scope="session")
def metrics_targets(
    edge_service: Edge,
    worker: Worker,
    auth_service: ManagedProcess,
    history_service: ManagedProcess,
    metrics_service: ManagedProcess,
) -> dict[str, list[str]]:
    """Where the session's services serve /metrics, by Prometheus job name."""
    procs = {
        "chat": edge_service.proc,
        "worker": worker.proc,
        "auth": auth_service,
        "history": history_service,
        "metrics": metrics_service,
    }
    return {job: [f"127.0.0.1:{proc.metrics_port}"] for job, proc in procs.items()}


@pytest.fixture(scope="session")
def account(edge_url: str) -> Account:
    """A registered user of the shared edge, with a session and an API key."""
    return register_account(edge_url)


@pytest.fixture(scope="session")
def api_key(account: Account) -> str:
    return account.api_key


@pytest.fixture(scope="session")
def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="session")
def auth_service(stack: LocalStack) -> Iterator[ManagedProcess]:
    proc = start_auth(stack)
    try:
        yield proc
    finally:
        proc.stop()


@contextmanager
def paused(proc: ManagedProcess, ready: Callable[[], bool]) -> Iterator[None]:
    """Stops a session service while a test module runs its own copy (two would share the
    durable consumer, and the module's faults need its copy alone), then brings it back."""
    proc.stop()
    try:
        yield
    finally:
        proc.start()
        wait_until(ready, timeout=60, what=proc.name, proc=proc)
