"""Every failure a caller can see, one type each; handlers.py turns them into `AuthReply`
failures with the contract's stable codes (the edge maps those to HTTP)."""

from __future__ import annotations

from typing import ClassVar

from llmchat_common.auth_contracts import AuthErrorCode


class AuthFailure(Exception):
    code: ClassVar[AuthErrorCode] = "unavailable"
    default_message: ClassVar[str] = "the authentication service is unavailable"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidRequest(AuthFailure):
    code = "invalid_request"
    default_message = "invalid request"


class WeakPassword(AuthFailure):
    code = "weak_password"
    default_message = "the password is too weak"


class InvalidCredentials(AuthFailure):
    """Wrong password and unknown email alike: the message must not tell them apart."""

    code = "invalid_credentials"
    default_message = "invalid email or password"


class InvalidToken(AuthFailure):
    code = "invalid_token"
    default_message = "the token is invalid, expired or revoked"


class AccountDisabled(AuthFailure):
    code = "account_disabled"
    default_message = "this account is disabled"


class RegistrationClosed(AuthFailure):
    code = "registration_closed"
    default_message = "registration is closed on this deployment"


class NotFound(AuthFailure):
    code = "not_found"
    default_message = "not found"


class EmailTaken(AuthFailure):
    code = "email_taken"
    default_message = "an account with this email already exists"


class Unavailable(AuthFailure):
    code = "unavailable"


class CommandRefused(Exception):
    """An operator command (CLI) that must not proceed; the message says why."""
