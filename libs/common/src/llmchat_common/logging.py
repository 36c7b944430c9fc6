"""JSON structured logging: one line per record with service, level and context fields.

Every line carries the current trace and span ids (when a span is active) and the request and
user ids bound to the current task with `log_context`. Secrets, tokens and prompt text are never
passed to loggers; callers log ids only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from llmchat_common.settings import LogSettings

# Ids describing what the current task works on (request_id, user_id), added to its log lines.
_fields: ContextVar[dict[str, str]] = ContextVar("llmchat_log_fields", default={})  # noqa: B039 - never mutated


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Binds ids to every log line of the current task (and tasks it starts) inside the block."""
    token = _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _fields.reset(token)


def bind_log_fields(**fields: str | None) -> None:
    """Like `log_context`, for the rest of the current task (e.g. an HTTP request's own task,
    once the caller is known)."""
    _fields.set({**_fields.get(), **{k: v for k, v in fields.items() if v}})


class ContextFilter(logging.Filter):
    """Adds the bound ids and the current trace/span ids; explicit `extra` values win."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


def json_formatter(service: str) -> logging.Formatter:
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        static_fields={"service": service},
    )


def setup_logging(service: str, settings: LogSettings | None = None) -> None:
    settings = settings or LogSettings()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.json_format:
        handler.setFormatter(json_formatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level.upper())


def install_task_dump() -> None:
    """SIGUSR1 logs every asyncio task's stack: what a stuck service is waiting for."""

    def dump() -> None:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=out)
        logging.getLogger("llmchat.tasks").warning("task dump\n%s", out.getvalue())

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)


def configure_vllm_logging(service: str, settings: LogSettings | None = None) -> None:
    """vLLM configures its own loggers in every process it starts (the engine core is a separate
    process): point it at a logging config that writes our JSON lines too. Call before vLLM is
    imported; an operator's own VLLM_LOGGING_CONFIG_PATH wins."""
    settings = settings or LogSettings()
    if not settings.json_format or "VLLM_LOGGING_CONFIG_PATH" in os.environ:
        return
    config = {
        "version": 1,
        # vLLM applies this with dictConfig in a process whose other loggers already exist.
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.json_formatter", "service": service}},
        "filters": {"context": {"()": f"{__name__}.ContextFilter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["context"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["json"], "level": settings.level.upper(), "propagate": False}},
    }
    # A private file of this process (mode 0600): vLLM's processes import factories named in it.
    fd, path = tempfile.mkstemp(prefix="llmchat-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    atexit.register(_unlink, path)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
