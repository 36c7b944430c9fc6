"""The jobs API and resumable streams against the real platform: a job outlives the connection
that made it and the edge that took it; a stream resumes with `Last-Event-ID` at another edge."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from llmchat_chat.api.jobs import JobRequest, body_fingerprint
from llmchat_chat.jobs import _idempotency_key, new_job_id
from llmchat_common.contracts import ChatMessage, ChatRequested, Completed, Delta, GenerationParams, Started
from llmchat_common.launch.process import ManagedProcess
from llmchat_common.launch.services import start_edge
from llmchat_common.launch.stack import LocalStack
from tests.conftest import IDLE_MODEL, MAIN_MODEL, ROOMY_LIMITS, Worker
from tests.helpers import (
    Account,
    eventually,
    read_request_events,
    register_account,
    wait_status,
    worker_status,
)

LONG = {"max_tokens": 1500, "temperature": 0, "ignore_eos": True}
MESSAGES = [{"role": "user", "content": "Describe the harbour at dawn."}]


def job_body(**extra: Any) -> dict[str, Any]:
    return {"model": MAIN_MODEL, "messages": MESSAGES, **extra}


@pytest.fixture
async def http(edge_url: str, auth_headers: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_url, headers=auth_headers, timeout=60) as client:
        yield client


async def test_submit_disconnect_fetch_later(http: httpx.AsyncClient, stack: LocalStack) -> None:
    created = await http.post("/v1/jobs", json=job_body(max_tokens=40, temperature=0))
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] in ("queued", "running") and job["object"] == "job"
    assert created.headers["location"] == f"/v1/jobs/{job['id']}"
    # Nobody watches: the client is gone; the job runs anyway.
    done = await wait_status(http, job["id"], "completed")
    events = await read_request_events(stack.env(), job["id"])
    terminal = events[-1]
    assert isinstance(terminal, Completed)
    assert done["result"]["object"] == "chat.completion"
    assert done["result"]["choices"][0]["message"]["content"] == terminal.text
    assert done["usage"]["completion_tokens"] == terminal.usage.completion_tokens == 40
    assert done["attempts"] == 1 and done["finished_at"] >= done["started_at"] >= done["created_at"]

    async def listed() -> dict[str, Any] | None:
        page = (await http.get("/v1/jobs", params={"status": "completed", "limit": 100})).json()
        return next((j for j in page["data"] if j["id"] == job["id"]), None)

    entry = await eventually(listed, timeout=30, what="the job in the list")
    assert entry["usage"]["completion_tokens"] == 40
    # The whole event stream of a finished job, then the end.
    async with aconnect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
        seen = [sse async for sse in source.aiter_sse()]
    assert seen[0].event == "started" and seen[-1].event == "completed"
    text = "".join(Delta.model_validate_json(s.data).text for s in seen if s.event == "delta")
    assert text == terminal.text
    ids = [int(s.id) for s in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_idempotency_key_names_one_job(http: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    body = job_body(max_tokens=8)
    first = await http.post("/v1/jobs", json=body, headers=key)
    again = await http.post("/v1/jobs", json=body, headers=key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await http.post("/v1/jobs", json=job_body(max_tokens=9), headers=key)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    # Without a key every submission is its own job.
    assert (await http.post("/v1/jobs", json=body)).json()["id"] != first.json()["id"]


async def test_cancel_running_job_frees_the_engine(http: httpx.AsyncClient, worker: Worker) -> None:
    # The longest answer the model's context allows: the tiny model writes it in seconds, and
    # the cancel must land before it ends, so each look below reads a few events, not all.
    # It writes 1,950 tokens in ~3 s: a try whose job ended before the cancel could land (a slow
    # look, under load) is void.
    for _ in range(3):
        job = (await http.post("/v1/jobs", json=job_body(**{**LONG, "max_tokens": 1950}, timeout=120))).json()
        if (await wait_status(http, job["id"], "running", "completed"))["status"] == "completed":
            continue

        async def some_text(job_id: str = job["id"]) -> bool:
            events = (await http.get(f"/v1/requests/{job_id}/events", params={"limit": 3})).json()["data"]
            return any(e["type"] == "delta" for e in events)

        await eventually(some_text, timeout=30, what="the job to generate")
        cancelled = await http.delete(f"/v1/jobs/{job['id']}")
        if cancelled.status_code == 409:
            continue  # it ended meanwhile
        assert cancelled.status_code == 202 and cancelled.json()["cancel_requested"] is True
        break
    else:
        pytest.fail("every try's job ended before its cancel")
    started = time.monotonic()

    async def engine_idle() -> bool:
        return (await worker_status(worker.url))["running"] == 0

    await eventually(engine_idle, timeout=10, what="the engine slot to be freed")
    assert time.monotonic() - started < 10
    done = await wait_status(http, job["id"], "cancelled", timeout=30)
    assert 0 < done["usage"]["completion_tokens"] < 1950  # partial usage kept
    assert len(done["partial_text"]) > 0
    again = await http.delete(f"/v1/jobs/{job['id']}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"

    async def usage_stored() -> dict[str, Any] | None:
        page = (await http.get("/v1/jobs", params={"status": "cancelled", "limit": 100})).json()
        return next((j for j in page["data"] if j["id"] == job["id"]), None)

    stored = await eventually(usage_stored, timeout=30, what="the cancelled job in the projection")
    assert stored["usage"]["completion_tokens"] == done["usage"]["completion_tokens"]


async def test_cancel_queued_job(http: httpx.AsyncClient) -> None:
    """No worker serves IDLE_MODEL: the job stays queued, and once cancelled it never runs (the
    worker-side skip of a cancelled queued request is in test_failover)."""
    job = (await http.post("/v1/jobs", json={**job_body(max_tokens=5), "model": IDLE_MODEL})).json()
    assert (await http.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"
    assert (await http.delete(f"/v1/jobs/{job['id']}")).status_code == 202
    assert (await http.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"


async def test_deadline_stops_the_answer_and_keeps_partial_usage(
    http: httpx.AsyncClient, worker: Worker
) -> None:
    resp = await http.post("/v1/chat/completions", json=job_body(**LONG, timeout=1.0))
    assert resp.status_code == 504, resp.text
    assert resp.json()["error"]["code"] == "deadline_exceeded"
    job = await wait_status(http, resp.headers["x-request-id"], "failed", timeout=30)
    assert job["error"]["code"] == "deadline_exceeded"
    assert 0 < job["usage"]["completion_tokens"] < LONG["max_tokens"]

    async def engine_idle() -> bool:
        return (await worker_status(worker.url))["running"] == 0

    await eventually(engine_idle, timeout=10, what="the engine slot to be freed")


async def test_bad_job_input(http: httpx.AsyncClient, edge_url: str) -> None:
    cases = [
        (await http.get("/v1/jobs/job-doesnotexist"), 404),
        (await http.get("/v1/jobs/not.a.token"), 404),
        (await http.delete("/v1/jobs/job-doesnotexist"), 404),
        (await http.get("/v1/jobs", params={"status": "sleeping"}), 400),
        (await http.get("/v1/jobs", params={"limit": 0}), 400),
        (await http.post("/v1/jobs", json={"model": MAIN_MODEL}), 400),
        # Webhooks are not enabled on the shared edge.
        (await http.post("/v1/jobs", json=job_body(webhook_url="https://example.com/hook")), 400),
        (await http.get("/v1/webhooks/secret"), 400),
    ]
    for resp, status in cases:
        assert resp.status_code == status, resp.text
        assert set(resp.json()["error"]) >= {"message", "type", "code"}
    job = (await http.post("/v1/jobs", json=job_body(max_tokens=4))).json()
    bad_id = await http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad_id.status_code == 400
    async with httpx.AsyncClient(base_url=edge_url) as anonymous:
        assert (await anonymous.get(f"/v1/jobs/{job['id']}")).status_code == 401


async def test_other_users_jobs_are_not_found(http: httpx.AsyncClient, edge_url: str) -> None:
    job = (await http.post("/v1/jobs", json=job_body(max_tokens=4))).json()
    stranger = register_account(edge_url)
    async with httpx.AsyncClient(
        base_url=edge_url, headers={"Authorization": f"Bearer {stranger.api_key}"}, timeout=30
    ) as other:
        for resp in (
            await other.get(f"/v1/jobs/{job['id']}"),
            await other.get(f"/v1/jobs/{job['id']}/events"),
            await other.delete(f"/v1/jobs/{job['id']}"),
        ):
            assert resp.status_code == 404
        listed = (await other.get("/v1/jobs")).json()["data"]
        assert all(j["id"] != job["id"] for j in listed)


@pytest.fixture
def two_edges(stack: LocalStack, edge_url: str) -> Iterator[tuple[ManagedProcess, str, ManagedProcess, str]]:
    first, first_port = start_edge(stack, models=[MAIN_MODEL], extra_env=ROOMY_LIMITS, name="chat-a")
    second, second_port = start_edge(stack, models=[MAIN_MODEL], extra_env=ROOMY_LIMITS, name="chat-b")
    try:
        yield first, f"http://127.0.0.1:{first_port}", second, f"http://127.0.0.1:{second_port}"
    finally:
        first.stop()
        second.stop()


async def test_stream_resumes_at_another_edge_after_the_first_dies(
    two_edges: tuple[ManagedProcess, str, ManagedProcess, str],
    auth_headers: dict[str, str],
    stack: LocalStack,
) -> None:
    first, first_url, _, second_url = two_edges
    got: list[str] = []
    last_id = ""
    request_id = ""
    async with httpx.AsyncClient(base_url=first_url, headers=auth_headers, timeout=60) as client:
        body = {**job_body(**LONG), "stream": True}
        async with aconnect_sse(client, "POST", "/v1/chat/completions", json=body) as source:
            request_id = source.response.headers["x-request-id"]
            sse: ServerSentEvent
            async for sse in source.aiter_sse():
                chunk = sse.json()
                content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if content:
                    got.append(content)
                    last_id = sse.id
                if len(got) >= 10:
                    break  # half-way (or so): the client's connection drops ...
            first.kill()  # ... and the edge that served it dies
    assert last_id and len(got) == 10
    # The answer goes on without its first edge; the client resumes at another one.
    resume = {"Last-Event-ID": last_id}
    async with (
        httpx.AsyncClient(base_url=second_url, headers=auth_headers, timeout=120) as client,
        aconnect_sse(client, "GET", f"/v1/jobs/{request_id}/events", headers=resume) as source,
    ):
        rest = [sse async for sse in source.aiter_sse()]
    assert rest and rest[0].event == "delta" and int(rest[0].id) > int(last_id)
    assert rest[-1].event == "completed"
    for sse in rest:
        if sse.event == "delta":
            got.append(Delta.model_validate_json(sse.data).text)
    stored = await read_request_events(stack.env(), request_id)
    terminal = stored[-1]
    assert isinstance(terminal, Completed)
    assert "".join(got) == terminal.text  # no gap, no repeat
    assert terminal.usage.completion_tokens == LONG["max_tokens"]
    assert {e.attempt for e in stored if isinstance(e, Started)} == {1}


async def test_a_resumed_stream_after_its_end_is_empty(http: httpx.AsyncClient) -> None:
    job = (await http.post("/v1/jobs", json=job_body(max_tokens=4))).json()
    await wait_status(http, job["id"], "completed")
    async with aconnect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
        last = [sse async for sse in source.aiter_sse()][-1]
    started = time.monotonic()
    async with aconnect_sse(
        http, "GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": last.id}
    ) as source:
        assert [sse async for sse in source.aiter_sse()] == []
    assert time.monotonic() - started < 5


async def test_a_key_whose_first_submission_died_before_queueing_is_completed_by_the_retry(
    http: httpx.AsyncClient, stack: LocalStack, account: Account
) -> None:
    """Injected: the key's claim as an edge writes it, for a request that edge never queued
    (it died in between). The retry with the same key and body queues that very request."""
    key = f"lost-{uuid.uuid4().hex}"
    body = job_body(max_tokens=6, temperature=0)
    now = time.time()
    lost = ChatRequested(
        request_id=new_job_id(),
        model=MAIN_MODEL,
        messages=[ChatMessage(role="user", content=MESSAGES[0]["content"])],
        params=GenerationParams(max_tokens=6, temperature=0),
        user_id=account.user_id,
        source="job",
        disconnect="detach",
        created_at=now,
        deadline=now + 600,
    )
    redis = Redis.from_url(stack.env()["LLMCHAT_REDIS_URL"])
    try:
        claim = {"body": body_fingerprint(JobRequest.model_validate(body)), "request": lost.model_dump_json()}
        await redis.set(_idempotency_key(account.user_id, key), json.dumps(claim), ex=600)
    finally:
        await redis.aclose()
    retried = await http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == lost.request_id
    done = await wait_status(http, lost.request_id, "completed")
    assert done["usage"]["completion_tokens"] == 6
