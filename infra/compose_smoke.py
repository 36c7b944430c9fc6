"""`make compose-smoke`: docker-compose.yml started for real, with podman, on a machine that
reaches no container registry.

1. A Debian bookworm base image is built by debootstrap (python3 and a venv on PATH, as the
   official Python images have; the host's CA bundle inside, for builds behind a TLS proxy).
2. NATS, Postgres, Redis and Node.js images are built on it from infra/compose/images.
3. Every service image is built from its own Dockerfile, with the base (and Node.js) image as
   build arguments; the worker with its CPU extra.
4. The stack starts from docker-compose.yml plus infra/compose/smoke.yml (images and host
   networking only) with the CPU worker in place of the GPU one.
5. The smoke registers a user, streams a chat through the edge with the OpenAI SDK, and checks
   the history rows and the usage row in Postgres against what the client saw.
6. Everything stops and the containers and volumes go (images stay, as a cache: a second run
   builds nothing that did not change).

Opt-in (not in `make test`): the first run builds images for several minutes. Needs root,
podman, runc and debootstrap (`make compose-smoke` installs them from Debian's packages) and
podman-compose (requirements-dev.txt). Logs and a JSON report go to .state/compose/.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".state" / "compose"
PROJECT = "llmchat-smoke"
BASE_IMAGE = "localhost/llmchat-base:bookworm"
NODE_IMAGE = "localhost/llmchat-smoke-node:latest"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INFRA = ["nats", "postgres", "redis"]
APPS = ["auth", "history", "metrics", "chat", "inference-worker-cpu"]
# Service -> Dockerfile, for the images smoke.yml names (localhost/llmchat-<name>:smoke).
SERVICE_IMAGES = {
    "chat": "services/chat/Dockerfile",
    "auth": "services/auth/Dockerfile",
    "history": "services/history/Dockerfile",
    "metrics": "services/metrics/Dockerfile",
    "inference-worker": "services/inference-worker/Dockerfile",
}
# What the stack binds on 127.0.0.1 (host networking): checked free before it starts.
PORTS = [4222, 8222, 5432, 6379, 8080, 8081, 9464, 9465, 9466, 9467, 9468]
EDGE = "http://127.0.0.1:8080"
QUESTION = "What is the capital of France?"
CONTAINERS_CONF = """\
# Written by infra/compose_smoke.py. crun's setrlimit is not permitted in this sandbox and
# cgroup hybrid mode is not supported: runc, with explicit ulimits.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
"""


def log(message: str) -> None:
    print(f"[compose-smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name]).returncode == 0


def build_base() -> None:
    """debootstrap's minimal bookworm with python3, a venv first on PATH (so `python` and `pip`
    work as in python:3.11-slim, and pip may install: Debian's own Python refuses, PEP 668) and
    the host's CA bundle (the system store, pip and npm all read it)."""
    if image_exists(BASE_IMAGE):
        return
    log(f"building {BASE_IMAGE} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(dir=STATE) as tmp:
        root = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            stdout=subprocess.DEVNULL,
        )
        bundle = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))
        if bundle.is_file():
            # Also where update-ca-certificates looks, so later apt installs keep it.
            shutil.copy(bundle, root / "usr/local/share/ca-certificates/host-bundle.crt")
            shutil.copy(bundle, root / "etc/ssl/certs/ca-certificates.crt")
        run(["chroot", str(root), "python3", "-m", "venv", "/usr/local/python"])
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        changes = [
            "ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt",
        ]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["podman", "import", *[a for c in changes for a in ("--change", c)], "-", BASE_IMAGE],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
        if tar.wait() != 0:
            raise RuntimeError("tar of the base image's root failed")


def pip_volumes() -> list[str]:
    """The host's pip configuration and local wheel folders, mounted read-only into builds: a
    build then installs what `make setup` installs here (a machine may get torch's CPU build
    from a local folder rather than from PyTorch's index)."""
    paths = {Path("/etc/pip.conf"), Path("/etc/xdg/pip")}
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            paths.update(Path(p) for p in value.strip("'\"").split() if p.startswith("/"))
    return [f"--volume={p}:{p}:ro" for p in sorted(paths) if p.exists()]


def reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)  # noqa: S310 (an https URL of this file's)
        return True
    except OSError:
        return False


