"""NATS users and their subject permissions: one user per service plus `admin`.

Derived from `subjects.py` and from what each service's code does on the broker. The local stack
writes this block into its nats.conf with generated passwords; `infra/nats/nats.conf` (the
compose deployment) carries the same block with `$NATS_<USER>_PASSWORD` references, and a test
keeps the two identical. Regenerate the deployment block with
`python -m llmchat_common.launch.nats_auth`.

What a JetStream client needs beyond its own subjects (nats-py 2.16):
- `$JS.API.*` requests: stream create/update/info (`ensure_streams` and `ensure_kv` at start),
  consumer create/info/next, direct gets. Each grant names its stream; delete, purge,
  snapshot/restore, other streams and server-level calls stay denied, except the erasure
  that history alone does (`_erase`: a request's message and its events' subjects).
- replies on the connection's inbox (`_INBOX.>` unless the connection sets its own prefix):
  JetStream API responses, publish acks, pull-consumer deliveries, KV watches;
- `$JS.ACK.<stream>.>` for the consumers it acknowledges, `$JS.FC.<stream>.>` to answer flow
  control on ordered consumers (KV watches and `keys()`);
- a KV put or delete is a publish to `$KV.<bucket>.<key>`.

Invariant: no user may both write a stream's content and create consumers on it. JetStream does
not check a push consumer's delivery subject against its creator's publish permissions
(nats-server#8274), so such a user could have JetStream deliver content it wrote to a subject it
may not publish to (e.g. `auth.v1.rpc.*`).

The matrix, and the risks it leaves (stream-update rights above all): docs/nats-permissions.md.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from llmchat_common import subjects as s

ADMIN = "admin"
SERVICES = ("chat", "worker", "auth", "history", "metrics")
USERS = (*SERVICES, ADMIN)

# The edge's replies carry tokens, API keys and conversations: its connection uses an inbox
# only it (and admin) may subscribe to. The others keep nats-py's and FastStream's default
# `_INBOX` (FastStream's pull subscribers use `_INBOX.` whatever the connection's prefix).
INBOX_PREFIXES = {"chat": "_INBOX_chat"}
DEFAULT_INBOX = "_INBOX"

_API = "$JS.API"


@dataclass(frozen=True)
class Permissions:
    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    # Replies to the reply subject of a request this user received (once, while pending).
    allow_responses: bool = False


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subjects(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def inbox_prefix(user: str) -> str:
    return INBOX_PREFIXES.get(user, DEFAULT_INBOX)


def password_variable(user: str) -> str:
    return f"NATS_{user.upper()}_PASSWORD"


# -- JetStream grants, each for one stream ---------------------------------------------------
def _provision(stream: str, *, update: bool = False) -> list[str]:
    """`ensure_streams` (create, update on a changed config) and `ensure_kv` (create, else
    look the bucket up)."""
    grants = [f"{_API}.STREAM.CREATE.{stream}", f"{_API}.STREAM.INFO.{stream}"]
    if update:
        grants.append(f"{_API}.STREAM.UPDATE.{stream}")
    return grants


def _get(stream: str) -> list[str]:
    """Single messages: `get_msg`, `get_last_msg`, `KeyValue.get` (direct get when the stream
    allows it, which ours do)."""
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.STREAM.MSG.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}",
        f"{_API}.DIRECT.GET.{stream}.>",
    ]


def _watch(stream: str) -> list[str]:
    """Ordered push consumers (KV watches, `KeyValue.keys()`, replay): create, info, and the
    answers to flow control."""
    return [
        f"{_API}.STREAM.INFO.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}",
        f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _consume(stream: str) -> list[str]:
    """Durable explicit-ack consumers (nats-py creates them with any of three subject forms):
    pull, acknowledge."""
    return [
        *_watch(stream),
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _consume_only(stream: str, durable: str) -> list[str]:
    """Reading a stream whose other durable consumers must not be acked by this user (the
    workers' `worker-<model>` on CHAT_REQUESTS: an ack there would drop a request): its own
    durable `durable` (pull, acknowledge), and ephemeral replay consumers without acks."""
    return [
        *_watch(stream),
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{_API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _erase() -> list[str]:
    """Forgetting requests (`llmchat_common.forgetting`): finding a request's message through
    its events, deleting that message and each event (secure deletes), purging the events'
    subjects."""
    return [
        *_get(s.EVENTS_STREAM),
        *_get(s.REQUESTS_STREAM),
        f"{_API}.STREAM.MSG.DELETE.{s.REQUESTS_STREAM}",
        f"{_API}.STREAM.MSG.DELETE.{s.EVENTS_STREAM}",
        f"{_API}.STREAM.PURGE.{s.EVENTS_STREAM}",
    ]


# The metrics service's jobs projection on CHAT_REQUESTS (llmchat_metrics.jobs; `projection-`
# and the projection's name).
JOBS_REQUESTS_DURABLE = "projection-jobs-requests"

# Every service: account info and stream lookup by subject.
_JS_COMMON = [f"{_API}.INFO", f"{_API}.STREAM.NAMES"]
# The services that run `ensure_streams` at start (all but auth).
_CHAT_STREAMS = [
    *_provision(s.REQUESTS_STREAM, update=True),
    *_provision(s.EVENTS_STREAM, update=True),
    *_provision(s.NOTICES_STREAM, update=True),
    *_provision(s.AUDIT_STREAM, update=True),
]

# Publish grants match the streams' subject filters exactly (one token per `*`): a subject with
# more tokens would belong to no stream, and stream-update rights could then capture it.
REQUESTS = s.requests_wildcard()
EVENTS = s.events_wildcard()
CANCELS = s.cancel_wildcard()
# Denies and subscriptions cover the whole prefix.
ALL_REQUESTS = f"{s.REQUESTS_PREFIX}.>"
ALL_EVENTS = f"{s.EVENTS_PREFIX}.>"
ALL_CANCELS = f"{s.CANCEL_PREFIX}.>"
AUTH_RPC = s.auth_wildcard()
HISTORY_RPC = s.history_wildcard()
USAGE_RPC = s.usage_wildcard()
REGISTRY_KV = kv_subjects(s.REGISTRY_BUCKET)
CANCELS_KV = kv_subjects(s.CANCELS_BUCKET)
REVOCATIONS_KV = kv_subjects(s.REVOCATIONS_BUCKET)
SERVED_KV = kv_subjects(s.SERVED_BUCKET)
FILES_STREAM = f"OBJ_{s.FILES_BUCKET}"
# An object store's chunks and metadata (a put, a delete).
FILES = f"$O.{s.FILES_BUCKET}.>"
NOTICES = s.notices_wildcard()
ALL_NOTICES = f"{s.NOTICES_PREFIX}.>"
AUDIT = f"{s.AUDIT_PREFIX}.*"
ALL_AUDIT = s.audit_wildcard()
WORKER_CONTROL = f"{s.WORKER_CONTROL_PREFIX}.*.*"
ALL_WORKER_CONTROL = f"{s.WORKER_CONTROL_PREFIX}.>"
MAX_DELIVERIES_ADVISORIES = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.REQUESTS_STREAM}.>"


def cancels_stream() -> str:
    return kv_stream(s.CANCELS_BUCKET)


def _inbox(user: str) -> list[str]:
    return [f"{inbox_prefix(user)}.>"]


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def permissions() -> dict[str, Permissions]:
    """The permission matrix. Denies repeat what must never be granted, so that widening an
    allow later cannot silently hand it out."""
    registry, cancels, revocations, served = (
        kv_stream(b) for b in (s.REGISTRY_BUCKET, s.CANCELS_BUCKET, s.REVOCATIONS_BUCKET, s.SERVED_BUCKET)
    )
    return {
        # The edge: queues requests, follows their events live, cancels, reads the model
        # registry, follows revocations, and is the only caller of the request-reply services.
        "chat": Permissions(
            publish_allow=_unique(
                [
                    REQUESTS,
                    CANCELS,
                    CANCELS_KV,
                    AUTH_RPC,
                    HISTORY_RPC,
                    USAGE_RPC,
                    *_JS_COMMON,
                    *_CHAT_STREAMS,
                    *_provision(registry),
                    *_provision(cancels),
                    *_provision(revocations),
                    *_get(cancels),  # a job cancelled while queued shows as cancelled
                    *_get(registry),
                    *_watch(registry),  # KeyValue.keys()
                    *_get(revocations),
                    *_watch(revocations),
                    # Models served lately (known while their last worker is away).
                    *_provision(served),
                    *_get(served),
                    *_watch(served),
                    # Model switches: the admin's command to one worker, and its audit event.
                    WORKER_CONTROL,
                    AUDIT,
                    # Resume and replay read the event log; the edge sees every event anyway.
                    *_get(s.EVENTS_STREAM),
                    *_watch(s.EVENTS_STREAM),
                    # Completion webhooks: the edges' shared durable on terminal events; it
                    # pulls and acks that durable only (never a projection's).
                    f"{_API}.CONSUMER.DURABLE.CREATE.{s.EVENTS_STREAM}.{s.WEBHOOKS_CONSUMER}",
                    f"{_API}.CONSUMER.MSG.NEXT.{s.EVENTS_STREAM}.{s.WEBHOOKS_CONSUMER}",
                    f"$JS.ACK.{s.EVENTS_STREAM}.{s.WEBHOOKS_CONSUMER}.>",
                    # Admission control reads how many requests wait for each model's workers
                    # (the workers' consumer info; the subject's count before one exists).
                    f"{_API}.CONSUMER.INFO.{s.REQUESTS_STREAM}.>",
                    # Files and batches' prepared lines: the edge writes the object store, so
                    # it reads by direct gets only (no consumer: the invariant above), and
                    # purges an object's chunks when it is replaced or deleted.
                    FILES,
                    *_provision(FILES_STREAM),
                    *_get(FILES_STREAM),
                    f"{_API}.STREAM.PURGE.{FILES_STREAM}",
                    # Batch webhooks: the edges' shared durable on the notices history writes.
                    *_watch(s.NOTICES_STREAM),
                    f"{_API}.CONSUMER.DURABLE.CREATE.{s.NOTICES_STREAM}.{s.WEBHOOKS_CONSUMER}",
                    f"{_API}.CONSUMER.MSG.NEXT.{s.NOTICES_STREAM}.{s.WEBHOOKS_CONSUMER}",
                    f"$JS.ACK.{s.NOTICES_STREAM}.{s.WEBHOOKS_CONSUMER}.>",
                ]
            ),
            publish_deny=(ALL_EVENTS, ALL_NOTICES, REGISTRY_KV, REVOCATIONS_KV, SERVED_KV),
            # Its own inbox first; `_INBOX` too, for tools and tests that connect as the edge
            # with nats-py's default prefix (nothing private reaches that inbox).
            subscribe_allow=(ALL_EVENTS, *_inbox("chat"), f"{DEFAULT_INBOX}.>"),
            subscribe_deny=(AUTH_RPC,),
        ),
        # The worker: pulls its model's requests, publishes their events, heartbeats into the
        # registry, checks cancels (live and queued) and ends exhausted requests.
        "worker": Permissions(
            publish_allow=_unique(
                [
                    EVENTS,
                    REGISTRY_KV,
                    SERVED_KV,
                    AUDIT,  # how a model switch ended
                    *_JS_COMMON,
                    *_CHAT_STREAMS,
                    *_provision(registry),
                    *_provision(cancels),
                    *_provision(served),
                    *_consume(s.REQUESTS_STREAM),
                    *_get(s.REQUESTS_STREAM),  # the request behind a max-deliveries advisory
                    *_get(s.EVENTS_STREAM),  # is its terminal event stored already?
                    *_get(cancels),  # cancelled while queued?
                ]
            ),
            publish_deny=(
                ALL_REQUESTS,
                ALL_CANCELS,
                ALL_NOTICES,
                AUTH_RPC,
                CANCELS_KV,
                REVOCATIONS_KV,
                ALL_WORKER_CONTROL,
            ),
            # Model switches and catalog queries from the edge, answered by the worker named.
            subscribe_allow=(CANCELS, MAX_DELIVERIES_ADVISORIES, WORKER_CONTROL, *_inbox("worker")),
            subscribe_deny=(AUTH_RPC,),
            allow_responses=True,
        ),
        # Auth: answers request-reply in its queue group and writes the revocations bucket.
        "auth": Permissions(
            publish_allow=_unique(
                [
                    REVOCATIONS_KV,
                    *_JS_COMMON,
                    *_provision(revocations),
                    *_get(revocations),
                ]
            ),
            publish_deny=(
                ALL_REQUESTS,
                ALL_EVENTS,
                ALL_CANCELS,
                ALL_NOTICES,
                AUTH_RPC,
                REGISTRY_KV,
                CANCELS_KV,
                ALL_AUDIT,
                ALL_WORKER_CONTROL,
            ),
            subscribe_allow=(f"{AUTH_RPC} {s.AUTH_QUEUE}", *_inbox("auth")),
            allow_responses=True,
        ),
        # History and metrics: project the event log through their durable consumers, replay
        # it with ephemeral ones, answer their own request-reply subjects. History also asks
        # the model for conversation titles: it writes the request stream, on which it creates
        # no consumer (the invariant above). Metrics projects the jobs, queued ones included,
        # so it reads the request stream too (and writes neither stream). History alone
        # erases requests from the log (a deleted conversation's, an erased user's).
        # History also coordinates batches: it publishes their lines (requests), cancels them
        # (the live subject and the cancels bucket), reads their prepared lines from the files
        # store by direct gets and announces their end (notices, for webhooks).
        "history": _projection(
            "history",
            HISTORY_RPC,
            s.HISTORY_QUEUE,
            publish=[REQUESTS, CANCELS, CANCELS_KV, NOTICES],
            extra=[*_erase(), *_provision(cancels_stream()), *_provision(FILES_STREAM), *_get(FILES_STREAM)],
        ),
        "metrics": _projection(
            "metrics",
            USAGE_RPC,
            s.USAGE_QUEUE,
            extra=_consume_only(s.REQUESTS_STREAM, JOBS_REQUESTS_DURABLE),
        ),
        # Tests and operator tools.
        ADMIN: Permissions(publish_allow=(">",), subscribe_allow=(">",)),
    }


def _projection(
    user: str,
    rpc: str,
    queue: str,
    *,
    publish: list[str] | None = None,
    extra: list[str] | None = None,
) -> Permissions:
    writes = publish or []
    return Permissions(
        publish_allow=_unique(
            [
                *writes,
                *_JS_COMMON,
                *_CHAT_STREAMS,
                *_consume(s.EVENTS_STREAM),
                *(extra or []),
            ]
        ),
        publish_deny=(
            *(() if REQUESTS in writes else (ALL_REQUESTS,)),
            ALL_EVENTS,
            *(() if CANCELS in writes else (ALL_CANCELS,)),
            *(() if NOTICES in writes else (ALL_NOTICES,)),
            AUTH_RPC,
            HISTORY_RPC,
            USAGE_RPC,
            ALL_AUDIT,
            ALL_WORKER_CONTROL,
            *((REGISTRY_KV, REVOCATIONS_KV, SERVED_KV) if CANCELS_KV in writes else ("$KV.>",)),
            # Only the edge writes files.
            FILES,
        ),
        subscribe_allow=(f"{rpc} {queue}", *_inbox(user)),
        subscribe_deny=(AUTH_RPC, ALL_REQUESTS, ALL_EVENTS),
        allow_responses=True,
    )


# -- nats.conf -------------------------------------------------------------------------------
_ROLES = {
    "chat": "the edge",
    "worker": "inference workers",
    "auth": "the auth service",
    "history": "the history service",
    "metrics": "the metrics service",
    ADMIN: "tests and operator tools (nats CLI); never given to a service",
}


def _quote(value: str) -> str:
    # Quoted: an unquoted `$...` is a variable reference in nats.conf.
    if '"' in value or "\\" in value or "\n" in value:
        raise ValueError(f"unsupported character in {value!r}")
    return f'"{value}"'


def _list(key: str, items: tuple[str, ...], indent: str) -> list[str]:
    if not items:
        return []
    return [f"{indent}{key}: [", *(f"{indent}  {_quote(i)}" for i in items), f"{indent}]"]


def render_authorization(passwords: Mapping[str, str] | None = None) -> str:
    """The `authorization` block. Without `passwords`, each password is the environment
    variable `$NATS_<USER>_PASSWORD` (the deployment's form)."""
    lines = ["authorization {", "  users = ["]
    for user, perms in permissions().items():
        password = _quote(passwords[user]) if passwords is not None else f"${password_variable(user)}"
        lines += [
            f"    # {user}: {_ROLES[user]}",
            "    {",
            f"      user: {_quote(user)}",
            f"      password: {password}",
            "      permissions: {",
            "        publish: {",
            *_list("allow", perms.publish_allow, "          "),
            *_list("deny", perms.publish_deny, "          "),
            "        }",
            "        subscribe: {",
            *_list("allow", perms.subscribe_allow, "          "),
            *_list("deny", perms.subscribe_deny, "          "),
            "        }",
            *(["        allow_responses: true"] if perms.allow_responses else []),
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_authorization())
