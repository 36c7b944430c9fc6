"""Property-based fuzzing of every operation in the live edge's OpenAPI schema (schemathesis):
schema-valid and schema-invalid requests, with valid credentials and with broken ones. No answer
may be a 5xx or a hang; every answer must match its documented schema and content type, and any
status the schema does not document must be an error in OpenAI's shape.

Schemathesis' pytest integration (`schemathesis.pytest.from_fixture`) sets `Node._nodeid`, which
pytest 9 no longer has; the schema comes from a session fixture (the live edge), so the
operations are driven here through their documented Hypothesis strategies (`as_strategy`).
Failures are collected across all operations, not raised at the first one, so one run reports
every broken case with its exact reproduction (no shrinking: each example is a real request).

The shared account must survive: account-changing routes (logout, password change, key
revocation) act on a dedicated user, admin routes on a dedicated admin, and an admin case that
targets any of the test accounts is not sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from llmchat_common.launch.stack import LocalStack
from tests.conftest import MAIN_MODEL
from tests.helpers import CANARY_PASSWORD, Account, register_account

# Chat completions that reach the engine stay short: a CPU engine is slow per token.
MAX_TOKENS = 4
# Examples per operation and generation mode; chat completions cost an engine call each.
# By default the examples are the same on every run. For a deeper run by hand:
# LLMCHAT_FUZZ_SCALE multiplies them, LLMCHAT_FUZZ_SEED picks other ones, LLMCHAT_FUZZ_TRACE=1
# prints every request and answer (with -s).
SCALE = float(os.environ.get("LLMCHAT_FUZZ_SCALE", "1"))
SEED = os.environ.get("LLMCHAT_FUZZ_SEED")
TRACE = bool(os.environ.get("LLMCHAT_FUZZ_TRACE"))
EXAMPLES = round(100 * SCALE)
CHAT_EXAMPLES = round(60 * SCALE)
BROKEN_AUTH_EXAMPLES = round(8 * SCALE)
SURROGATE_EXAMPLES = round(20 * SCALE)
# Register and login share per-address throttles (Redis) with every later test on 127.0.0.1:
# only this many of each reach the edge per generation mode (most negative cases are refused
# by validation, before the throttle counts them).
THROTTLED_BUDGET = {"/v1/auth/register": 5, "/v1/auth/login": 5}
# Routes that take no credentials: fuzzing their Authorization header tells nothing.
PUBLIC = {"/v1/auth/register", "/v1/auth/login", "/v1/auth/refresh", "/.well-known/jwks.json"}
# A request that takes longer is reported as a hang.
CALL_TIMEOUT_S = {"/v1/chat/completions": 60.0}
DEFAULT_CALL_TIMEOUT_S = 20.0
# A 503/504 is the designed answer when the caller's own `timeout` is this short (a capped
# completion takes well under a second).
SHORT_DEADLINE_S = 2.0

EXPECTED_OPERATIONS = {
    "GET /v1/models",
    "GET /v1/models/{model}",
    "POST /v1/chat/completions",
    "POST /v1/embeddings",
    "POST /v1/completions",
    "POST /v1/responses",
    "GET /v1/responses/{response_id}",
    "POST /v1/files",
    "GET /v1/files/{file_id}/content",
    "POST /v1/batches",
    "POST /v1/batches/{batch_id}/cancel",
    "POST /v1/auth/register",
    "POST /v1/auth/login",
    "POST /v1/auth/refresh",
    "POST /v1/auth/logout",
    "GET /v1/auth/me",
    "POST /v1/auth/password",
    "GET /v1/auth/api-keys",
    "POST /v1/auth/api-keys",
    "DELETE /v1/auth/api-keys/{key_id}",
    "GET /.well-known/jwks.json",
    "GET /v1/admin/users",
    "PATCH /v1/admin/users/{user_id}",
}
ERROR_FIELDS = {"message", "type", "param", "code"}
AnyCase = Case[Any]
Operation = APIOperation[Any, Any, Any, Any]
CHAT: dict[str, Any] = {
    "model": MAIN_MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": MAX_TOKENS,
}


@dataclass(repr=False)
class Identities:
    """Who calls which route: the shared account's API key by default, a dedicated user's
    session for account management, a dedicated admin for admin routes."""

    edge_url: str
    shared: Account
    user: Account
    admin: Account
    refresh_token: str = ""

    def __post_init__(self) -> None:
        self.refresh_token = self.user.refresh_token

    def __repr__(self) -> str:
        # Never the tokens (pytest prints fixture values in failure reports).
        return (
            f"Identities(shared={self.shared.user_id}, user={self.user.user_id}, admin={self.admin.user_id})"
        )

    def protected_ids(self) -> set[str]:
        return {self.shared.user_id, self.user.user_id, self.admin.user_id}

    def bearer_for(self, path: str) -> str:
        if path in ("/v1/auth/logout", "/v1/auth/password") or path.startswith("/v1/auth/api-keys"):
            return self.user.access_token
        if path.startswith("/v1/admin/"):
            return self.admin.access_token
        return self.shared.api_key

    def fresh_user_token(self) -> str:
        """A new access token for each logout case (a logout revokes the token it was sent
        with), from the dedicated user's refresh token (not throttled, unlike login)."""
        resp = requests.post(
            f"{self.edge_url}/v1/auth/refresh", json={"refresh_token": self.refresh_token}, timeout=10
        )
        if resp.status_code != 200:
            return self.user.access_token
        pair = resp.json()
        self.refresh_token = pair["refresh_token"]
        token: str = pair["access_token"]
        return token


