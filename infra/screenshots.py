"""The README's screenshots (docs/screenshots) with real answers (`make screenshots`): starts the
platform as `make run` does (infra/run.py, its real default model, no embedding worker) in a
state folder of its own, makes a first admin, and runs the web app's screenshot script
(services/chat/web/e2e/screenshots.e2e.ts: a user asks real questions in Debian's Chromium,
then the chat, usage and admin pages are taken at desktop and phone sizes, the admin's Models
page, and the chat in Korean), then stops it all.
The converted model is kept in the usual state folder's models/ (built there once if missing)."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "services" / "chat" / "web"
ADMIN_EMAIL = "admin@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("LLMCHAT_STATE_DIR", REPO / ".state")) / "models",
    )
    parser.add_argument("--model", default=None, help="infra/run.py's default unless given")
    args = parser.parse_args()
    t0 = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="llmchat-shots-"))
    args.models_dir.resolve().mkdir(parents=True, exist_ok=True)
    (state / "models").symlink_to(args.models_dir.resolve(), target_is_directory=True)
    port = free_port()
    cmd = [
        sys.executable,
        str(REPO / "infra" / "run.py"),
        "--state-dir",
        str(state),
        "--embedding-model",
        "none",
        "--port",
        str(port),
    ]
    if args.model:
        cmd += ["--model", args.model]
    log = (state / "run.log").open("w+")
    run = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while True:
            text = (state / "run.log").read_text()
            if "llmchat is ready" in text:
                break
            if run.poll() is not None or time.monotonic() > deadline:
                print(text, file=sys.stderr)
                print("the platform did not start", file=sys.stderr)
                return 1
            time.sleep(1)
        url = re.search(r"web app:\s+(\S+)", text)
        base = url.group(1).rstrip("/") if url else f"http://127.0.0.1:{port}"
        print(f"platform up in {time.monotonic() - t0:.0f}s at {base}", flush=True)
        password = secrets.token_urlsafe(18)
        env = {**os.environ, "LLMCHAT_ADMIN_PASSWORD": password}
        for line in (state / "auth-cli.env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        made = subprocess.run(
            [sys.executable, "-m", "llmchat_auth", "create-admin", "--email", ADMIN_EMAIL],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if made.returncode != 0:
            print(made.stdout + made.stderr, file=sys.stderr)
            return 1
        out = args.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        shots_env = {
            **os.environ,
            "LLMCHAT_SHOTS_URL": base,
            "LLMCHAT_SHOTS_ADMIN_EMAIL": ADMIN_EMAIL,
            "LLMCHAT_SHOTS_ADMIN_PASSWORD": password,
            "LLMCHAT_SHOTS_DIR": str(out),
            "LLMCHAT_E2E_CHROMIUM": shutil.which("chromium") or "/usr/bin/chromium",
            "NO_COLOR": "1",
        }
        vitest = [
            str(WEB / "node_modules" / ".bin" / "vitest"),
            "run",
            "--config",
            "vitest.e2e.config.ts",
            "--testTimeout",
            "600000",
            "e2e/screenshots.e2e.ts",
        ]
        done = subprocess.run(vitest, cwd=WEB, env=shots_env, timeout=1800, check=False)
        if done.returncode != 0:
            print(f"the screenshot script failed; the platform's logs: {state / 'logs'}", file=sys.stderr)
            return 1
        print(f"screenshots in {out} after {time.monotonic() - t0:.0f}s", flush=True)
        return 0
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=120)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
        log.close()
        if "done" in locals() and done.returncode == 0:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
