"""Every line the worker writes is one JSON object, its engine's processes' lines included.

Our own records are JSON already, and so are vLLM's (`llmchat_common.logging`:
`setup_logging`, `configure_vllm_logging`). What remains (native libraries' warnings, Python
warnings, progress bars, records logged before vLLM applies its config) is written straight to
the file descriptors the engine's processes inherit; `JsonLines` routes those descriptors
through a pipe and wraps every line that is not a JSON object into one with the same fields.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sys
import threading
from typing import BinaryIO

_WARNING = re.compile(rb"warn|^\[W", re.IGNORECASE)
_ERROR = re.compile(rb"error|exception|traceback|^\[E", re.IGNORECASE)


def wrap_line(line: bytes, service: str) -> bytes:
    """`line` unchanged if it is a JSON object, else a JSON record holding it (b"" for blank)."""
    # A progress bar redraws its line with carriage returns: its last state is enough.
    segments = [s for s in line.rstrip(b"\n").split(b"\r") if s.strip()]
    if not segments:
        return b""
    line = segments[-1]
    if line.startswith(b"{"):
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(line), dict):
                return line + b"\n"
    level = "ERROR" if _ERROR.search(line) else "WARNING" if _WARNING.search(line) else "INFO"
    now = datetime.datetime.now()
    record = {
        "ts": now.strftime("%Y-%m-%d %H:%M:%S,") + f"{now.microsecond // 1000:03d}",
        "level": level,
        "logger": "stdio",
        "message": line.decode(errors="replace"),
        "service": service,
    }
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


class JsonLines:
    """Routes this process's stdout and stderr descriptors (inherited by every process it
    starts) through pipes that a thread copies to the original ones line by line, wrapping
    non-JSON lines. `stop` puts the originals back."""

    def __init__(self, service: str, fds: tuple[int, ...] = (1, 2)) -> None:
        self.service = service
        self.fds = fds
        self._saved: dict[int, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> JsonLines:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in self.fds:
            original = os.dup(fd)
            read_end, write_end = os.pipe()
            self._saved[fd] = original
            reader = os.fdopen(read_end, "rb")
            thread = threading.Thread(
                target=self._pump, args=(reader, original), name=f"json-lines-{fd}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            os.dup2(write_end, fd)
            os.close(write_end)
        return self

    def _pump(self, reader: BinaryIO, out: int) -> None:
        with reader:
            for line in reader:
                data = wrap_line(line, self.service)
                try:
                    while data:
                        data = data[os.write(out, data) :]
                except OSError:
                    return  # nowhere to write to any more

    def stop(self, timeout: float = 2.0) -> None:
        """Back to the original descriptors; the pumps end once every process that inherited
        the pipes has closed them (bounded wait: an orphan may still hold one)."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in self._saved.items():
            os.dup2(original, fd)
        for thread in self._threads:
            thread.join(timeout)
        self._saved.clear()
        self._threads.clear()
