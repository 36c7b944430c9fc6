"""The request-reply envelope, through FastStream's in-memory broker: every request gets an
`RpcReply`, whatever it holds and whatever goes wrong behind it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from faststream.nats import NatsBroker, TestNatsBroker

from llmchat_auth.handlers import register_handlers
from llmchat_auth.main import build_service
from llmchat_auth.repository import Database
from llmchat_auth.settings import AuthSettings
from llmchat_common import subjects
from llmchat_common.db import create_engine
from llmchat_common.rpc import RpcReply
from llmchat_common.settings import PostgresSettings


class NoKv:
    async def put(self, key: str, value: bytes) -> None:
        raise AssertionError("not reached")

    async def delete(self, key: str) -> None:
        raise AssertionError("not reached")


@pytest.fixture
async def broker() -> AsyncIterator[NatsBroker]:
    # Postgres on a port nothing listens on: anything that reaches the database fails.
    settings = AuthSettings(postgres=PostgresSettings(dsn="postgresql://nobody@127.0.0.1:9/none"))
    db = Database(create_engine(settings.postgres))
    broker = NatsBroker()
    register_handlers(broker, build_service(settings, db, NoKv()), max_workers=4)
    async with TestNatsBroker(broker) as test_broker:
        yield test_broker
    await db.dispose()


async def request(broker: NatsBroker, op: str, payload: bytes) -> RpcReply:
    response = await broker.request(payload, subjects.auth_subject(op), timeout=10)
    return RpcReply.model_validate_json(response.body)


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b'"text"', b'{"email": 5, "password": "p"}'])
async def test_malformed_requests_are_invalid_request(broker: NatsBroker, payload: bytes) -> None:
    reply = await request(broker, "register", payload)
    assert not reply.ok and reply.error is not None and reply.error.code == "invalid_request"


async def test_validation_messages_never_echo_the_input(broker: NatsBroker) -> None:
    secret = "Sup3r-secret-" + "x" * 1100
    body = json.dumps({"email": "a@example.com", "password": secret}).encode()
    reply = await request(broker, "login", body)
    assert reply.error is not None and reply.error.code == "invalid_request"
    assert "password" in reply.error.message and "Sup3r" not in reply.error.message


async def test_refused_before_the_database_is_answered_with_its_code(broker: NatsBroker) -> None:
    body = json.dumps({"email": "a@example.com", "password": "short"}).encode()
    reply = await request(broker, "register", body)
    assert reply.error is not None and reply.error.code == "weak_password"


async def test_an_unreachable_database_is_unavailable_not_silence(broker: NatsBroker) -> None:
    for op, body in [("ping", {}), ("me", {"user_id": "7d0c8a4e-3b7e-4a3c-9a51-1f6f0f0a9b11"})]:
        reply = await request(broker, op, json.dumps(body).encode())
        assert reply.error is not None and reply.error.code == "unavailable", op
