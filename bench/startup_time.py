"""Time from `python infra/run.py` (what `make run` runs once set-up is done) to the first answer.

Runs twice on one new state folder: a first start (initdb, the tiny model is built) and a
second start (data kept).

    .venv/bin/python bench/startup_time.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from llmchat_common.testing.accounts import Account, create_account

REPO = Path(__file__).resolve().parents[1]

PORT = 18099


def time_to_first_answer(state: Path, account: list[Account]) -> float:
    """`account`: made on the first start, reused on the second (its data is kept)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "infra" / "run.py"), "--state-dir", str(state), "--port", str(PORT)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    body = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    try:
        while time.perf_counter() - t0 < 600:
            try:
                if not account:
                    account.append(create_account(f"http://127.0.0.1:{PORT}"))
                resp = httpx.post(
                    f"http://127.0.0.1:{PORT}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {account[0].api_key}"},
                    timeout=600,
                )
                if resp.status_code == 200:
                    return time.perf_counter() - t0
            except (httpx.HTTPError, RuntimeError):
                pass
            time.sleep(0.25)
        raise TimeoutError("no answer within 600 s")
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="llmchat-startup-"))
    account: list[Account] = []
    first = time_to_first_answer(state, account)
    print(f"first start (new state folder): first answer after {first:.1f} s (an account made on the way)")
    print(f"second start (data kept):       first answer after {time_to_first_answer(state, account):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
