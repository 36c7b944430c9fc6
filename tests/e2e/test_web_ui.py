"""The web app in a real browser: Debian's Chromium driven by playwright-core (the app's own
`npm run e2e`, services/chat/web/e2e/) against the session's platform (edge serving the built
app, auth, history, metrics, a vLLM worker). Screenshots go to $LLMCHAT_SCREENSHOTS_DIR when set
(`make screenshots` writes docs/screenshots), else to a temporary folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL, ROOMY_LIMITS, Edge
from tests.helpers import make_admin

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "services" / "chat" / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def web_edge(stack: LocalStack, edge_service: Edge) -> Iterator[str]:
    """An edge of its own (beside the session's, whose services it uses): a person signs in a
    few times, and the per-address login budget is shared in Redis with the rest of the run,
    which logs in from the same 127.0.0.1."""
    logins = {
        "LLMCHAT_CHAT_LIMITS__LOGIN_PER_ACCOUNT": "1000",
        "LLMCHAT_CHAT_LIMITS__LOGIN_PER_ADDRESS": "100000",
    }
    proc, port = start_edge(stack, models=[MAIN_MODEL], extra_env=ROOMY_LIMITS | logins, name="chat-web")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


# The app twice (English, Korean), and a model switch driven from its Models page.
@pytest.mark.timeout(1800)
def test_web_app_in_chromium(stack: LocalStack, web_edge: str, tmp_path: Path) -> None:
    edge_url = web_edge
    assert (WEB / "dist" / "index.html").is_file(), "the web app is not built: run `make web`"
    assert (WEB / "node_modules" / "playwright-core").is_dir(), "run `make web` (npm ci)"
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: make system-deps installs it"
    page = httpx.get(f"{edge_url}/", timeout=10)
    assert page.status_code == 200 and '<div id="root">' in page.text
    admin = make_admin(stack, edge_url)
    screenshots = os.environ.get("LLMCHAT_SCREENSHOTS_DIR") or str(tmp_path / "screenshots")
    env = {
        **os.environ,
        "LLMCHAT_E2E_URL": edge_url,
        "LLMCHAT_E2E_ADMIN_EMAIL": admin.email,
        "LLMCHAT_E2E_ADMIN_PASSWORD": admin.password,
        "LLMCHAT_E2E_SCREENSHOTS": str(Path(screenshots).resolve()),
        "LLMCHAT_E2E_CHROMIUM": CHROMIUM,
        # The Models page switches the suite's worker to SmolLM2 and back (two engine loads).
        "LLMCHAT_E2E_SWITCH": "1",
        "NO_COLOR": "1",
    }
    out = subprocess.run(
        ["npm", "run", "--silent", "e2e"],
        cwd=WEB,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    shots = sorted(p.name for p in Path(screenshots).glob("*.png"))
    # Each page in English and Korean (`.ko`), on a desktop and a phone; the Models and Batches
    # pages on a desktop.
    assert shots == sorted(
        [
            f"{page}-{size}{lang}.png"
            for page in ("chat", "usage", "admin")
            for size in ("desktop", "phone")
            for lang in ("", ".ko")
        ]
        + ["models-desktop.png", "models-desktop.ko.png", "batches-desktop.png", "batches-desktop.ko.png"]
    )
    # Steps that failed once and passed on a retry leave what the page showed in `failed/`.
    retried = [p.read_text()[:3000] for p in sorted(Path(screenshots).glob("failed/*.txt"))]
    if retried:
        warnings.warn("web e2e steps that passed only on a retry:\n" + "\n".join(retried), stacklevel=1)


def test_the_edge_serves_the_app_with_its_own_rules(edge_url: str, auth_headers: dict[str, str]) -> None:
    with httpx.Client(base_url=edge_url, timeout=10) as http:
        index = http.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        csp = index.headers["content-security-policy"]
        # Only this origin's own files: no inline script, no CDN.
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "connect-src 'self'" in csp
        assert index.headers["cache-control"] == "no-cache"
        # The app's own routes load the app (a reload stays on its page).
        for path in ("/c/0b9d6f0e-1c1e-4a7e-9d37-3c1f7e1b2a11", "/usage", "/keys", "/admin", "/login"):
            page = http.get(path)
            assert page.status_code == 200 and page.text == index.text, path
        script = re.search(r'src="(/assets/[^"]+\.js)"', index.text)
        assert script is not None
        asset = http.get(script.group(1))
        assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert http.get("/assets/missing-0000.js").status_code == 404
        assert http.get("/favicon.svg").status_code == 200
        # The API keeps its own answers: JSON errors, its strict policy, never the app's page.
        missing = http.get("/v1/nowhere", headers=auth_headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert missing.headers["content-security-policy"].startswith("default-src 'none'")
        assert http.get("/v1/models", headers=auth_headers).headers["cache-control"] == "no-store"


def test_admins_see_live_workers_with_capacity_and_load(
    stack: LocalStack, edge_url: str, auth_headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=edge_url, timeout=10) as http:
        refused = http.get("/v1/admin/workers", headers=auth_headers)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        admin = make_admin(stack, edge_url)
        listed = http.get("/v1/admin/workers", headers={"Authorization": f"Bearer {admin.access_token}"})
    assert listed.status_code == 200
    body = listed.json()
    workers = [w for w in body["data"] if w["model"] == MAIN_MODEL]
    assert workers and all(w["capacity"] > 0 and w["running"] >= 0 for w in workers)
    assert {"worker_id", "engine_model", "max_model_len", "heartbeat_at", "started_at"} <= set(workers[0])
    model = next(m for m in body["models"] if m["id"] == MAIN_MODEL)
    assert model["workers"] == len(workers) and model["capacity"] == sum(w["capacity"] for w in workers)