def make_admin(stack: LocalStack, edge_url: str) -> Account:
    email = f"fuzz-admin-{uuid.uuid4().hex[:10]}@example.com"
    out = subprocess.run(
        [sys.executable, "-m", "llmchat_auth", "create-admin", "--email", email],
        env={**os.environ, **stack.env("auth"), "LLMCHAT_ADMIN_PASSWORD": CANARY_PASSWORD},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with httpx.Client(base_url=edge_url, timeout=30) as http:
        login = http.post("/v1/auth/login", json={"email": email, "password": CANARY_PASSWORD})
        assert login.status_code == 200, login.text
        pair = login.json()
        me = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
        assert me.status_code == 200 and me.json()["role"] == "admin", me.text
    return Account(email, CANARY_PASSWORD, pair["access_token"], pair["refresh_token"], "", me.json()["id"])


@pytest.fixture(scope="module")
def identities(stack: LocalStack, edge_url: str, account: Account) -> Identities:
    return Identities(edge_url, account, register_account(edge_url), make_admin(stack, edge_url))


# -- checks ---------------------------------------------------------------------------------
def caller_deadline(case: AnyCase) -> float | None:
    body = case.body
    if isinstance(body, dict):
        timeout = body.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            return float(timeout)
    return None


def error_code(response: Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = data["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def designed_deadline_answer(response: Response, case: AnyCase) -> bool:
    """The documented answer to a deadline the caller itself made short (README: 504
    `deadline_exceeded`, 503 `no_worker`)."""
    deadline = caller_deadline(case)
    return (
        response.status_code in (503, 504)
        and deadline is not None
        and deadline < SHORT_DEADLINE_S
        and error_code(response) in ("deadline_exceeded", "no_worker")
    )


def no_server_error(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """No 5xx, except the designed answer to a short caller deadline."""
    if designed_deadline_answer(response, case):
        return None
    return not_a_server_error(ctx, response, case)


def documented_or_openai_error(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """Any status the schema does not document is an error in OpenAI's shape; so is every
    error, documented or not (DESIGN §6: a clear JSON error on `/v1`)."""
    check_documented_or_openai_error(response, case)
    return None


def check_documented_or_openai_error(response: Response, case: AnyCase) -> None:
    status = response.status_code
    documented = {str(code) for code in case.operation.responses.status_codes}
    if status < 400:
        assert str(status) in documented, f"undocumented status {status} (documented: {sorted(documented)})"
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"error {status} with content-type {content_type!r}"
    try:
        data = response.json()
    except ValueError:
        raise AssertionError(f"error {status} is not JSON: {response.text[:200]!r}") from None
    assert isinstance(data, dict) and set(data) == {"error"}, (
        f"error {status} is not {{'error': ...}}: {data}"
    )
    error = data["error"]
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, f"error object fields: {error}"
    assert isinstance(error["message"], str) and error["message"], f"error without a message: {error}"
    assert isinstance(error["type"], str) and error["type"], f"error without a type: {error}"
    assert error["param"] is None or isinstance(error["param"], str), f"error param: {error}"
    assert error["code"] is None or isinstance(error["code"], str), f"error code: {error}"
    if status == 401:
        challenge = response.headers.get("www-authenticate", [""])[0]
        assert challenge.startswith("Bearer"), f"401 without a Bearer challenge: {challenge!r}"


def completion_shape(ctx: CheckContext, response: Response, case: AnyCase) -> bool | None:
    """The chat route's 200 has no schema: it must be OpenAI's completion, or for a stream its
    chunks ending in `[DONE]`, with no server error inside the stream."""
    if case.operation.path != "/v1/chat/completions" or response.status_code != 200:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    if not content_type.startswith("text/event-stream"):
        body = response.json()
        assert body.get("object") == "chat.completion", f"not a chat.completion: {body}"
        assert len(body.get("choices") or []) == 1 and "usage" in body, f"completion shape: {body}"
        return None
    # Capped completions send a handful of events: a stream cut short (at the request timeout
    # or at schemathesis' event cap) did not end.
    assert not response.stream_cut_short, "the stream did not end"
    payloads = [
        line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")
    ]
    assert payloads and payloads[-1] == "[DONE]", f"the stream does not end with [DONE]: {payloads[-3:]}"
    for payload in payloads[:-1]:
        event = json.loads(payload)
        error = event.get("error")
        if error is not None:
            assert error.get("type") != "server_error", f"server error inside the stream: {error}"
        else:
            assert event.get("object") == "chat.completion.chunk", f"not a chunk: {event}"
    return None


CHECKS: list[Callable[[CheckContext, Response, AnyCase], bool | None]] = [
    no_server_error,
    response_schema_conformance,
    content_type_conformance,
    documented_or_openai_error,
    completion_shape,
]


# -- the run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Strand:
    name: str
    mode: GenerationMode
    valid_auth: bool
    # Put a lone UTF-16 surrogate into one string of the JSON body: valid JSON (`"\ud800"`)
    # that no UTF-8 encoder takes, and that Hypothesis never generates by itself.
    surrogate: bool = False


STRANDS = [
    Strand("positive", GenerationMode.POSITIVE, True),
    Strand("negative", GenerationMode.NEGATIVE, True),
    # Generated Authorization headers (random bearers, missing or malformed headers).
    Strand("broken-auth", GenerationMode.NEGATIVE, False),
    Strand("lone-surrogate", GenerationMode.POSITIVE, True, surrogate=True),
]
LONE_SURROGATE = "\ud800"


@dataclass
class Finding:
    operation: str
    strand: str
    request: str
    status: int | None
    response: str
    problems: list[str]

    def key(self) -> tuple[str, int | None, tuple[str, ...]]:
        # The first line of each problem names it (e.g. "Server error"); details vary per case.
        return self.operation, self.status, tuple(sorted(p.splitlines()[0] for p in self.problems))

    def render(self) -> str:
        problems = "\n".join(f"    - {line}" for p in self.problems for line in p.splitlines()[:4])
        return (
            f"{self.operation} [{self.strand}] -> {self.status}\n"
            f"  request:  {self.request}\n  response: {self.response}\n  problems:\n{problems}"
        )


@dataclass
class Run:
    identities: Identities
    findings: list[Finding] = field(default_factory=list)
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    statuses: dict[str, set[int]] = field(default_factory=dict)
    # Per operation and status: how many answers (printed, for judging the run's coverage).
    tally: dict[str, dict[int, int]] = field(default_factory=dict)


def describe(case: AnyCase, identity: str) -> str:
    url = case.formatted_path
    if case.query:
        url += f"?{case.query}"
    body = "" if not isinstance(case.body, dict | list | str | int | float | bool) else json.dumps(case.body)
    return f"{case.method.upper()} {url} as {identity} body={body[:600]}"


def steer_chat(case: AnyCase, served: bool, stream: bool | None) -> None:
    """Chat cases that name the served model reach the engine; any that may, have
    `max_tokens` capped (set when absent: `ignore_eos` would otherwise run to the context)."""
    body = case.body
    if case.operation.path != "/v1/chat/completions" or not isinstance(body, dict):
        return
    if served and isinstance(body.get("model"), str):
        body["model"] = MAIN_MODEL
        if stream is not None:
            body["stream"] = stream
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        # Floats too: the edge takes 295.0 as 295.
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[name] = MAX_TOKENS
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    case.body = body


def string_slots(value: Any) -> list[tuple[dict[str, Any] | list[Any], str | int]]:
    """Where the JSON value holds a string: (container, key or index) pairs."""
    slots: list[tuple[dict[str, Any] | list[Any], str | int]] = []
    items: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        if isinstance(item, str):
            slots.append((value, key))
        else:
            slots.extend(string_slots(item))
    return slots


def add_surrogate(case: AnyCase, pick: int) -> bool:
    """Appends a lone surrogate to one string of the body; False when it has none."""
    slots = string_slots(case.body)
    if not slots:
        return False
    container, key = slots[pick % len(slots)]
    container[key] += LONE_SURROGATE  # type: ignore[index]
    return True


def guarded(case: AnyCase, identities: Identities) -> bool:
    """Cases that must not be sent: admin actions on the test accounts themselves."""
    target = case.path_parameters.get("user_id") if case.path_parameters else None
    return case.operation.path.startswith("/v1/admin/users/") and target in identities.protected_ids()


def exercise(run: Run, case: AnyCase, strand: Strand) -> None:
    path = case.operation.path
    if guarded(case, run.identities):
        return
    budget = THROTTLED_BUDGET.get(path)
    if budget is not None and run.sent.get((path, strand.name), 0) >= budget:
        return
    run.sent[(path, strand.name)] = run.sent.get((path, strand.name), 0) + 1
    identity = "a valid token" if strand.valid_auth else "generated credentials"
    if strand.valid_auth and path == "/v1/auth/logout":
        # A logout revokes the token it was sent with: each case gets its own.
        case.headers["Authorization"] = f"Bearer {run.identities.fresh_user_token()}"
    request = describe(case, identity)
    timeout = CALL_TIMEOUT_S.get(path, DEFAULT_CALL_TIMEOUT_S)
    started = time.monotonic()
    try:
        response = send_raw(run, case, timeout) if strand.surrogate else case.call(timeout=timeout)
    except requests.Timeout:
        run.findings.append(
            Finding(
                case.operation.label, strand.name, request, None, "-", [f"Hang: no answer in {timeout:.0f} s"]
            )
        )
        return
    except requests.RequestException as exc:
        run.findings.append(
            Finding(case.operation.label, strand.name, request, None, "-", [f"Network error: {exc!r}"])
        )
        return
    run.statuses.setdefault(case.operation.label, set()).add(response.status_code)
    counts = run.tally.setdefault(case.operation.label, {})
    counts[response.status_code] = counts.get(response.status_code, 0) + 1
    if TRACE:
        print("TRACE", response.status_code, request[:300], response.text[:200])
    try:
        if strand.surrogate:
            check_raw(response, case)
        else:
            case.validate_response(response, checks=CHECKS)
    except (FailureGroup, AssertionError) as exc:
        elapsed = time.monotonic() - started
        if isinstance(exc, FailureGroup):
            problems = [f"{failure.title}\n{failure.message}" for failure in exc.exceptions]
        else:
            problems = [f"Check failed\n{exc}"]
        answer = f"{response.status_code} in {elapsed:.1f}s {response.text[:400]!r}"
        run.findings.append(
            Finding(case.operation.label, strand.name, request, response.status_code, answer, problems)
        )


def send_raw(run: Run, case: AnyCase, timeout: float) -> Response:
    """Sends the case without schemathesis, which cannot re-validate or serialise a body that
    holds a lone surrogate (the JSON escapes it as `\\ud800`)."""
    resp = requests.request(
        case.method,
        f"{run.identities.edge_url}{case.formatted_path}",
        params=case.query or None,
        headers={**case.headers, "Content-Type": "application/json"},
        data=json.dumps(case.body).encode(),
        timeout=timeout,
    )
    return Response.from_requests(resp, verify=True)


def check_raw(response: Response, case: AnyCase) -> None:
    """The checks that need no schemathesis metadata: no 5xx (but the designed answer to a short
    caller deadline: surrogates in ignored fields leave a valid request), OpenAI-shaped errors."""
    if not designed_deadline_answer(response, case):
        assert response.status_code < 500, f"Server error {response.status_code}"
    check_documented_or_openai_error(response, case)


def fuzz_operation(run: Run, operation: Operation, strand: Strand) -> None:
    if operation.path in PUBLIC and not strand.valid_auth:
        return
    examples = BROKEN_AUTH_EXAMPLES if not strand.valid_auth else EXAMPLES
    if operation.path == "/v1/chat/completions" and strand.valid_auth:
        examples = CHAT_EXAMPLES
    if strand.surrogate:
        if not len(operation.body):
            return
        examples = SURROGATE_EXAMPLES

    # Valid credentials are fixed in the strategy, so a negative case negates something else
    # (a header the strategy generates may be dropped on the wire, whatever the test sets).
    headers = None
    if strand.valid_auth and operation.path not in PUBLIC:
        headers = {"Authorization": f"Bearer {run.identities.bearer_for(operation.path)}"}

    # Most chat cases name the served model (the rest keep the generated name: a 404 path);
    # of those, some are streamed (generated bodies rarely get that far otherwise). Other
    # operations draw nothing extra, so Hypothesis sees when their inputs are exhausted.
    chat = operation.path == "/v1/chat/completions"
    served_model = st.sampled_from([True, True, True, False]) if chat else st.just(False)
    streamed = st.sampled_from([None, True, False]) if chat else st.just(None)
    picks = st.integers(min_value=0, max_value=1000) if strand.surrogate else st.just(0)

    @given(
        case=operation.as_strategy(strand.mode, headers=headers),
        served=served_model,
        stream=streamed,
        pick=picks,
    )
    @seed(int(SEED or 0))
    @settings(
        max_examples=examples,
        derandomize=SEED is None,
        database=None,
        deadline=None,
        # Each example is one real request, checked here: nothing to shrink or replay.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: AnyCase, served: bool, stream: bool | None, pick: int) -> None:
        steer_chat(case, served, stream)
        if strand.surrogate and not add_surrogate(case, pick):
            return
        exercise(run, case, strand)

    # Unsatisfiable: nothing left to negate (e.g. no input besides the fixed credentials).
    with contextlib.suppress(Unsatisfiable):
        one()


# Every operation, several strands each, one real request per example: minutes on 2 cores (274 s
# of calls under a load of 18 while other suites ran; the default 300 s covers setup too).
@pytest.mark.timeout(900)
def test_schema_fuzz(edge_url: str, identities: Identities) -> None:
    schema = schemathesis.openapi.from_url(f"{edge_url}/openapi.json", timeout=10)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema does not load: {result.err()}"
        operations.append(result.ok())
    labels = {op.label for op in operations}
    assert labels >= EXPECTED_OPERATIONS, (
        f"operations missing from the schema: {EXPECTED_OPERATIONS - labels}"
    )

    run = Run(identities)
    for operation in operations:
        for strand in STRANDS:
            fuzz_operation(run, operation, strand)

    for label, counts in sorted(run.tally.items()):
        print(f"{label}: " + ", ".join(f"{status}x{n}" for status, n in sorted(counts.items())))
    # Every operation was reached, and with valid credentials answered something besides 401.
    for label in labels:
        assert run.statuses.get(label), f"{label}: no request was sent"
    unauthorised_only = sorted(
        op.label for op in operations if op.path not in PUBLIC and run.statuses[op.label] <= {401}
    )
    assert not unauthorised_only, f"only 401s (credentials not applied?): {unauthorised_only}"

    unique: dict[tuple[str, int | None, tuple[str, ...]], list[Finding]] = {}
    for finding in run.findings:
        unique.setdefault(finding.key(), []).append(finding)
    report = "\n\n".join(f"[{len(found)} case(s)] " + found[0].render() for found in unique.values())
    assert not unique, f"{len(unique)} distinct failure(s) across {len(run.findings)} case(s):\n\n{report}"


# -- failures the fuzzing found, kept as exact reproductions --------------------------------
def test_streamed_completion_events_match_the_documented_schema(
    edge_url: str, auth_headers: dict[str, str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{edge_url}/openapi.json", timeout=10)
    case = schema["/v1/chat/completions"]["POST"].Case(
        body={**CHAT, "stream": True}, headers=auth_headers, media_type="application/json"
    )
    response = case.call(timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"][0].startswith("text/event-stream")
    case.validate_response(response, checks=[content_type_conformance, response_schema_conformance])


# Fixed since they were found; kept as exact reproductions.
def test_streamed_completion_content_type_is_documented(edge_url: str, auth_headers: dict[str, str]) -> None:
    schema = httpx.get(f"{edge_url}/openapi.json", timeout=10).json()
    documented = schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"].get("content", {})
    with httpx.stream(
        "POST",
        f"{edge_url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=auth_headers,
        timeout=60,
    ) as resp:
        assert resp.status_code == 200
        received = resp.headers["content-type"].split(";")[0]
        resp.read()
    assert received == "text/event-stream"
    assert received in documented, f"documented for 200: {sorted(documented)}"


@pytest.mark.parametrize(
    "body",
    [
        '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 4}',
        '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}],'
        ' "max_tokens": 4}',
        '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"],'
        ' "max_tokens": 4}',
    ],
    ids=["content", "text-part", "stop"],
)
def test_lone_surrogate_in_a_prompt_is_a_client_error(
    edge_url: str, auth_headers: dict[str, str], body: str
) -> None:
    resp = httpx.post(
        f"{edge_url}/v1/chat/completions",
        content=(body % MAIN_MODEL).encode(),
        headers={**auth_headers, "Content-Type": "application/json"},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    assert set(resp.json()["error"]) == ERROR_FIELDS, resp.text
