"""JSON structured logging: one line per record with service, level and context fields.

Secrets, tokens and prompt text are never passed to loggers; callers log ids only.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys

from pythonjsonlogger.json import JsonFormatter

from llmchat_common.settings import LogSettings


def setup_logging(service: str, settings: LogSettings | None = None) -> None:
    settings = settings or LogSettings()
    handler = logging.StreamHandler(sys.stderr)
    if settings.json_format:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
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
