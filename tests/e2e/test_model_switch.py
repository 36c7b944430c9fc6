"""Switching a worker's model at runtime, on the real platform: a worker of the suite's model
beside the session's, switched to the real SmolLM2 and back while long greedy streams run on
both; refusals before anything is unloaded; a load that fails rolls back; admins only; every
switch on the audit stream; the operator's own profiles (a folder of its own)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from llmchat_common import subjects
from llmchat_common.contracts import AuditEvent, Completed
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_worker, wait_for_worker
from llmchat_common.launch.stack import LocalStack
from llmchat_common.testing.accounts import Account
from tests.conftest import MAIN_MODEL
from tests.helpers import connect_nats, eventually, make_admin, read_request_events

POOL = MAIN_MODEL  # served by the session's worker-main and by this module's worker
OPERATOR = "tiny-operator"
REAL = "smollm2-135m-instruct"
SWITCHED = "worker-switch"
SHORT_DRAIN = {"LLMCHAT_WORKER_SWITCH_DRAIN_S": "2", "LLMCHAT_WORKER_HEARTBEAT_INTERVAL_S": "1"}
GREEDY = {"temperature": 0, "max_tokens": 1800, "extra_body": {"ignore_eos": True, "timeout": 600}}
MESSAGES = [{"role": "user", "content": "Tell me about the harbour."}]
MAX_STREAMS = 8


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """The operator's folder: the suite's tiny model under an alias of this module's own, and a
    profile whose folder has a config and a tokenizer but no weights (its load fails)."""
    folder = tmp_path_factory.mktemp("profiles")
    (folder / f"{OPERATOR}.yaml").write_text(
        f"alias: {OPERATOR}\nmodel: builtin:tiny-random\ndtype: float32\nmax_model_len: 2048\n"
        "gpu_memory_utilization: 0.3\nmax_num_seqs: 64\ncpu_kvcache_space_gib: 1\n"
        "description: the suite's tiny model, as an operator's profile\n"
    )
    hollow = tmp_path_factory.mktemp("hollow-model")
    for item in (models_dir / "tiny-random").iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")):
            shutil.copy(item, hollow / item.name)
    (folder / "hollow.yaml").write_text(
        f"alias: hollow\nmodel: {hollow}\ndtype: float32\nmax_model_len: 2048\n"
        "gpu_memory_utilization: 0.3\ncpu_kvcache_space_gib: 1\n"
    )
    (folder / "nowhere.yaml").write_text("alias: nowhere\nmodel: /nonexistent/llmchat-weights\n")
    (folder / "broken.yaml").write_text("alias: [not, a, profile\n")
    return folder


@pytest.fixture(scope="module")
def pool(
    stack: LocalStack, models_dir: Path, profiles: Path
) -> Iterator[dict[str, tuple[ManagedProcess, int]]]:
    env = {"LLMCHAT_WORKER_PROFILES_DIR": str(profiles), **SHORT_DRAIN}
    started = {}
    try:
        started[SWITCHED] = start_worker(
            stack, model=POOL, models_dir=models_dir, name=SWITCHED, extra_env=env, wait=False
        )
        wait_for_worker(*started[SWITCHED], timeout=600)
        yield started
    finally:
        for proc, _ in started.values():
            proc.stop()


@pytest.fixture(scope="module")
def admin(stack: LocalStack, edge_url: str) -> Account:
    return make_admin(stack, edge_url)


@pytest.fixture
async def http(edge_url: str, admin: Account) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {admin.access_token}"}
    # Idle connections are dropped before the edge's own keep-alive (5 s) closes them: a request
    # sent on a connection the server is closing at that moment fails with a ReadError.
    limits = httpx.Limits(keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=edge_url, headers=headers, timeout=60, limits=limits) as client:
        yield client


@pytest.fixture
async def listed(http: httpx.AsyncClient, pool: Any) -> None:
    """Both workers of the pool in the edge's view of the registry (it caches for a second)."""

    async def both() -> bool:
        return {SWITCHED, "worker-main"} <= set(await workers_by_id(http))

    await eventually(both, timeout=30, what="the pool's workers in the registry")


async def workers_by_id(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    listed = await http.get("/v1/admin/workers")
    assert listed.status_code == 200, listed.text
    return {w["worker_id"]: w for w in listed.json()["data"]}


async def model_view(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    listed = await http.get("/v1/models")
    assert listed.status_code == 200, listed.text
    return {m["id"]: m for m in listed.json()["data"]}


async def switch_done(
    http: httpx.AsyncClient, worker_id: str, switch_id: str, steps: set[str]
) -> dict[str, Any]:
    """Polls the worker's entry until the switch reaches one of `steps` and serves again."""

    async def reached() -> dict[str, Any] | None:
        worker = (await workers_by_id(http)).get(worker_id)
        switch = (worker or {}).get("switch") or {}
        if (
            worker
            and switch.get("switch_id") == switch_id
            and switch["step"] in steps
            and worker["state"] == "ready"
        ):
            return worker
        return None

    return await eventually(reached, timeout=600, what=f"{worker_id}'s switch to end ({steps})")


async def audit_events(stack: LocalStack, switch_id: str) -> list[AuditEvent]:
    nc = await connect_nats(stack.env())
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects.audit_wildcard(), ordered_consumer=True)
        found = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1)
                event = AuditEvent.model_validate_json(msg.data)
                if event.detail.get("switch_id") == switch_id:
                    found.append(event)
        except TimeoutError:
            pass
        return found
    finally:
        await nc.close()


