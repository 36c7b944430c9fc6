"""Observability through the whole platform: one trace from the caller to the engine and on to
Postgres (spans collected by a real OTLP/HTTP receiver), Prometheus metrics of every service
scraped by a real Prometheus, the dashboards' and alerts' PromQL checked against a live scrape,
and JSON log lines carrying the request's trace id."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.otlp import OtlpReceiver, ReceivedSpan, summarize
from llmchat_common.testing.prometheus import PrometheusServer, prometheus_binary
from llmchat_common.testing.promql import dashboard_exprs, metric_names, rule_exprs
from tests.conftest import MAIN_MODEL, REPO
from tests.helpers import Account, eventually

pytestmark = pytest.mark.asyncio

OBSERVABILITY = REPO / "infra" / "observability"
ALERTS = OBSERVABILITY / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((OBSERVABILITY / "grafana" / "dashboards").glob("*.json"))
# Metrics of the exporters the reference deployment adds (NATS, Postgres, Redis); they do not
# run here, so their names cannot be checked against a scrape.
EXPORTER_PREFIXES = ("gnatsd_", "jetstream_", "pg_", "redis_")
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP span kinds


def sdk(edge_url: str, key: str, **headers: str) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{edge_url}/v1", api_key=key, max_retries=0, timeout=120, default_headers=headers or None
    )


def trace_of(traceparent: str) -> tuple[str, str]:
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, traceparent
    return trace_id, span_id


async def chat(
    edge_url: str, key: str, *, conversation: str | None = None, headers: dict[str, str] | None = None
) -> tuple[str, str, str]:
    """One streamed turn; its request id, conversation id and the response's `traceparent`."""
    client = sdk(edge_url, key, **(headers or {}))
    raw = await client.chat.completions.with_raw_response.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": f"Tell me about the harbour {uuid.uuid4().hex[:6]}."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        # The random model may end on EOS before 16 tokens; the span's count is checked exactly.
        # Stored (an API key's call is a conversation only with `store`): the tests follow the
        # answer into history.
        extra_body={
            "ignore_eos": True,
            "store": True,
            **({"conversation_id": conversation} if conversation else {}),
        },
    )
    text = ""
    request_id = ""
    async for chunk in raw.parse():
        request_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text
    return request_id, raw.headers["x-conversation-id"], raw.headers["traceparent"]


async def first_turn(edge_url: str, key: str) -> str:
    """A conversation's first turn, once its title request has run too: the next turn's events
    then reach the consumers alone, not in a batch with the title's (the batch's own trace)."""
    _, conversation, _ = await chat(edge_url, key)
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:

        async def titled() -> bool:
            resp = await http.get(
                f"/v1/conversations/{conversation}", headers={"Authorization": f"Bearer {key}"}
            )
            return resp.status_code == 200 and resp.json().get("title_source") == "model"

        await eventually(titled, timeout=60, what="the model's title")
    return conversation


