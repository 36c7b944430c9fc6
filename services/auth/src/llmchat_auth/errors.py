"""Every failure a caller can see, one type each; the shared request-reply layer
(llmchat_common.rpc) turns them into error replies with stable codes (the edge maps those to
HTTP)."""

from __future__ import annotations

from llmchat_common import lifecycle
from llmchat_common.rpc import ServiceFailure


class AuthFailure(ServiceFailure):
    default_message = "the authentication service is unavailable"


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


class CommandRefused(lifecycle.CommandRefused):
    """An operator command (CLI) that must not proceed; the message says why."""
