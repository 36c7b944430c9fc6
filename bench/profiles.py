"""py-spy profiles of running services during a benchmark step, summarised as text.

`Profiler(pids, seconds, out_dir)` starts one `py-spy record` per process (raw collapsed
stacks, 100 samples/s, GIL-idle samples left out) when entered and waits for them on exit;
`top(path)` gives the functions with the most samples: self (the leaf frame) and inclusive.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (it is in requirements-dev.txt: make setup)")
    return found


class Profiler:
    def __init__(self, pids: dict[str, int], seconds: float, out_dir: Path) -> None:
        self.pids = pids
        self.seconds = seconds
        self.out_dir = out_dir
        self.outputs: dict[str, Path] = {}
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profiler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{name}.txt"
            self.outputs[name] = out
            argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(round(self.seconds))]
            argv += ["--rate", "100", "--format", "raw", "--output", str(out), "--nonblocking"]
            self._procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self._procs:
            try:
                proc.wait(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _frame_name(frame: str) -> str:
    # py-spy's raw frames read "function (file.py:line)"; the line number is dropped.
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def top(path: Path, n: int = 12) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, the n most frequent leaf functions, the n most frequent functions on the
    stack) from a raw py-spy file."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, leaf.most_common(n), inclusive.most_common(n)


def report(profiler: Profiler, n: int = 12) -> str:
    lines = []
    for name, path in profiler.outputs.items():
        if not path.exists():
            lines.append(f"{name}: no profile (py-spy failed)")
            continue
        total, leaves, inclusive = top(path, n)
        lines.append(f"\n{name}: {total} samples")
        lines.append("  self:")
        lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in leaves]
        lines.append("  inclusive:")
        lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive]
    return "\n".join(lines)
