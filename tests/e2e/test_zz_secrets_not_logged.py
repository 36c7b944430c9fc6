"""No secret reaches a log or an exported span (DESIGN §7): after the whole e2e run (this module
is named to run last), every log of every service and of the infrastructure, and every span the
services exported, is searched for the shared account's password, API key (whole, and its
secret part), access and refresh tokens, for `Authorization` header values, and for the
credentials and prompt this test sends itself down the failure paths (a wrong password, an
unknown API key, malformed and unsigned JWTs, a bogus refresh token), and for the model's answer
to its prompt (prompts and answers are not logged by default).

So that it cannot pass on empty or stale logs, the logs must exist, grow while this test runs,
and name the account's user id or the id of the request this test makes.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from llmchat_common.auth_contracts import API_KEY_PREFIX, API_KEY_VISIBLE_CHARS
from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.otlp import OtlpReceiver
from tests.conftest import MAIN_MODEL
from tests.helpers import CANARY_PASSWORD, Account

# An Authorization header value as any logger would render it: the scheme, then a credential.
BEARER_VALUE = re.compile(rb"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/-]{8,}")
# A signing key in PEM form (auth keeps them in Postgres, never in a log).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
LOG_WAIT_S = 15.0
# The model's answer is searched for in pieces this long, each with this many distinct characters.
ANSWER_WINDOW = 40
ANSWER_MIN_DISTINCT = 12
ANSWER_ATTEMPTS = 5


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def log_files(stack: LocalStack) -> list[Path]:
    """Every service's and the infrastructure's log: all of `logs/` (LocalStack and the test
    helpers write each process's output there), plus anything named *.log elsewhere in the
    state folder (Postgres writes `postgres/postgres.log`)."""
    files = {path for path in stack.logs.rglob("*") if path.is_file()}
    files |= {path for path in stack.state_dir.rglob("*.log") if path.is_file()}
    return sorted(files)


def read_logs(stack: LocalStack) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in log_files(stack)}


@dataclass(frozen=True)
class Hit:
    what: str
    path: Path
    line: int
    excerpt: str


def find_secrets(logs: dict[Path, bytes], secrets: dict[str, str]) -> list[Hit]:
    """Each place a secret or a credential-shaped value appears; the excerpt shows where, with
    the secret itself masked (a failure report must not leak it either)."""
    hits: list[Hit] = []
    for path, data in logs.items():
        for number, line in enumerate(data.splitlines(), start=1):
            found: list[tuple[str, bytes]] = [
                (name, value.encode()) for name, value in secrets.items() if value.encode() in line
            ]
            found += [("an Authorization header value", m.group()) for m in BEARER_VALUE.finditer(line)]
            found += [("a private key", m.group()) for m in PRIVATE_KEY.finditer(line)]
            for name, value in found:
                masked = line.replace(value, f"<{name}>".encode())
                hits.append(Hit(name, path, number, masked[:300].decode(errors="replace")))
    return hits


def answer_windows(text: str) -> dict[str, str]:
    """Pieces of a model answer to search the logs for: every ANSWER_WINDOW characters of each
    line at half-window steps (a log holding any 60 characters of a line in a row holds a whole
    piece), skipping low-variety ones the random model can produce (`!!!!…`) that could occur
    by chance. Each also as JSON escapes it (our structured logs: the tiny model's byte-level
    text often holds U+FFFD). Empty if no line is long enough."""
    pieces: dict[str, str] = {}
    for line in text.splitlines():
        for start in range(0, len(line) - ANSWER_WINDOW + 1, ANSWER_WINDOW // 2):
            piece = line[start : start + ANSWER_WINDOW]
            if len(set(piece)) < ANSWER_MIN_DISTINCT:
                continue
            pieces[f"the model's answer (characters {start}-{start + ANSWER_WINDOW})"] = piece
            escaped = json.dumps(piece)[1:-1]
            if escaped != piece:
                pieces[f"the model's answer (characters {start}-{start + ANSWER_WINDOW}, JSON)"] = escaped
    return pieces


def total_size(stack: LocalStack) -> int:
    return sum(path.stat().st_size for path in log_files(stack))


def test_no_secrets_in_logs(stack: LocalStack, edge_url: str, account: Account, otlp: OtlpReceiver) -> None:
    marker = uuid.uuid4().hex
    wrong_password = f"wrong-password-{marker}"
    unknown_key = f"{API_KEY_PREFIX}{marker}{marker[:11]}"
    unsigned_jwt = ".".join(
        [
            b64url(json.dumps({"alg": "none", "typ": "at+jwt"}).encode()),
            b64url(json.dumps({"sub": account.user_id, "role": "admin", "jti": marker}).encode()),
            "",
        ]
    )
    forged_jwt = ".".join(
        [
            b64url(json.dumps({"alg": "EdDSA", "typ": "at+jwt", "kid": f"kid-{marker}"}).encode()),
            b64url(json.dumps({"sub": account.user_id, "role": "user"}).encode()),
            b64url(f"signature-{marker}".encode()),
        ]
    )
    malformed_jwt = f"eyJ{marker}.not-base64!.{marker}"
    bogus_refresh = f"refresh-{marker}"
    prompt = f"a prompt that must stay private {marker}"

    before = total_size(stack)
    assert before > 0, f"no logs at all under {stack.state_dir}"

    with httpx.Client(base_url=edge_url, timeout=60) as http:
        # Failure paths first, so that whatever they log is searched too.
        wrong = http.post("/v1/auth/login", json={"email": account.email, "password": wrong_password})
        assert wrong.status_code == 401, wrong.text
        nobody = http.post(
            "/v1/auth/login", json={"email": f"nobody-{marker}@example.com", "password": wrong_password}
        )
        assert nobody.status_code == 401, nobody.text
        for token in (unknown_key, unsigned_jwt, forged_jwt, malformed_jwt):
            resp = http.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, resp.text
        refresh = http.post("/v1/auth/refresh", json={"refresh_token": bogus_refresh})
        assert refresh.status_code == 401, refresh.text

        # The happy path with the shared account's own credentials; the answer must be long
        # enough to search for (the random model's text is searched in 40-character pieces).
        auth = {"Authorization": f"Bearer {account.api_key}"}
        answer_pieces: dict[str, str] = {}
        for _ in range(ANSWER_ATTEMPTS):
            chat = http.post(
                "/v1/chat/completions",
                json={
                    "model": MAIN_MODEL,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 64,
                    "ignore_eos": True,
                },
                headers=auth,
            )
            assert chat.status_code == 200, chat.text
            answer_pieces = answer_windows(chat.json()["choices"][0]["message"]["content"])
            if answer_pieces:
                break
        assert answer_pieces, f"no distinctive {ANSWER_WINDOW}-character piece in: {chat.text}"
        request_id = chat.headers["x-request-id"]
        me = http.get("/v1/auth/me", headers=auth)
        assert me.status_code == 200 and me.json()["id"] == account.user_id, me.text

    # Proof of life: the logs grew during this test and name this account or this request.
    # The worker logs the request id last, after the answer has left: wait for it, so that
    # everything this test caused is on disk before the search.
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        logs = read_logs(stack)
        everything = b"\n".join(logs.values())
        if request_id.encode() in everything or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    named = account.user_id.encode() in everything or request_id.encode() in everything
    grown = sum(len(data) for data in logs.values()) > before
    names = sorted(path.name for path in logs)
    assert grown, f"the logs did not grow while this test ran: {names}"
    assert named, f"neither user id {account.user_id} nor request id {request_id} is in any log: {names}"
    for service in ("chat", "auth", "worker"):
        assert any(path.name.startswith(service) and data for path, data in logs.items()), (
            f"no {service} log with content among {names}"
        )

    secret = account.api_key.removeprefix(API_KEY_PREFIX)
    secrets = {
        "the account password (CANARY_PASSWORD)": CANARY_PASSWORD,
        "the API key": account.api_key,
        "the API key's secret part": secret,
        "the API key's hidden part": secret[API_KEY_VISIBLE_CHARS:],
        "the access token": account.access_token,
        "the access token's signature": account.access_token.rsplit(".", 1)[-1],
        "the refresh token": account.refresh_token,
        "a wrong password": wrong_password,
        "an unknown API key": unknown_key,
        "an unsigned JWT": unsigned_jwt,
        "a forged JWT": forged_jwt,
        "a malformed JWT": malformed_jwt,
        "a bogus refresh token": bogus_refresh,
        "a prompt": prompt,
        **answer_pieces,
    }
    # The services' NATS passwords, where the stack has per-service credentials.
    nats_passwords = getattr(stack, "nats_passwords", None)
    if callable(nats_passwords):
        secrets |= {f"the NATS password of {user}": pw for user, pw in nats_passwords().items() if pw}
    assert all(len(value) >= 16 for value in secrets.values())

    # Nor a span of any trace the run exported (attributes, events, resources), this test's
    # request's included.
    otlp.wait_for(
        lambda spans: any(s.attributes.get("llmchat.request_id") == request_id for s in spans), timeout=30
    )
    spans = "\n".join(
        json.dumps([span.name, span.attributes, span.events, span.resource], default=str)
        for span in otlp.all_spans()
    )
    logs[stack.state_dir / "exported-spans"] = spans.encode()

    hits = find_secrets(logs, secrets)
    report = "\n".join(
        f"{hit.path.relative_to(stack.state_dir)}:{hit.line}: {hit.what}: {hit.excerpt}" for hit in hits[:40]
    )
    assert not hits, f"{len(hits)} secret(s) in the logs or spans:\n{report}"