async def test_catalog_lists_profiles_with_verdicts(http: httpx.AsyncClient, listed: None) -> None:
    catalog = await http.get("/v1/admin/profiles")
    assert catalog.status_code == 200, catalog.text
    profiles = {p["alias"]: p for p in catalog.json()["data"]}
    # Built-ins, the operator's own; the unparsable file is left out.
    assert {"tiny-random", REAL, "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", OPERATOR, "hollow"} <= set(
        profiles
    )
    assert len([p for p in profiles.values() if p["source"] == "builtin"]) >= 10
    assert profiles[OPERATOR]["source"] == "operator" and "broken" not in json.dumps(sorted(profiles))
    verdicts = {v["worker_id"]: v for v in profiles[REAL]["verdicts"]}
    assert {SWITCHED, "worker-main"} <= set(verdicts)
    assert verdicts[SWITCHED]["verdict"] == "fits", verdicts
    big = {v["worker_id"]: v for v in profiles["llama-3.1-8b-instruct"]["verdicts"]}[SWITCHED]
    assert big["verdict"] == "does_not_fit" and "GiB" in big["reason"], big
    assert profiles["llama-3.1-8b-instruct"]["parameters"] > 7_900_000_000


async def test_refusals_unload_nothing(
    http: httpx.AsyncClient, edge_url: str, auth_headers: dict[str, str], listed: None
) -> None:
    before = (await workers_by_id(http))[SWITCHED]
    # Not an admin: 403.
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=30) as user:
        denied = await user.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": REAL})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        assert (await user.get("/v1/admin/profiles")).status_code == 403
    cases = {
        "llama-3.1-8b-instruct": (400, "does_not_fit"),
        "no-such-profile": (404, "profile_not_found"),
        "nowhere": (400, "weights_not_found"),
        POOL: (409, "same_profile"),
    }
    for profile, (status, code) in cases.items():
        refused = await http.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": profile})
        assert refused.status_code == status, refused.text
        error = refused.json()["error"]
        assert error["code"] == code and error["param"] == "profile" and error["message"], error
    does_not_fit = await http.post(
        f"/v1/admin/workers/{SWITCHED}/model", json={"profile": "llama-3.1-8b-instruct"}
    )
    assert "GiB" in does_not_fit.json()["error"]["message"]
    missing = await http.post("/v1/admin/workers/no-such-worker/model", json={"profile": REAL})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "worker_not_found"
    bad = await http.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": ""})
    assert bad.status_code == 400
    after = (await workers_by_id(http))[SWITCHED]
    # Still the same engine, serving all along.
    assert (
        after["state"] == "ready" and after["model"] == POOL and after["started_at"] == before["started_at"]
    )


