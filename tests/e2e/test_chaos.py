"""`make run`'s launcher under chaos (bench/chaos.py --short). The platform it starts serves
the web app and the API. Under a mixed load it meets every fault once: worker engine core,
zombie worker, edge, nats-server, history, metrics, auth, Postgres, Redis. Nothing is lost,
doubled or changed, and only documented errors reach the clients. Ctrl-C then stops every
process it started. The full run and the 30-minute soak are described in docs/reliability.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(1200)
def test_every_fault_once_loses_and_doubles_nothing(models_dir: Path, tmp_path: Path) -> None:
    state = Path(os.environ.get("LLMCHAT_TEST_STATE_DIR", REPO / ".state" / "test-run")).with_name(
        "chaos-run"
    )
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "chaos.py"),
            "--short",
            "--state-dir",
            str(state),
            "--models",
            str(models_dir),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-4000:]
    table = (tmp_path / "chaos.md").read_text()
    assert "PASS" in table and "zombie" in table
    # It is `make run` as a user meets it: what it prints, and Ctrl-C stopped every process it
    # started (the PASS above: exit status 0, none left running).
    output = (tmp_path / "platform.log").read_text()
    assert "llmchat is ready" in output and "(processes left running: 0)" in table
    for line in ("web app:                 http://127.0.0.1:", "API (OpenAI-compatible): http://127.0.0.1:"):
        assert line in output
    assert "supervisor:              http://127.0.0.1:" in output
