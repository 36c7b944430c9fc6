"""NATS credentials in the settings, and invariants of the permission matrix (the real server's
enforcement is tests/e2e/test_nats_permissions.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmchat_common import subjects
from llmchat_common.launch import nats_auth
from llmchat_common.settings import NatsSettings

SECRET = "plaintext-canary-7c1d"


def test_password_comes_from_the_environment_and_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCHAT_NATS_USER", "worker")
    monkeypatch.setenv("LLMCHAT_NATS_PASSWORD", SECRET)
    settings = NatsSettings()
    assert settings.user == "worker"
    assert settings.password is not None and settings.password.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_a_password_without_a_user_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMCHAT_NATS_USER", raising=False)
    monkeypatch.setenv("LLMCHAT_NATS_PASSWORD", SECRET)
    with pytest.raises(ValidationError) as refused:
        NatsSettings()
    assert SECRET not in str(refused.value)


def test_no_credentials_is_allowed_for_an_open_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMCHAT_NATS_USER", raising=False)
    monkeypatch.delenv("LLMCHAT_NATS_PASSWORD", raising=False)
    settings = NatsSettings()
    assert settings.user is None and settings.password is None


def _overlap(a: str, b: str) -> bool:
    """Whether some subject matches both patterns (NATS wildcards: `*` one token, `>` the rest)."""
    x, y = a.split("."), b.split(".")
    for i, (p, q) in enumerate(zip(x, y, strict=False)):
        if p == ">" or q == ">":
            return True
        if p != q and "*" not in (p, q):
            return False
        if i == min(len(x), len(y)) - 1:
            return len(x) == len(y)
    return False


STREAM_FILTERS = {
    subjects.REQUESTS_STREAM: subjects.requests_wildcard(),
    subjects.EVENTS_STREAM: subjects.events_wildcard(),
    **{
        nats_auth.kv_stream(b): nats_auth.kv_subjects(b)
        for b in (subjects.REGISTRY_BUCKET, subjects.CANCELS_BUCKET, subjects.REVOCATIONS_BUCKET)
    },
}


@pytest.mark.parametrize("user", nats_auth.SERVICES)
def test_no_service_both_writes_a_stream_and_creates_consumers_on_it(user: str) -> None:
    """Push consumers deliver to any subject their creator names (nats-server#8274): a user
    that could also write the stream could deliver its own content where it may not publish."""
    perms = nats_auth.permissions()[user]
    grants = [g for g in perms.publish_allow if not g.startswith("$JS.")]
    writes = {s for s, f in STREAM_FILTERS.items() if any(_overlap(g, f) for g in grants)}
    consumes = {s for s in STREAM_FILTERS if f"$JS.API.CONSUMER.CREATE.{s}" in perms.publish_allow}
    assert not writes & consumes


@pytest.mark.parametrize("user", nats_auth.SERVICES)
def test_stream_publish_grants_match_the_stream_filters(user: str) -> None:
    """A grant wider than a stream's filter would allow subjects no stream stores yet."""
    perms = nats_auth.permissions()[user]
    for grant in perms.publish_allow:
        for stream, filter_ in STREAM_FILTERS.items():
            if _overlap(grant, filter_) and not stream.startswith("KV_"):
                assert grant == filter_, f"{user}: {grant} is wider than {stream}'s {filter_}"


def test_overlap_helper() -> None:
    assert _overlap("chat.v1.events.*.*", "chat.v1.events.>")
    assert not _overlap("chat.v1.events.*.*", "chat.v1.events.*")
    assert not _overlap("chat.v1.requests.*", "chat.v1.events.*.*")
    assert _overlap("$KV.llmchat_models.>", "$KV.llmchat_models.a.b")
    assert not _overlap("auth.v1.rpc.>", "chat.v1.cancel.*")


def test_only_auth_answers_and_only_the_edge_calls_auth() -> None:
    matrix = nats_auth.permissions()
    callers = [u for u in nats_auth.SERVICES if subjects.auth_wildcard() in matrix[u].publish_allow]
    listeners = [
        u for u in nats_auth.SERVICES if any(a.startswith("auth.") for a in matrix[u].subscribe_allow)
    ]
    assert callers == ["chat"]
    assert listeners == ["auth"]
    assert matrix["auth"].subscribe_allow[0] == f"{subjects.auth_wildcard()} {subjects.AUTH_QUEUE}"
