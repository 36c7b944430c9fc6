"""The chaos suite's short run (bench/chaos.py --short): the platform `make run` starts, under
a mixed load, meets every fault once (worker, engine core, zombie worker, edge, nats-server,
history, metrics, auth, Postgres, Redis); nothing is lost, doubled or changed, and only
documented errors reach the clients. The full run and the 30-minute soak are in
docs/reliability.md."""

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