def build(tag: str, dockerfile: Path, context: Path, args: dict[str, str], volumes: list[str]) -> None:
    started = time.monotonic()
    logfile = STATE / "logs" / f"build-{tag.rsplit('/', 1)[-1].replace(':', '-')}.log"
    cmd = [
        "podman",
        "build",
        "--format",
        "docker",
        "--network",
        "host",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        *volumes,
        *[f"--build-arg={k}={v}" for k, v in args.items()],
        str(context),
    ]
    with logfile.open("w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"building {tag} failed; see {logfile}")
    log(f"built {tag} in {time.monotonic() - started:.0f} s")


def build_images() -> None:
    build_base()
    volumes = pip_volumes()
    base = {"BASE_IMAGE": BASE_IMAGE}
    for name in ("nats", "postgres", "redis", "node"):
        folder = REPO / "infra" / "compose" / "images" / name
        build(f"localhost/llmchat-smoke-{name}:latest", folder / "Dockerfile", folder, base, volumes)
    args = {"PYTHON_IMAGE": BASE_IMAGE}
    for service, dockerfile in SERVICE_IMAGES.items():
        extra: dict[str, str] = {}
        if service == "chat":
            extra = {"NODE_IMAGE": NODE_IMAGE}
        if service == "inference-worker":
            extra = {"WORKER_EXTRA": "cpu"}
            if not reachable(f"{TORCH_CPU_INDEX}/torch/"):
                extra["TORCH_CPU_INDEX"] = ""
            if os.environ.get("PIP_FIND_LINKS"):
                extra["PIP_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]
        build(f"localhost/llmchat-{service}:smoke", REPO / dockerfile, REPO, args | extra, volumes)


def env_file() -> Path:
    """The compose variables: fresh NATS passwords (letters and digits, starting with a
    letter, as docker-compose.yml asks) for this run."""
    path = STATE / "smoke.env"
    lines = [
        f"NATS_{user}_PASSWORD=p{secrets.token_hex(24)}"
        for user in ("ADMIN", "CHAT", "WORKER", "AUTH", "HISTORY", "METRICS")
    ]
    lines += [
        f"POSTGRES_PASSWORD=pg{secrets.token_hex(16)}",
        f"GRAFANA_ADMIN_PASSWORD={secrets.token_hex(8)}",
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


class Stack:
    def __init__(self, env: Path) -> None:
        self.compose = [
            sys.executable,
            "-m",
            "podman_compose",
            "--project-name",
            PROJECT,
            "--env-file",
            str(env),
            "--profile",
            "cpu",
            "-f",
            str(REPO / "docker-compose.yml"),
            "-f",
            str(REPO / "infra" / "compose" / "smoke.yml"),
        ]

    def __call__(self, *args: str) -> None:
        with (STATE / "logs" / "podman-compose.log").open("a") as out:
            run([*self.compose, *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def containers(self) -> dict[str, str]:
        """Service -> container name, for this project's containers."""
        listed = subprocess.run(
            [
                "podman",
                "ps",
                "-a",
                "--filter",
                f"label=io.podman.compose.project={PROJECT}",
                "--format",
                "json",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return {c["Labels"]["com.docker.compose.service"]: c["Names"][0] for c in json.loads(listed or "[]")}

    def wait_healthy(self, services: list[str], timeout_s: float) -> None:
        """Runs each container's health check until it passes (podman runs them on a systemd
        timer, and this machine has no systemd: so the smoke runs them itself)."""
        deadline = time.monotonic() + timeout_s
        waiting = set(services)
        while waiting:
            names = self.containers()
            for service in sorted(waiting):
                name = names.get(service)
                if name is None:
                    raise RuntimeError(f"{service}: no container")
                state = subprocess.run(
                    ["podman", "inspect", "--format", "{{.State.Status}}", name],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                if state not in ("running", "created"):
                    raise RuntimeError(f"{service} is {state}; see its log in {STATE / 'logs'}")
                if (
                    subprocess.run(["podman", "healthcheck", "run", name], capture_output=True).returncode
                    == 0
                ):
                    log(f"{service} is healthy")
                    waiting.discard(service)
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {sorted(waiting)}")
            time.sleep(2)

    def save_logs(self) -> None:
        for service, name in self.containers().items():
            with (STATE / "logs" / f"{service}.log").open("w") as out:
                subprocess.run(["podman", "logs", name], stdout=out, stderr=subprocess.STDOUT)

    def query(self, sql: str, **params: str) -> Any:
        """One JSON value from Postgres, with psql's quoted variables (:'name') as parameters."""
        cmd = ["podman", "exec", "-i", self.containers()["postgres"], "psql", "-U", "llmchat"]
        cmd += ["-d", "llmchat", "-tA", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        cmd += [f"--set={name}={value}" for name, value in params.items()]
        return json.loads(run(cmd, input=sql, capture_output=True).stdout)


def smoke(stack: Stack, model: str) -> dict[str, Any]:
    """A user's first minute: register, log in, make an API key, stream a chat with the OpenAI
    SDK; then the rows the history and usage projections wrote for it, compared with it."""
    from openai import OpenAI

    from llmchat_common.testing.accounts import create_account

    account = create_account(EDGE)
    client = OpenAI(base_url=f"{EDGE}/v1", api_key=account.api_key, max_retries=0, timeout=120)
    started = time.monotonic()
    text, usage, first, request_id = "", None, None, ""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=48,
        temperature=0,
        store=True,  # an API key's chats are kept in history only when asked (OpenAI's default)
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        request_id = chunk.id
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    if not text or usage is None:
        raise AssertionError(f"the stream gave text {text!r} and usage {usage}")
    log(f"answer ({usage.completion_tokens} tokens, first after {first:.2f} s): {text!r}")
    # The stored rows: the turn in history; in usage, the chat once and the conversation's title
    # (asked of the model after the first answer).
    deadline = time.monotonic() + 60
    while True:
        stored = stack.query(
            "SELECT coalesce(json_agg(json_build_array(role, content) ORDER BY position), '[]') "
            "FROM history.messages WHERE user_id = :'user'",
            user=account.user_id,
        )
        usage_rows = stack.query(
            "SELECT coalesce(json_agg(json_build_array(request_id, kind, status, completion_tokens)"
            " ORDER BY kind), '[]') FROM usage.requests WHERE user_id = :'user'",
            user=account.user_id,
        )
        if (len(stored) >= 2 and len(usage_rows) >= 2) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = [["user", QUESTION], ["assistant", text]]
    if stored != expected:
        raise AssertionError(f"history rows {stored} differ from the chat {expected}")
    chats = [row for row in usage_rows if row[1] == "chat"]
    titles = [row for row in usage_rows if row[1] == "title"]
    if chats != [[request_id, "chat", "completed", usage.completion_tokens]] or len(titles) != 1:
        raise AssertionError(
            f"usage rows {usage_rows}: expected {request_id} once, completed with "
            f"{usage.completion_tokens} tokens, and one title request"
        )
    listed = client.get("/conversations", cast_to=httpx.Response).json()["data"]
    if [c["message_count"] for c in listed] != [2]:
        raise AssertionError(f"GET /v1/conversations: {listed}, expected one of 2 messages")
    log(
        "history: the question and the answer, once each, in one conversation titled "
        f"{listed[0]['title']!r}; usage: the chat once with the same tokens, and its title"
    )
    return {
        "model": model,
        "answer": text,
        "completion_tokens": usage.completion_tokens,
        "ttft_s": round(first or 0, 3),
        "history_rows": stored,
        "usage_rows": usage_rows,
    }


def check_ports() -> None:
    busy = []
    for port in PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    if busy:
        sys.exit(
            f"compose-smoke: ports {busy} on 127.0.0.1 are in use (the stack runs with host "
            "networking on the compose defaults); stop what holds them first"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="the CPU worker's model (LLMCHAT_CPU_MODEL); tiny-random is faster",
    )
    parser.add_argument("--keep", action="store_true", help="leave the stack running at the end")
    args = parser.parse_args()
    for tool in ("podman", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            sys.exit(f"compose-smoke: {tool} is missing (make compose-smoke installs it)")
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    conf = STATE / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)
    os.environ["LLMCHAT_CPU_MODEL"] = args.model
    check_ports()
    started = time.monotonic()
    build_images()
    built_s = time.monotonic() - started
    stack = Stack(env_file())
    report: dict[str, Any] = {"images_built_s": round(built_s)}
    try:
        stack("down", "-v")  # what an interrupted run left
        stack("up", "-d", *INFRA)
        stack.wait_healthy(INFRA, 120)
        stack("up", "-d", "--no-deps", *APPS)
        stack.wait_healthy(APPS, 600)
        report["stack_up_s"] = round(time.monotonic() - started - built_s)
        report |= smoke(stack, args.model)
        report["result"] = "pass"
    except Exception as exc:
        report["result"] = f"fail: {exc}"
        raise
    finally:
        stack.save_logs()
        if not args.keep:
            stack("down", "-v")
        (STATE / "smoke-report.json").write_text(json.dumps(report, indent=2) + "\n")
        log(f"report: {json.dumps(report)}; logs in {STATE / 'logs'}")


if __name__ == "__main__":
    main()
