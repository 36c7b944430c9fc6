"""A real Prometheus server for tests: scrapes the services' /metrics endpoints and evaluates the
repository's rule files, so dashboards' and alerts' queries run against what the services
actually expose.

Runs Debian's `prometheus` package (infra/system-deps.sh installs it) on a free loopback port,
with its config, rule files, TSDB and log under one state folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from llmchat_common.launch.process import ManagedProcess, find_binary, free_port, wait_until

DEBIAN_BINARY = Path("/usr/bin/prometheus")


class PrometheusQueryError(RuntimeError):
    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error} (query: {expr})")
        self.expr = expr
        self.error_type = error_type
        self.error = error


def prometheus_binary() -> str:
    found = find_binary("prometheus") or (str(DEBIAN_BINARY) if DEBIAN_BINARY.exists() else None)
    if found is None:
        raise RuntimeError("prometheus not found: `make setup` (infra/system-deps.sh) installs it")
    return found


class PrometheusServer:
    """`targets`: job name -> ["host:port", ...] scraped at /metrics every `scrape_interval`
    (rules are evaluated at the same interval)."""

    def __init__(
        self,
        state_dir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        port: int = 0,
    ) -> None:
        self.state_dir = state_dir
        self.targets_by_job = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [Path(path) for path in rule_files]
        self.scrape_interval = scrape_interval
        self.preferred_port = port
        self.port = 0
        self.process: ManagedProcess | None = None
        self._client: httpx.Client | None = None
        for job, addresses in self.targets_by_job.items():
            for address in addresses:
                if "/" in address or ":" not in address:
                    raise ValueError(f"target {address!r} of job {job!r}: expected host:port")

    # -- files ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.state_dir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        """prometheus.yml (JSON, which is YAML) with copies of the rule files next to it, so a
        reload sees the same files whatever happens to the originals."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        rules_dir = self.state_dir / "rules"
        if rules_dir.exists():
            shutil.rmtree(rules_dir)
        rules_dir.mkdir()
        copies: list[str] = []
        for index, source in enumerate(self.rule_files):
            if not source.is_file():
                raise FileNotFoundError(f"rule file {source} not found")
            copy = rules_dir / f"{index:02d}-{source.name}"
            shutil.copyfile(source, copy)
            copies.append(str(copy.resolve()))
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": copies,
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets_by_job.items()
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_path

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> PrometheusServer:
        binary = prometheus_binary()
        self.write_config()
        data = self.state_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.preferred_port)
        self.process = ManagedProcess(
            "prometheus",
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            log_path=self.log_path,
            cwd=self.state_dir,
        ).start()
        self._client = httpx.Client(base_url=self.url, timeout=10.0)
        try:
            wait_until(self._ready, timeout=timeout, what="prometheus", proc=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def reload(self) -> None:
        """Rewrites the config (targets and rule files as they are now) and reloads it."""
        self.write_config()
        response = self.client.post("/-/reload")
        if response.status_code != 200:
            raise RuntimeError(f"prometheus reload failed ({response.status_code}): {response.text.strip()}")

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("PrometheusServer is not started")
        return self._client

    def _ready(self) -> bool:
        try:
            return self.client.get("/-/ready", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    # -- HTTP API ---------------------------------------------------------------------------
    def _api(self, path: str, params: Mapping[str, str] | None = None, what: str = "") -> Any:
        response = self.client.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            response.raise_for_status()
            raise RuntimeError(f"prometheus {path}: not JSON: {response.text[:200]!r}") from None
        if body.get("status") != "success":
            raise PrometheusQueryError(
                what or path, str(body.get("errorType", response.status_code)), str(body.get("error", body))
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: its series as `{"metric": {...}, "value": [ts, "v"]}` (range vector
        results carry "values"; a scalar or string result is one series with no labels)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._api("/api/v1/query", params, what=expr)
        result = data["result"]
        if data.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def query_value(self, expr: str) -> float | None:
        """The value of a query that yields at most one series (None when it yields none)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr} yields {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1])

    def wait_for_query(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """The query's result once `predicate` holds for it (by default: once it is non-empty)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"{expr} did not reach the expected result in {timeout:.0f}s: {result}")
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        """The active targets (job in labels.job, health up/down/unknown, lastError)."""
        return list(self._api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Waits until every configured target has been scraped successfully."""
        expected = sum(len(addresses) for addresses in self.targets_by_job.values())
        deadline = time.monotonic() + timeout
        while True:
            active = self.targets()
            if len(active) >= expected and all(t.get("health") == "up" for t in active):
                return active
            if time.monotonic() >= deadline:
                lines = [
                    f"  {t['labels'].get('job')} {t.get('scrapeUrl')}: {t.get('health')} "
                    f"{t.get('lastError', '')}"
                    for t in active
                ]
                raise AssertionError(
                    f"prometheus targets not all up after {timeout:.0f}s ({len(active)}/{expected} active); "
                    f"log: {self.log_path}\n" + "\n".join(lines)
                )
            time.sleep(0.2)

    def metric_names(self) -> set[str]:
        return set(self._api("/api/v1/label/__name__/values"))

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (alerting and recording), with its group's name in "group", and
        health/lastError from its last evaluation."""
        groups = self._api("/api/v1/rules")["groups"]
        return [{**rule, "group": group["name"]} for group in groups for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        return list(self._api("/api/v1/alerts")["alerts"])
