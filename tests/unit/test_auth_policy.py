"""Email normalisation, the password policy and the Argon2id floor."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmchat_auth.passwords import Passwords
from llmchat_auth.policy import normalise_email, password_problem
from llmchat_auth.settings import AuthSettings


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob.smith+tag@mail.example.org \n", "bob.smith+tag@mail.example.org"),
        ("o'neil@sub-domain.example.co.uk", "o'neil@sub-domain.example.co.uk"),
        ("josé@exämple.de", "josé@exämple.de"),
    ],
)
def test_plausible_emails_are_normalised(raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "no-at-sign",
        "@example.com",
        "user@",
        "user@localhost",
        "user@@example.com",
        "us er@example.com",
        "user@exa mple.com",
        ".user@example.com",
        "user.@example.com",
        "us..er@example.com",
        "user@-example.com",
        "user@example..com",
        "user@example.com\x00",
        "user@10.0.0.1",
        "a" * 65 + "@example.com",
        "user@" + "a" * 250 + ".com",
        'us"er@example.com',
    ],
)
def test_implausible_emails_are_refused(raw: str) -> None:
    assert normalise_email(raw) is None


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least 12"),
        ("a" * 20, "different characters"),
        ("abababababababab", "different characters"),
        (" " * 20, "blank"),
        ("x" * 1025, "at most 1024"),
        ("alice@example.com", "email"),
        ("my alice password!", "email"),
    ],
)
def test_weak_passwords_are_refused_with_a_reason(password: str, reason: str) -> None:
    problem = password_problem(password, email="alice@example.com", min_length=12)
    assert problem is not None and reason in problem


def test_long_passphrases_are_accepted() -> None:
    assert password_problem("correct horse battery staple", email="bob@example.com", min_length=12) is None
    assert password_problem("Ünïcødé-pässwörd-✓", email=None, min_length=12) is None


@pytest.mark.parametrize(
    "env",
    [
        {"LLMCHAT_AUTH_ARGON2_MEMORY_KIB": "16384"},
        {"LLMCHAT_AUTH_ARGON2_TIME_COST": "1"},
        {"LLMCHAT_AUTH_ARGON2_PARALLELISM": "4"},
    ],
)
def test_settings_weaker_than_owasp_are_refused(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        AuthSettings()


def test_settings_defaults() -> None:
    settings = AuthSettings()
    assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (
        19456,
        2,
        1,
    )
    assert settings.open_registration and settings.min_password_length == 12
    assert settings.refresh_ttl_s == 30 * 24 * 3600


async def test_argon2id_hash_verify_and_rehash() -> None:
    passwords = Passwords(AuthSettings())
    digest = await passwords.hash("correct horse battery staple")
    assert digest.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.verify(digest, "correct horse battery staple")
    assert not await passwords.verify(digest, "correct horse battery stapler")
    assert not await passwords.verify("not a hash", "anything")
    assert not passwords.needs_rehash(digest)

    stronger = Passwords(AuthSettings(argon2_time_cost=3))
    assert stronger.needs_rehash(digest)
    assert await stronger.verify(digest, "correct horse battery staple")  # old hashes still verify
    await passwords.dummy_verify("whatever")