def by_service(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    found: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        found.setdefault(span.service, []).append(span)
    return found


# The projections that write the stored answer and the usage row (JetStream durable names).
HISTORY_CONSUMER, USAGE_CONSUMER = "projection-history", "projection-metrics"


def consumer_spans(spans: list[ReceivedSpan], consumer: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == CONSUMER and s.attributes.get("llmchat.consumer") == consumer]


def whole_trace(spans: list[ReceivedSpan]) -> bool:
    """Spans from every service, the engine's and both projections' included, and each one's
    parent present."""
    services = by_service(spans)
    if not {"chat", "inference-worker", "history", "metrics"} <= set(services):
        return False
    names = {s.name for s in services["inference-worker"]}
    if not {"generate", "llm_request"} <= names:
        return False
    if not all(consumer_spans(spans, c) for c in (HISTORY_CONSUMER, USAGE_CONSUMER)):
        return False
    ids = {s.span_id for s in spans}
    return all(s.parent_span_id is None or s.parent_span_id in ids for s in spans)


def the(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, f"{len(found)} {name!r} spans of {service}:\n{summarize(spans)}"
    return found[0]


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    index = {s.span_id: s for s in spans}
    chain = []
    while span.parent_span_id is not None:
        span = index[span.parent_span_id]
        chain.append(span)
    return chain


async def stored_trace_ids(stack: LocalStack, request_id: str) -> tuple[str | None, str | None]:
    conn = await asyncpg.connect(stack.env()["LLMCHAT_POSTGRES_DSN"])
    try:
        usage = await conn.fetchval("SELECT trace_id FROM usage.requests WHERE request_id = $1", request_id)
        message = await conn.fetchval(
            "SELECT trace_id FROM history.messages WHERE request_id = $1 AND role = 'assistant'", request_id
        )
        return usage, message
    finally:
        await conn.close()


async def test_one_trace_from_the_caller_to_the_engine_and_postgres(
    edge_url: str, account: Account, stack: LocalStack, otlp: OtlpReceiver
) -> None:
    conversation = await first_turn(edge_url, account.api_key)
    request_id, _, traceparent = await chat(edge_url, account.api_key, conversation=conversation)
    trace_id, _ = trace_of(traceparent)

    spans = otlp.wait_for(whole_trace, trace_id, timeout=30)
    services = by_service(spans)
    # One root: the edge's HTTP server span for POST /v1/chat/completions.
    roots = [s for s in spans if s.parent_span_id is None]
    assert len(roots) == 1, summarize(spans)
    root = roots[0]
    assert root.service == "chat" and root.kind == SERVER, root.describe()
    assert root.attributes.get("http.route") == "/v1/chat/completions", root.describe()

    publish = the(spans, "chat", "publish chat.v1.requests.tiny-random")
    assert publish.kind == PRODUCER and root in ancestors(publish, spans)
    generate = the(spans, "inference-worker", "generate")
    assert generate.parent_span_id == publish.span_id, summarize(spans)
    assert generate.attributes["llmchat.request_id"] == request_id
    assert generate.attributes["llmchat.completion_tokens"] == 16
    wait = the(spans, "inference-worker", "queue wait")
    assert wait.parent_span_id == publish.span_id
    engine = the(spans, "inference-worker", "llm_request")
    assert engine.parent_span_id == generate.span_id, summarize(spans)
    # The consumers' spans hang off the worker's (the events carry its context), or off the
    # edge's publish (the jobs projection reads the request stream too).
    worker_ids = {s.span_id for s in services["inference-worker"]}
    for service in ("history", "metrics"):
        consumer = [s for s in services[service] if s.kind == CONSUMER]
        parents = {ancestors(s, spans)[0].span_id for s in consumer}
        assert parents & worker_ids, summarize(spans)
        assert parents <= worker_ids | {publish.span_id}, summarize(spans)
    # The projections that stored this answer and its usage row took the worker's events: their
    # spans are children of `generate`, and their Postgres statements are children of theirs.
    db = [s for s in spans if s.attributes.get("db.system") == "postgresql"]
    for name in (HISTORY_CONSUMER, USAGE_CONSUMER):
        projected = consumer_spans(spans, name)
        assert {s.parent_span_id for s in projected} == {generate.span_id}, summarize(spans)
        ids = {s.span_id for s in projected}
        assert any(ids & {a.span_id for a in ancestors(s, spans)} for s in db), f"{name}:\n{summarize(spans)}"

    usage, message = await eventually(
        lambda: _both(stack, request_id), timeout=30, what="the usage row and the stored answer"
    )
    assert usage == trace_id and message == trace_id


async def _both(stack: LocalStack, request_id: str) -> tuple[str, str] | None:
    usage, message = await stored_trace_ids(stack, request_id)
    return (usage, message) if usage and message else None


async def test_a_callers_traceparent_is_honoured(
    edge_url: str, account: Account, stack: LocalStack, otlp: OtlpReceiver
) -> None:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    request_id, _, traceparent = await chat(
        edge_url, account.api_key, headers={"traceparent": f"00-{trace_id}-{parent}-01"}
    )
    returned, server_span = trace_of(traceparent)
    assert returned == trace_id
    root = otlp.wait_for_span("POST /v1/chat/completions", trace_id, timeout=30)
    assert root.parent_span_id == parent and root.span_id == server_span
    usage = await eventually(
        lambda: _usage_trace(stack, request_id), timeout=30, what="the usage row of the traced request"
    )
    assert usage == trace_id


async def _usage_trace(stack: LocalStack, request_id: str) -> str | None:
    usage, _ = await stored_trace_ids(stack, request_id)
    return usage


# -- Prometheus -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, metrics_targets: dict[str, list[str]]) -> Iterator[PrometheusServer]:
    state = stack.state_dir / "prometheus"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    with PrometheusServer(state, metrics_targets, rule_files=[ALERTS]) as server:
        server.wait_targets_up(timeout=60)
        yield server


def scrape(address: str) -> str:
    return httpx.get(f"http://{address}/metrics", timeout=10).text


def exported_names(text: str) -> set[str]:
    """The sample names a scrape can hold for its metric families (a family without samples
    yet, e.g. a labelled counter nobody incremented, still declares its names)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_prometheus_scrapes_every_service(
    edge_url: str, account: Account, prometheus: PrometheusServer, metrics_targets: dict[str, list[str]]
) -> None:
    up = {t["labels"]["job"] for t in prometheus.wait_targets_up(timeout=60)}
    assert up == set(metrics_targets), up
    ttft = f'llmchat_ttft_seconds_count{{model="{MAIN_MODEL}"}}'
    tokens = f'sum(llmchat_worker_generated_tokens_total{{model="{MAIN_MODEL}"}})'
    projected = 'llmchat_consumer_events_total{consumer=~"projection-history|projection-metrics"}'
    ttft_before, tokens_before = prometheus.query_value(ttft) or 0, prometheus.query_value(tokens) or 0
    events_before = {s["metric"]["consumer"]: float(s["value"][1]) for s in prometheus.query(projected)}
    for _ in range(3):
        await chat(edge_url, account.api_key)

    prometheus.wait_for_query(
        ttft, lambda r: bool(r) and float(r[0]["value"][1]) >= ttft_before + 3, timeout=30
    )
    selector = f'{{model="{MAIN_MODEL}"}}'
    mean = prometheus.query_value(
        f"llmchat_ttft_seconds_sum{selector} / llmchat_ttft_seconds_count{selector}"
    )
    assert mean is not None and 0 < mean < 10, mean
    p50 = prometheus.query_value(
        f'histogram_quantile(0.5, sum by (le) (llmchat_ttft_seconds_bucket{{model="{MAIN_MODEL}"}}))'
    )
    assert p50 is not None and 0 < p50 < 10, p50

    prometheus.wait_for_query(
        tokens, lambda r: bool(r) and float(r[0]["value"][1]) >= tokens_before + 3 * 16, timeout=30
    )
    # The engine's own statistics are in the worker's scrape too.
    assert prometheus.query(f'vllm:kv_cache_usage_perc{{model_name="{MAIN_MODEL}"}}')
    # The projections took these requests' events (their counters moved)...
    prometheus.wait_for_query(
        projected,
        lambda r: (
            len(r) == 2 and all(float(s["value"][1]) >= events_before[s["metric"]["consumer"]] + 3 for s in r)
        ),
        timeout=60,
    )
    # ...and every consumer catches up: its backlog and its lag return to 0 (the lag was set by
    # the batches just counted; it reads 0 again only once JetStream reports nothing pending).
    for gauge in ("llmchat_consumer_pending", "llmchat_consumer_lag_seconds"):
        caught_up = prometheus.wait_for_query(
            gauge, lambda r: len(r) >= 4 and all(float(s["value"][1]) == 0 for s in r), timeout=60
        )
        assert {s["metric"]["job"] for s in caught_up} == {"history", "metrics"}, caught_up


def every_expression() -> list[tuple[str, str]]:
    found = [(path.name, expr) for path in DASHBOARDS for expr in dashboard_exprs(path)]
    found += [(ALERTS.name, expr) for expr in rule_exprs(ALERTS)]
    return found


async def test_dashboards_and_alerts_use_only_exported_metrics(
    edge_url: str, account: Account, prometheus: PrometheusServer, metrics_targets: dict[str, list[str]]
) -> None:
    assert len(DASHBOARDS) >= 3, DASHBOARDS
    await chat(edge_url, account.api_key)  # every request-path family has samples
    exported = {"up"}
    for addresses in metrics_targets.values():
        for address in addresses:
            exported |= exported_names(scrape(address))
    expressions = every_expression()
    assert len(expressions) >= 20, expressions
    unknown: dict[str, list[str]] = {}
    for source, expr in expressions:
        for name in metric_names(expr):
            if not name.startswith(EXPORTER_PREFIXES) and name not in exported:
                unknown.setdefault(name, []).append(f"{source}: {expr}")
        prometheus.query(expr)  # valid PromQL: a parse error raises
    assert not unknown, json.dumps(unknown, indent=1)
    # The alert rules loaded and evaluate without errors.
    rules = prometheus.rules()
    assert rules and all(r.get("health") in ("ok", "unknown") for r in rules), rules


async def test_promtool_accepts_the_config_rules_and_their_tests() -> None:
    """The deployment's Prometheus config and rules as promtool sees them, and the rules' own
    unit tests (each alert fires on its bad case and stays quiet otherwise)."""
    promtool = shutil.which("promtool") or str(Path(prometheus_binary()).with_name("promtool"))
    for args in (
        ["check", "config", str(OBSERVABILITY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(OBSERVABILITY / "prometheus" / "alerts_test.yml")],
    ):
        run = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=ALERTS.parent)
        assert run.returncode == 0, f"promtool {' '.join(args)}:\n{run.stdout}{run.stderr}"


# -- logs -------------------------------------------------------------------------------------
def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), f"{path.name}:{n}: {line[:300]!r}"
        lines.append(record)
    return lines


async def test_log_lines_are_json_with_the_requests_trace_id(
    edge_url: str, account: Account, stack: LocalStack, otlp: OtlpReceiver
) -> None:
    conversation = await first_turn(edge_url, account.api_key)
    request_id, _, traceparent = await chat(edge_url, account.api_key, conversation=conversation)
    trace_id, _ = trace_of(traceparent)
    # The consumers have projected it (their spans arrived), so their lines are written.
    otlp.wait_for(whole_trace, trace_id, timeout=30)
    # A login: the auth service's lines of that request.
    login_trace = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=edge_url, timeout=30) as http:
        resp = await http.post(
            "/v1/auth/login",
            json={"email": account.email, "password": account.password},
            headers={"traceparent": f"00-{login_trace}-{uuid.uuid4().hex[:16]}-01"},
        )
        assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 15
    while True:
        missing = _services_without(
            stack,
            {
                "chat": trace_id,
                "worker-main": trace_id,
                "history": trace_id,
                "metrics": trace_id,
                "auth": login_trace,
            },
            request_id,
        )
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, missing


def _services_without(stack: LocalStack, traces: dict[str, str], request_id: str) -> dict[str, str]:
    """The services whose log has no JSON line of the trace (or whose request lines lack it)."""
    missing = {}
    for name, trace_id in traces.items():
        records = json_lines(stack.logs / f"{name}.log")
        for record in records:
            for field in ("ts", "level", "service", "message"):
                assert field in record, f"{name}: {record}"
        of_trace = [r for r in records if r.get("trace_id") == trace_id]
        if not of_trace:
            missing[name] = f"no line with trace id {trace_id}"
            continue
        assert all("span_id" in r for r in of_trace), of_trace
        wrong = [r for r in records if r.get("request_id") == request_id and r.get("trace_id") != trace_id]
        if wrong:
            missing[name] = f"lines of {request_id} without its trace id: {wrong[:3]}"
    return missing
