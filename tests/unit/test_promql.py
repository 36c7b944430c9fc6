"""The PromQL metric-name extractor, the dashboard/rule-file readers, and the test Prometheus
server against Debian's real binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from llmchat_common.launch.process import free_port
from llmchat_common.testing.prometheus import PrometheusQueryError, PrometheusServer
from llmchat_common.testing.promql import PromQLSyntaxError, dashboard_exprs, metric_names, rule_exprs

CASES: list[tuple[str, set[str]]] = [
    (
        "histogram_quantile(0.95, sum by (le, model) (rate(llmchat_ttft_seconds_bucket[5m])))",
        {"llmchat_ttft_seconds_bucket"},
    ),
    (
        'sum(rate(llmchat_http_requests_total{status=~"5.."}[5m]))'
        " / sum(rate(llmchat_http_requests_total[5m]))",
        {"llmchat_http_requests_total"},
    ),
    ("vllm:kv_cache_usage_perc", {"vllm:kv_cache_usage_perc"}),
    ('avg by (model_name) (vllm:num_requests_running{model_name="tiny"})', {"vllm:num_requests_running"}),
    ("max by (consumer) (llmchat_consumer_pending) > 100", {"llmchat_consumer_pending"}),
    ('up{job="worker"} == 0', {"up"}),
    ("absent(x)", {"x"}),
    ('label_replace(foo, "a", "$1", "b", "(.*)")', {"foo"}),
    ("rate(llmchat_completions_total[5m] offset 1h)", {"llmchat_completions_total"}),
    ("llmchat_active_streams offset -5m", {"llmchat_active_streams"}),
    (
        "sum(rate(llmchat_worker_generated_tokens_total[1m])) by (model)"
        " * on(model) group_left llmchat_model_workers",
        {"llmchat_worker_generated_tokens_total", "llmchat_model_workers"},
    ),
    (
        "a * on (model) group_left (instance, job) b",
        {"a", "b"},
    ),
    (
        "a / ignoring(outcome) group_right() sum without (outcome) (b)",
        {"a", "b"},
    ),
    ('{__name__="llmchat_e2e_seconds_count", model="x"}', {"llmchat_e2e_seconds_count"}),
    ('{__name__=~"llmchat_a|llmchat_b"}', {"llmchat_a", "llmchat_b"}),
    ('{__name__=~"llmchat_.*"}', set()),
    ('{"vllm:num_requests_waiting", model_name="m"}', {"vllm:num_requests_waiting"}),
    ("max_over_time(llmchat_consumer_lag_seconds[10m:30s])", {"llmchat_consumer_lag_seconds"}),
    ("deriv(x[5m]) > bool 0 and y or z unless w", {"x", "y", "z", "w"}),
    ("atan2(a, b) + a atan2 b", {"a", "b"}),
    ('topk(5, count_values("version", build_info))', {"build_info"}),
    ("quantile(0.5, foo) + Inf - NaN * 1e-3 + 0x1F + .5", {"foo"}),
    ("SUM BY (le) (bar) AND ON() baz", {"bar", "baz"}),
    ("time() - process_start_time_seconds @ end()", {"process_start_time_seconds"}),
    ("rate(llmchat_ttft_seconds_sum[$__rate_interval]) / $scale", {"llmchat_ttft_seconds_sum"}),
    ('sum(llmchat_active_streams{model=~"$model", job="${job:regex}"})', {"llmchat_active_streams"}),
    ("# a comment\nvector(1) + scalar(up)", {"up"}),
    ("count(llmchat_http_requests_total{route=\"/v1/{x}\", q='it\\'s'})", {"llmchat_http_requests_total"}),
    ("sum(rate(llmchat_usage_tokens_total[1h])) by (model, kind)", {"llmchat_usage_tokens_total"}),
    ("1 + 2", set()),
]


@pytest.mark.parametrize(("expr", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


@pytest.mark.parametrize("expr", ['up{job="x}', "rate(x[5m)", "sum by (le (x)", "x{a='b'"])
def test_malformed_expressions_are_errors(expr: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        metric_names(expr)


def test_dashboard_exprs(tmp_path: Path) -> None:
    dashboard = {
        "title": "llmchat",
        "panels": [
            {"type": "timeseries", "targets": [{"expr": "sum(rate(a_total[5m]))", "refId": "A"}]},
            {
                "type": "row",
                "collapsed": True,
                "panels": [
                    {"type": "stat", "targets": [{"expr": "b"}, {"expr": "c", "hide": True}, {"refId": "C"}]},
                ],
            },
            {"type": "text", "options": {"content": "no targets"}},
        ],
    }
    path = tmp_path / "dash.json"
    path.write_text(json.dumps({"dashboard": dashboard, "overwrite": True}))
    assert dashboard_exprs(path) == ["sum(rate(a_total[5m]))", "b", "c"]
    path.write_text(json.dumps({"rows": [{"panels": [{"targets": [{"expr": "d"}]}]}]}))
    assert dashboard_exprs(path) == ["d"]


def test_rule_exprs(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(
        """
groups:
  - name: llmchat
    rules:
      - record: job:llmchat_http_requests:rate5m
        expr: sum by (job) (rate(llmchat_http_requests_total[5m]))
      - alert: WorkerDown
        expr: up{job="worker"} == 0
        for: 1m
      - alert: Backlog
        expr: |
          max by (consumer) (llmchat_consumer_pending)
            > 100
  - name: empty
    rules: []
"""
    )
    exprs = rule_exprs(path)
    assert exprs[:2] == ["sum by (job) (rate(llmchat_http_requests_total[5m]))", 'up{job="worker"} == 0']
    assert metric_names(exprs[2]) == {"llmchat_consumer_pending"}
    assert len(exprs) == 3


def test_prometheus_server_scrapes_a_target(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    counter = Counter("llmchat_test_events", "Events.", ["kind"], registry=registry)
    counter.labels(kind="a").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: t\n    rules:\n"
        "      - record: kind:llmchat_test_events:sum\n"
        "        expr: sum by (kind) (llmchat_test_events_total)\n"
        "      - alert: TooManyEvents\n        expr: llmchat_test_events_total > 1\n"
    )
    try:
        with PrometheusServer(tmp_path / "prom", {"chat": [f"127.0.0.1:{port}"]}, rule_files=[rules]) as prom:
            (target,) = prom.wait_targets_up(timeout=15)
            assert target["labels"]["job"] == "chat"
            result = prom.wait_for_query('llmchat_test_events_total{job="chat"}', timeout=15)
            assert result[0]["metric"]["kind"] == "a"
            assert float(result[0]["value"][1]) == 3
            assert prom.query_value("sum(llmchat_test_events_total)") == 3
            assert prom.query_value("absent(nothing_here)") == 1
            assert prom.query("scalar(vector(2))")[0]["value"][1] == "2"
            assert {"up", "llmchat_test_events_total", "llmchat_test_events_created"} <= prom.metric_names()
            assert {r["name"] for r in prom.rules()} == {"kind:llmchat_test_events:sum", "TooManyEvents"}
            with pytest.raises(PrometheusQueryError, match="bad_data"):
                prom.query("sum(")
            prom.wait_for_query("kind:llmchat_test_events:sum", timeout=15)
            assert all(r["health"] == "ok" for r in prom.rules())
        assert prom.process is None
        assert "prometheus.yml" in {p.name for p in (tmp_path / "prom").iterdir()}
    finally:
        server.shutdown()
        thread.join(timeout=5)
