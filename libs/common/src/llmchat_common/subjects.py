"""Every NATS subject, stream, consumer and KV bucket name, defined once.

Request ids and model aliases become subject tokens, so they must not contain `.`, `*`, `>` or
whitespace; `check_token` enforces that where untrusted input reaches a subject.
"""

from __future__ import annotations

import re

REQUESTS_STREAM = "CHAT_REQUESTS"
EVENTS_STREAM = "CHAT_EVENTS"

REQUESTS_PREFIX = "chat.v1.requests"
EVENTS_PREFIX = "chat.v1.events"
CANCEL_PREFIX = "chat.v1.cancel"

REGISTRY_BUCKET = "llmchat_models"
CANCELS_BUCKET = "llmchat_cancels"
# Models served lately (`contracts.ServedModel`), kept for days after their last worker left.
SERVED_BUCKET = "llmchat_served"
# Uploaded files (`/v1/files`) and the prepared lines of batches: a JetStream object store.
FILES_BUCKET = "llmchat_files"

# Operators' actions (model switches, ...): `audit.v1.<action>`, kept like the event log.
AUDIT_STREAM = "LLMCHAT_AUDIT"
AUDIT_PREFIX = "audit.v1"
# Notices for webhook receivers that are not a request's events (a batch that ended):
# `notice.v1.batch.<batch_id>`, written by the history service, read by the edges' dispatcher.
NOTICES_STREAM = "LLMCHAT_NOTICES"
NOTICES_PREFIX = "notice.v1"
# Request-reply to one worker: `worker.v1.control.<worker_id>.<op>` (`switch`, `catalog`).
WORKER_CONTROL_PREFIX = "worker.v1.control"

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


def check_token(value: str) -> str:
    if not is_token(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def is_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def model_token(alias: str) -> str:
    """Aliases may hold `/` or `.` (Hugging Face ids); subjects and keys get a safe token."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", alias)[:128]


def request_subject(model: str) -> str:
    return f"{REQUESTS_PREFIX}.{model_token(model)}"


def requests_wildcard() -> str:
    return f"{REQUESTS_PREFIX}.*"


def event_subject(request_id: str, event_type: str) -> str:
    return f"{EVENTS_PREFIX}.{request_id}.{event_type}"


def request_events_filter(request_id: str) -> str:
    return f"{EVENTS_PREFIX}.{check_token(request_id)}.*"


def events_wildcard() -> str:
    return f"{EVENTS_PREFIX}.*.*"


def cancel_subject(request_id: str) -> str:
    return f"{CANCEL_PREFIX}.{check_token(request_id)}"


def cancel_wildcard() -> str:
    return f"{CANCEL_PREFIX}.*"


def worker_consumer(model: str) -> str:
    """The one durable pull consumer shared by all workers of a model."""
    return f"worker-{model_token(model)}"


# The edges' shared durable consumer of terminal events that delivers job webhooks.
WEBHOOKS_CONSUMER = "webhooks"


def max_deliveries_advisory(model: str) -> str:
    """JetStream's advisory when a worker consumer gives up on a request."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{REQUESTS_STREAM}.{worker_consumer(model)}"


def max_deliveries_wildcard() -> str:
    """Every worker consumer's max-deliveries advisory (a worker's model changes by switch)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{REQUESTS_STREAM}.*"


def registry_key(model: str, worker_id: str) -> str:
    return f"{model_token(model)}.{check_token(worker_id)}"


def msg_id_for_event(request_id: str, attempt: int, seq: int) -> str:
    """JetStream de-duplication id: the attempt is part of it so a redelivered generation is
    never swallowed by the duplicate window."""
    return f"{request_id}:{attempt}:{seq}"


# -- auth (request-reply; only the edge may publish here) -------------------------------------
AUTH_RPC_PREFIX = "auth.v1.rpc"
# The auth service's queue group: replicas share the requests.
AUTH_QUEUE = "auth"
REVOCATIONS_BUCKET = "llmchat_revocations"

AUTH_OPS = (
    "ping",
    "register",
    "login",
    "refresh",
    "logout",
    "me",
    "change_password",
    "create_api_key",
    "list_api_keys",
    "revoke_api_key",
    "verify_api_key",
    "list_users",
    "set_user_disabled",
    "erase_user",
    "jwks",
)


def auth_subject(op: str) -> str:
    if op not in AUTH_OPS:
        raise ValueError(f"unknown auth operation {op!r}")
    return f"{AUTH_RPC_PREFIX}.{op}"


def auth_wildcard() -> str:
    return f"{AUTH_RPC_PREFIX}.>"


# -- history and usage (request-reply; only the edge may publish here) -------------------------
HISTORY_RPC_PREFIX = "history.v1.rpc"
HISTORY_QUEUE = "history"
HISTORY_OPS = (
    "ping",
    "list",
    "get",
    "check",
    "rename",
    "delete",
    "export",
    "erase_user",
    "forget_request",
    "response_get",
    "batch_create",
    "batch_get",
    "batch_list",
    "batch_cancel",
    "batch_lines",
)

USAGE_RPC_PREFIX = "usage.v1.rpc"
USAGE_QUEUE = "metrics"
USAGE_OPS = (
    "ping",
    "usage",
    "admin_usage",
    "job_get",
    "job_list",
    "user_requests",
)


def history_subject(op: str) -> str:
    if op not in HISTORY_OPS:
        raise ValueError(f"unknown history operation {op!r}")
    return f"{HISTORY_RPC_PREFIX}.{op}"


def history_wildcard() -> str:
    return f"{HISTORY_RPC_PREFIX}.>"


def usage_subject(op: str) -> str:
    if op not in USAGE_OPS:
        raise ValueError(f"unknown usage operation {op!r}")
    return f"{USAGE_RPC_PREFIX}.{op}"


def usage_wildcard() -> str:
    return f"{USAGE_RPC_PREFIX}.>"


def audit_subject(action: str) -> str:
    return f"{AUDIT_PREFIX}.{check_token(action)}"


def audit_wildcard() -> str:
    return f"{AUDIT_PREFIX}.>"


def batch_notice_subject(batch_id: str) -> str:
    return f"{NOTICES_PREFIX}.batch.{check_token(batch_id)}"


def notices_wildcard() -> str:
    return f"{NOTICES_PREFIX}.batch.*"


def worker_control(worker_id: str, op: str) -> str:
    return f"{WORKER_CONTROL_PREFIX}.{check_token(worker_id)}.{check_token(op)}"


def served_key(model: str) -> str:
    return model_token(model)
