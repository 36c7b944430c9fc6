"""The worker's log output is JSON lines only: stray output (native libraries, warnings,
progress bars, child processes) is wrapped into JSON records with our fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llmchat_worker.logs import JsonLines, wrap_line


def record(line: bytes) -> dict[str, object]:
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def test_json_lines_pass_through_unchanged() -> None:
    line = b'{"ts": "x", "level": "INFO", "message": "m", "service": "s"}\n'
    assert wrap_line(line, "svc") == line


def test_other_lines_are_wrapped_with_our_fields() -> None:
    wrapped = record(wrap_line(b"[W1202 10:57:43 utils.cpp:68] Warning: NUMA binding\n", "svc"))
    assert wrapped["level"] == "WARNING" and wrapped["service"] == "svc"
    assert wrapped["message"] == "[W1202 10:57:43 utils.cpp:68] Warning: NUMA binding"
    assert {"ts", "logger"} <= set(wrapped)
    assert record(wrap_line(b"Traceback (most recent call last):\n", "svc"))["level"] == "ERROR"
    assert record(wrap_line(b"[1, 2]\n", "svc"))["message"] == "[1, 2]"  # JSON, not an object


def test_progress_bars_keep_their_last_state_and_blank_lines_vanish() -> None:
    bar = b"Loading:   0%|    | 0/1\rLoading: 100%|####| 1/1\r\n"
    assert record(wrap_line(bar, "svc"))["message"] == "Loading: 100%|####| 1/1"
    assert wrap_line(b"\n", "svc") == b""
    assert wrap_line(b"   \r\n", "svc") == b""


def test_descriptor_output_of_this_process_and_its_children_becomes_json(tmp_path: Path) -> None:
    out = tmp_path / "log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        lines = JsonLines("svc", fds=(fd,)).start()
        os.write(fd, b'plain text\n{"message": "already json"}\npartial ')
        os.write(fd, b"line\n")
        child = f"import os; os.write({fd}, 'from a child \\u00e9\\n'.encode())"
        subprocess.run([sys.executable, "-c", child], pass_fds=(fd,), check=True)
        lines.stop()
    finally:
        os.close(fd)
    records = [record(line) for line in out.read_bytes().splitlines()]
    assert [r["message"] for r in records] == ["plain text", "already json", "partial line", "from a child é"]
    assert all(r["service"] == "svc" for r in records if r["message"] != "already json")