# Three engine loads (SmolLM2, its rollback, tiny-random) and long streams: 213 s on a quiet
# machine, more under load; the suite's 300 s default is too close.
@pytest.mark.timeout(900)
async def test_switch_to_the_real_model_and_back_while_streams_run(
    http: httpx.AsyncClient, stack: LocalStack, edge_url: str, api_key: str, listed: None
) -> None:
    client = AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=600)
    completions: Any = client.chat.completions
    reference = await completions.create(model=POOL, messages=MESSAGES, **GREEDY)
    expected = reference.choices[0].message.content
    assert expected

    async def stream() -> tuple[str, str]:
        async with AsyncOpenAI(base_url=f"{edge_url}/v1", api_key=api_key, max_retries=0, timeout=600) as own:
            own_completions: Any = own.chat.completions
            chunks = await own_completions.create(model=POOL, messages=MESSAGES, stream=True, **GREEDY)
            text, request_id = [], ""
            async for chunk in chunks:
                request_id = chunk.id
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
        return request_id, "".join(text)

    # Streams running on the switched worker when the switch begins (they are released and go
    # on at the other). Not both workers at once: in CI runs, and in a probe of this suite, the
    # test process's event loop stalled while one openai-SDK stream was read (ticks 2.8 s apart),
    # so the next stream started only as the one before ended (cause not found; the edge itself
    # answered other requests meanwhile). The streams start one
    # at a time until both run some: a worker that finds a backlog takes all it has room for in
    # one fetch, so six started at once could all land on one worker (seen in CI).
    streams: list[asyncio.Task[tuple[str, str]]] = []
    switched_running = _switched_running(http)

    async def switched_busy() -> bool:
        if await switched_running():
            return True
        if len(streams) < MAX_STREAMS:
            streams.append(asyncio.create_task(stream()))
            await asyncio.sleep(2)
        return False

    await eventually(switched_busy, timeout=120, what="a stream running on the switched worker")
    started = time.time()
    accepted = await http.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": REAL})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["object"] == "model_switch" and body["from"] == POOL and body["to"] == REAL
    switch_id = body["id"]
    # A second switch meanwhile is refused.
    again = await http.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": "tiny-random"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "switch_in_progress"

    # /v1/models follows: the pool keeps its other worker while A drains and loads.
    seen_steps: set[str] = set()

    async def loaded() -> dict[str, Any] | None:
        # Absent from one listing (a heartbeat late while the model converts, holding the GIL
        # on two shared cores: seen in CI) is "not yet".
        worker = (await workers_by_id(http)).get(SWITCHED)
        if worker is None:
            return None
        seen_steps.add(worker["state"])
        models = await model_view(http)
        after = (await workers_by_id(http)).get(SWITCHED)
        # Two requests, not one snapshot: the models view counts only if the worker was between
        # the same two states on both sides of it (CI once saw it become ready in between).
        if worker["state"] != "ready" and after is not None and after["state"] == worker["state"]:
            assert models[POOL]["workers"] == 1, models[POOL]
            assert models.get(REAL, {"workers": 0})["workers"] == 0
        return worker if worker["state"] == "ready" and worker["model"] == REAL else None

    worker = await eventually(loaded, timeout=600, what="worker A to serve the real model")
    assert worker["switch"]["step"] == "ready" and worker["switch"]["switch_id"] == switch_id
    assert worker["switch"]["from"] == POOL and worker["switch"]["requested_by"]
    assert seen_steps & {"draining", "unloading", "checking", "loading"}, seen_steps
    models = await model_view(http)
    assert models[REAL]["workers"] == 1 and models[REAL]["status"] == "serving"
    assert models[POOL]["workers"] == 1

    # Every stream ended once, with the uninterrupted greedy text (those on A were released
    # and continued on B).
    for request_id, text in await asyncio.gather(*streams):
        assert text == expected, request_id
        events = await read_request_events(stack.env(), request_id)
        terminals = [e for e in events if e.type in ("completed", "failed", "cancelled")]  # type: ignore[attr-defined]
        assert len(terminals) == 1 and isinstance(terminals[0], Completed) and terminals[0].text == expected
    # The real model answers.
    answer = await completions.create(
        model=REAL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    audit = await audit_events(stack, switch_id)
    assert [e.outcome for e in audit] == ["requested", "completed"], audit
    assert audit[0].actor and audit[0].detail["to"] == REAL and audit[0].target == SWITCHED

    # A load that fails (a folder without weights) rolls back to the real model.
    failing = await http.post(f"/v1/admin/workers/{SWITCHED}/model", json={"profile": "hollow"})
    assert failing.status_code == 202, failing.text
    failing_id = failing.json()["id"]
    worker = await switch_done(http, SWITCHED, failing_id, {"rolled_back"})
    assert worker["model"] == REAL and worker["switch"]["error"], worker["switch"]
    assert REAL in worker["switch"]["message"], worker["switch"]
    again_real = await completions.create(
        model=REAL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert again_real.choices[0].message.content
    audit = await audit_events(stack, failing_id)
    assert [e.outcome for e in audit] == ["requested", "rolled_back"], audit
    assert audit[-1].detail["error"]

    # ... and back (the whole model's workers: one).
    back = await http.post(f"/v1/admin/models/{REAL}/switch", json={"profile": POOL})
    assert back.status_code == 202, back.text
    [entry] = back.json()["data"]
    await switch_done(http, SWITCHED, entry["id"], {"ready"})
    models = await model_view(http)
    assert models[POOL]["workers"] == 2
    # The real model lost its last worker: still listed, with no worker; its requests queue
    # until their deadline, then get the documented 503.
    assert models[REAL]["workers"] == 0 and models[REAL]["status"] == "no_worker"
    queued = await http.post(
        "/v1/chat/completions",
        json={"model": REAL, "messages": MESSAGES, "max_tokens": 5, "timeout": 3},
    )
    assert queued.status_code == 503 and queued.json()["error"]["code"] == "no_worker", queued.text
    assert time.time() - started < 900


def _switched_running(http: httpx.AsyncClient) -> Any:
    async def check() -> bool:
        # A worker may miss a heartbeat on a loaded machine: absent from one listing is
        # "not yet", not a failure.
        workers = await workers_by_id(http)
        return int(workers.get(SWITCHED, {}).get("running", 0)) > 0

    return check
