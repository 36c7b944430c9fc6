"""`make run`'s launcher: everything comes up, answers, and Ctrl-C stops it all cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from llmchat_common.testing.process import free_port
from tests.conftest import REPO
from tests.helpers import register_account


def test_run_serves_then_stops_everything_on_ctrl_c(tmp_path: Path, models_dir: Path) -> None:
    state = REPO / ".state" / "test-run-command"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    state.mkdir(parents=True)
    # Reuse the built model: this test is about the launcher, not the model build.
    (state / "models").symlink_to(models_dir)
    port, supervisor = free_port(), free_port()
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        # The suite's model (make run's default is smollm2-135m-instruct), without the embedding
        # worker make run also starts (tests/e2e/test_embeddings.py has one of its own).
        [
            sys.executable,
            str(REPO / "infra" / "run.py"),
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--model",
            "tiny-random",
            "--embedding-model",
            "none",
            "--supervisor-port",
            str(supervisor),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        body = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        deadline = time.monotonic() + 240
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        account = register_account(base)
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                resp = httpx.post(
                    f"{base}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {account.access_token}"},
                    timeout=60,
                )
                if resp.status_code == 200:
                    answer = resp.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert answer is not None, (tmp_path / "run.log").read_text()[-3000:]
        assert answer["usage"]["completion_tokens"] == 4
        # The web app is served too.
        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and '<div id="root">' in page.text
        # The supervisor watches every process (bench/chaos.py kills them; the supervisor's
        # restarts are tested there and in tests/unit/test_supervisor.py).
        status = supervisor_status(supervisor)
        assert status["ready"] and set(status["processes"]) >= {
            "nats", "postgres", "redis", "worker", "auth", "history", "metrics", "chat",
        }  # fmt: skip
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # nats, postgres, redis, worker (+ engine), auth, edge

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, [p.pid for p in alive]
        output = (tmp_path / "run.log").read_text()
        assert "llmchat is ready" in output
        assert f"http://127.0.0.1:{port}/v1" in output
        assert f"web app:                 http://127.0.0.1:{port}/" in output
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def supervisor_status(port: int) -> dict[str, Any]:
    resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    status: dict[str, Any] = resp.json()
    return status
