"""An edge told to stop (SIGTERM) first turns unready for LLMCHAT_CHAT_DRAIN_S while still
serving, so a proxy or Kubernetes stops sending it requests; then it stops."""

from __future__ import annotations

import signal
import time

import httpx

from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL


def test_a_stopping_edge_is_unready_while_it_drains(stack: LocalStack) -> None:
    proc, port = start_edge(
        stack, models=[MAIN_MODEL], extra_env={"LLMCHAT_CHAT_DRAIN_S": "3"}, name="chat-drain"
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        stopped_at = time.monotonic()
        proc.signal(signal.SIGTERM)
        time.sleep(0.5)
        # Unready, but still answering.
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        proc.wait(timeout=30)  # then it stops (TimeoutExpired if it did not)
        assert time.monotonic() - stopped_at >= 3.0
    finally:
        proc.stop()
