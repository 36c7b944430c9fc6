"""What the built-in models' one-time builds share (`minilm`, `smollm2`): a model folder built from
an installed PyPI package into a temporary folder and renamed into place with its marker inside,
so a build killed midway leaves nothing a later start takes for complete; concurrent starts on one
models folder build once (a lock file beside the folder); a small CLI to build one ahead of time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

MARKER = "llmchat_build.json"


def is_built(out: Path, version: int) -> bool:
    """`out` holds a complete build of this `version` (its marker says so)."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()).get("version") == version)
    except (OSError, ValueError):
        return False


def ensure_built(
    out: Path, version: int, source: Callable[[], Path], build: Callable[[Path, Path], Path]
) -> Path:
    """The folder at `out`, built first (`build(source(), out)`) if it is missing or stale.
    `source` runs before the lock, so a missing package fails fast."""
    if is_built(out, version):
        return out
    found = source()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out.parent / f".{out.name}.lock"):
        if not is_built(out, version):
            build(found, out)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_into(
    out: Path,
    write: Callable[[Path], None],
    *,
    log: logging.Logger,
    name: str,
    source: Path,
    distribution: str,
    version: int,
    marker: Mapping[str, str] | None = None,
    doing: str,
    done: str,
) -> Path:
    """`write(tmp)` fills a temporary folder beside `out`; it gets its marker (the build
    `version`, the `distribution` it came from, then `marker`'s fields) and replaces `out`."""
    started = time.monotonic()
    log.info(doing, extra={"model": name, "source": str(source), "path": str(out)})
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "version": version,
                    "source": f"{distribution}=={metadata.version(distribution)}",
                    **(marker or {}),
                }
            )
        )
        if out.exists():  # a stale build (older version) or an unmarked folder
            stale = out.with_name(f".{out.name}.stale-{os.getpid()}")
            out.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        done,
        extra={"model": name, "path": str(out), "seconds": round(time.monotonic() - started, 1)},
    )
    return out


def main(
    argv: list[str] | None,
    *,
    description: str,
    name: str,
    rebuild: Callable[[Path], object],
    ensure: Callable[[Path], object],
) -> int:
    """`<module> OUT [--force]`: build the model at OUT once (`--force`: again)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.force:
        rebuild(args.out)
    else:
        ensure(args.out)
    print(f"{name} ready at {args.out}")
    return 0
