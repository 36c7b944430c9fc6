"""Accounts made through a running edge (tests, benchmarks)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Account:
    email: str
    password: str
    access_token: str
    refresh_token: str
    api_key: str
    user_id: str


def create_account(edge_url: str, *, email: str | None = None, password: str | None = None) -> Account:
    """Registers through the edge, logs in and creates an API key (tests, benchmarks)."""
    email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
    password = password or f"pw-{uuid.uuid4().hex}"
    with httpx.Client(base_url=edge_url, timeout=30) as http:
        user = http.post("/v1/auth/register", json={"email": email, "password": password})
        if user.status_code != 201:
            raise RuntimeError(f"registration failed: {user.status_code} {user.text}")
        tokens = http.post("/v1/auth/login", json={"email": email, "password": password})
        if tokens.status_code != 200:
            raise RuntimeError(f"login failed: {tokens.status_code} {tokens.text}")
        pair = tokens.json()
        key = http.post(
            "/v1/auth/api-keys",
            json={"name": "generated"},
            headers={"Authorization": f"Bearer {pair['access_token']}"},
        )
        if key.status_code != 201:
            raise RuntimeError(f"API key creation failed: {key.status_code} {key.text}")
    return Account(
        email, password, pair["access_token"], pair["refresh_token"], key.json()["key"], user.json()["id"]
    )
