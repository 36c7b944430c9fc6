"""A request-reply call rides out a moment with no replica subscribed, on a real nats-server: a
service's replicas reconnecting to another node after theirs was lost (a cluster node's SIGKILL)
or all restarting at once. "No responders" means nobody received the request, so the caller
sends it again until its own timeout; the same call times out as before when nobody comes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import BaseModel

from llmchat_common.launch.stack import LocalStack
from llmchat_common.rpc import RpcClient, RpcReply, RpcUnavailable
from tests.helpers import connect_nats


class Echo(BaseModel):
    said: str


@pytest.fixture
async def nc(stack: LocalStack) -> AsyncIterator[Client]:
    client = await connect_nats(stack.env())
    yield client
    await client.close()


async def test_a_call_waits_for_a_replica_that_subscribes_late(nc: Client) -> None:
    subject = f"test.rpc.{uuid.uuid4().hex}"
    calls: list[str] = []

    async def reply(msg: Msg) -> None:
        calls.append(msg.subject)
        await msg.respond(RpcReply.success(Echo(said="late")).model_dump_json().encode())

    async def subscribe_late() -> None:
        await asyncio.sleep(1.0)
        await nc.subscribe(subject, queue="replicas", cb=reply)

    client = RpcClient(nc, lambda op: subject, timeout_s=5, service="echo")
    late = asyncio.create_task(subscribe_late())
    started = time.monotonic()
    assert await client.call("echo", None, Echo) == Echo(said="late")
    await late
    assert 0.9 < time.monotonic() - started < 3
    assert calls == [subject]  # handled once


async def test_a_call_nobody_answers_fails_at_its_timeout(nc: Client) -> None:
    client = RpcClient(nc, lambda op: f"test.rpc.{uuid.uuid4().hex}", timeout_s=1, service="echo")
    started = time.monotonic()
    with pytest.raises(RpcUnavailable):
        await client.call("echo", None, Echo)
    assert 0.7 < time.monotonic() - started < 2
