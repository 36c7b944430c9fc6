# The multiplication sign is meant: the reasons and the summary are read by people.
# ruff: noqa: RUF001, RUF002
"""Will a profile's model fit this machine? An estimate from the model's `config.json`, made
before any weight is loaded, so that a profile too big for the hardware is refused in one line
instead of after minutes of loading (or a CUDA out-of-memory error).

It is an estimate, not a measurement: vLLM profiles the real memory at start-up and sizes the
KV cache from what is left. The rules below follow what vLLM 0.32 does (its GPU worker's
memory profiling, `vllm/v1/core/kv_cache_utils.py` with its "Maximum concurrency for N tokens
per request" log line, `EngineArgs` batch defaults, the CPU worker's KV cache sizing):

- Parameters are counted from the config: embeddings, attention with grouped KV heads (and
  Qwen2's q/k/v biases), the gated MLP (BERT: the plain one), norms, and the LM head unless
  it is tied to the embeddings. Llama, Mistral, Qwen2, Gemma 2, Phi-3, EXAONE, BERT.
- Weights per device = parameters × bytes per weight / tensor_parallel_size. Bytes per weight:
  the profile's dtype (`auto`: the checkpoint's; vLLM runs a float32 checkpoint in 16 bits);
  a 4-bit quantized checkpoint (AWQ, GPTQ) ≈ 4.25 bits with its scales and zeros, fp8 8 bits;
  a quantized checkpoint keeps its embeddings and LM head in 16 bits.
- KV cache per token = 2 (K and V) × layers × KV heads per device × head_dim × KV dtype bytes
  (4 on a float32 profile, else 2); KV heads per device = ceil(KV heads / tp), since vLLM
  replicates them when tp exceeds them. vLLM refuses to start unless the KV cache holds at
  least one sequence of max_model_len, so that is the need; `max_concurrency` = KV room /
  (KV per token × max_model_len), the figure vLLM logs. Sliding-window layers (Gemma 2) are
  counted as full ones: the estimate errs on the safe side there. Encoders (BERT) keep no KV.
- Activations: vLLM's profiling forward pass over one batch of max_num_batched_tokens: 2048
  for a chat model (vLLM ≥ 0.10 chunks prefills; 2048 is its default for `AsyncLLM`'s engine
  context), max(max_model_len, 2048) where prefills are not chunked (embedding models), each
  token costing ≈ (hidden × 4 + intermediate × 2) × activation bytes; plus the sampler's
  logits, max_num_seqs × vocab × 4 bytes (chat models); plus, per GPU, the CUDA context and
  CUDA graphs: ≈ 1 GiB, ≈ 0.5 GiB with enforce_eager. `activation_bytes` includes all of it.
- Available on a GPU: gpu_memory_utilization × the memory of each of the tensor_parallel_size
  devices (the smallest of them); fewer devices than the profile needs does not fit as is.
- On the CPU build (tensor_parallel_size must be 1) weights and activations live in RAM, and
  the KV cache gets cpu_kvcache_space_gib (`VLLM_CPU_KVCACHE_SPACE`), or when that is unset
  what is left of gpu_memory_utilization × RAM. It fits when weights + activations + KV space
  ≤ 0.8 × RAM (the rest for the OS and the platform's other processes) and the KV space holds
  one max_model_len sequence. A profile that requires GPUs never fits a CPU machine.
- Verdict: `fits` as configured; else `fits_with_changes` with the first change that fits, in
  this order: (on CPU, a KV space that holds a sequence,) a shorter max_model_len (the largest
  power of two ≥ 2048), tensor_parallel_size = the number of devices (with a shorter
  max_model_len if needed), a 4-bit quantized checkpoint (likewise); else `does_not_fit`;
  `unknown` when no config is known.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from llmchat_worker.errors import ProfileError
from llmchat_worker.profiles import ModelProfile

log = logging.getLogger(__name__)

GIB = 1024**3
# AWQ/GPTQ with groups of 128: an fp16 scale and a packed zero per group on top of the 4 bits.
INT4_BITS = 4.25
FP8_BITS = 8.0
CUDA_OVERHEAD = GIB
CUDA_OVERHEAD_EAGER = GIB // 2
CPU_RAM_FRACTION = 0.8
# vLLM's SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS: `AsyncLLM`'s engine context has no
# entry in its per-usage defaults, so a chunked-prefill engine batches 2048 tokens.
CHUNKED_BATCH_TOKENS = 2048
MIN_SUGGESTED_LEN = 2048
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet"})
# Model types whose transformers config class defaults to separate LM head weights: a config of
# theirs without `tie_word_embeddings` does not tie. Others default to tying, as
# PretrainedConfig does (Gemma 2's published config omits the key and ties).
UNTIED_BY_DEFAULT = frozenset({"llama", "mistral", "qwen2", "phi3"})
QUANT_BITS = {
    "awq": INT4_BITS,
    "awq_marlin": INT4_BITS,
    "gptq": INT4_BITS,
    "gptq_marlin": INT4_BITS,
    "marlin": INT4_BITS,
    "bitsandbytes": INT4_BITS,
    "fp8": FP8_BITS,
    "fbgemm_fp8": FP8_BITS,
    "ptpc_fp8": FP8_BITS,
}
Verdict = Literal["fits", "fits_with_changes", "does_not_fit", "unknown"]


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class Hardware:
    kind: Literal["cpu", "gpu"]
    devices: tuple[Device, ...]
    ram_bytes: int

    def summary(self) -> str:
        ram = f"{_gib(self.ram_bytes)} GiB RAM"
        if self.kind == "cpu":
            return f"CPU, {ram}"
        if not self.devices:
            return f"no GPU found, {ram}"
        groups: list[tuple[Device, int]] = []
        for device in self.devices:
            if groups and groups[-1][0] == device:
                groups[-1] = (device, groups[-1][1] + 1)
            else:
                groups.append((device, 1))
        return " + ".join(f"{n} × {d.name} ({_gib(d.memory_bytes)} GiB)" for d, n in groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "devices": [{"name": d.name, "memory_bytes": d.memory_bytes} for d in self.devices],
            "ram_bytes": self.ram_bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Hardware:
        kind = data.get("kind")
        if kind not in ("cpu", "gpu"):
            raise ValueError(f"hardware kind must be cpu or gpu, not {kind!r}")
        devices = tuple(Device(str(d["name"]), int(d["memory_bytes"])) for d in data.get("devices", []))
        return cls(kind, devices, int(data["ram_bytes"]))


def detect(is_cpu: bool) -> Hardware:
    """This machine: the GPUs NVML sees (a GPU worker) and the RAM. A GPU worker without a
    usable NVML (no `nvidia-ml-py`, no driver) reports no GPU rather than failing here: the
    estimate then says so, in one line."""
    ram = _ram_bytes()
    if is_cpu:
        return Hardware("cpu", (), ram)
    return Hardware("gpu", _nvml_devices(), ram)


def _ram_bytes() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    if total <= 0:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
    # A container's limit is what the worker may really use.
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and 0 < int(limit) < total:
            total = int(limit)
    return total


def _nvml_devices() -> tuple[Device, ...]:
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        log.warning("nvidia-ml-py is not installed: no GPU can be seen")
        return ()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.warning("NVML unavailable (%s): no GPU can be seen", exc)
        return ()
    try:
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            found.append((index, _text(nvml.nvmlDeviceGetUUID(handle)), handle))
        devices = []
        for _, _, handle in _visible(found):
            name = _text(nvml.nvmlDeviceGetName(handle))
            devices.append(Device(name, int(nvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return tuple(devices)
    except nvml.NVMLError as exc:
        log.warning("NVML failed (%s): no GPU can be seen", exc)
        return ()
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _visible(found: list[tuple[int, str, Any]]) -> Iterator[tuple[int, str, Any]]:
    """The devices CUDA_VISIBLE_DEVICES leaves to vLLM (indices, or UUID prefixes): NVML lists
    every device regardless. Indices are NVML's (PCI bus) order, CUDA's with
    CUDA_DEVICE_ORDER=PCI_BUS_ID; the count, which is what the estimate needs, is right either
    way on a box of identical cards."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        yield from found
        return
    for entry in (e.strip() for e in visible.split(",")):
        if not entry:
            continue
        # CUDA stops at the first entry it cannot resolve.
        match = [f for f in found if (str(f[0]) == entry if entry.isdigit() else f[1].startswith(entry))]
        if not match:
            return
        yield match[0]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    tied_embeddings: bool
    weight_bits: float
    # An encoder (BERT): bidirectional attention, no KV cache, no chunked prefill.
    encoder_only: bool = False

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """The model's shape and parameter count from its Hugging Face `config.json`. Raises
    ValueError when the config lacks what the count needs (treat the model as unknown)."""
    cfg = config
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = cfg["text_config"]
    model_type = str(cfg.get("model_type") or config.get("model_type") or "")
    hidden = _positive(cfg, "hidden_size", "n_embd", "d_model")
    layers = _positive(cfg, "num_hidden_layers", "num_layers", "n_layer")
    heads = _positive(cfg, "num_attention_heads", "n_head")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = _positive(cfg, "vocab_size")
    intermediate = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    tied = bool(cfg.get("tie_word_embeddings", model_type not in UNTIED_BY_DEFAULT))
    encoder = model_type in ENCODER_TYPES

    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if encoder:
        # BERT: biases everywhere, a plain MLP, two LayerNorms (weight and bias) per layer.
        attention += q_out + 2 * kv_out + hidden
        mlp = 2 * hidden * intermediate + intermediate + hidden
        norms = 4 * hidden
    else:
        if model_type == "qwen2":
            attention += q_out + 2 * kv_out
        elif cfg.get("attention_bias"):
            attention += q_out + 2 * kv_out + hidden
        mlp = 3 * hidden * intermediate
        if cfg.get("mlp_bias"):
            mlp += 2 * intermediate + hidden
        # Gemma 2 norms before and after both attention and MLP.
        norms = (4 if model_type == "gemma2" else 2) * hidden
    parameters = layers * (attention + mlp + norms) + vocab * hidden
    if encoder:
        positions = int(cfg.get("max_position_embeddings") or 512)
        token_types = int(cfg.get("type_vocab_size") or 0)
        # Position and token-type embeddings, the embeddings' LayerNorm, the pooler.
        parameters += (positions + token_types) * hidden + 2 * hidden + hidden * hidden + hidden
    else:
        parameters += hidden + (0 if tied else vocab * hidden)
    return ModelShape(
        parameters=parameters,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
        intermediate=intermediate,
        tied_embeddings=tied or encoder,
        weight_bits=_checkpoint_bits(config),
        encoder_only=encoder,
    )


def _positive(cfg: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"model config has no {' / '.join(keys)}")


def _checkpoint_bits(config: Mapping[str, Any]) -> float:
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "")).lower()
        bits = quant.get("bits") or quant.get("w_bit")
        if method == "bitsandbytes":
            return INT4_BITS if quant.get("load_in_4bit") else FP8_BITS
        if isinstance(bits, int) and bits < 16:
            return bits + (INT4_BITS - 4 if bits < 8 else 0)
        if method in QUANT_BITS:
            return QUANT_BITS[method]
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return 32.0 if dtype in ("float32", "float") else 16.0


def load_config(profile: ModelProfile, model_path: str | None = None) -> dict[str, Any] | None:
    """The model's `config.json`: the profile's `config` (a file in the built-in
    `profiles/configs/`, or a path), else the local model folder's (`model_path`, or the
    profile's model when it is a folder), else one already in the Hugging Face cache (no
    download). None when none is known. A `config` the profile names but that does not exist
    or does not parse is a ProfileError: a typo must not pass for "unknown"."""
    if profile.config:
        path = Path(profile.config)
        if path.name == profile.config:
            builtin = resources.files("llmchat_worker").joinpath("profiles").joinpath("configs")
            if builtin.joinpath(path.name).is_file():
                text = builtin.joinpath(path.name).read_text()
                return _parse_config(text, f"built-in config {profile.config}")
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ProfileError(
                f"profile {profile.alias!r}: config {profile.config} is neither a built-in config "
                "(profiles/configs/) nor a file"
            )
        return _parse_config(path.read_text(), str(path))
    for folder in (model_path, profile.model):
        if folder and (Path(folder) / "config.json").is_file():
            return _parse_config((Path(folder) / "config.json").read_text(), f"{folder}/config.json")
    return _cached_hub_config(profile.model)


def _parse_config(text: str, origin: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{origin} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{origin} is not a JSON object")
    return data


def _cached_hub_config(model: str) -> dict[str, Any] | None:
    if model.count("/") != 1 or model.startswith(("/", ".")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(model, "config.json")
    except ValueError:
        # Not a valid repository id (HFValidationError): nothing of it can be cached.
        return None
    if not isinstance(found, str):
        return None
    return _parse_config(Path(found).read_text(), found)


class Estimate(BaseModel):
    """The verdict, its reason in one sentence with the numbers, and the numbers (per GPU on a
    GPU box; on CPU `available_bytes` is the usable RAM). For `fits_with_changes` the numbers
    are those of the changed setup. `kv_cache_bytes`: one max_model_len sequence's KV cache;
    `max_concurrency`: such sequences the KV room holds (vLLM's "Maximum concurrency")."""

    verdict: Verdict
    reason: str
    # For `fits_with_changes`: the change that makes it fit, e.g. "max_model_len 8192".
    suggestion: str | None = None
    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    activation_bytes: int = 0
    available_bytes: int = 0
    kv_bytes_per_token: int = 0
    max_concurrency: float = 0.0


@dataclass(frozen=True)
class _Setup:
    """One way of running the profile: as configured, or with one of the changes."""

    max_model_len: int
    tp: int
    requires_gpus: int
    int4: bool = False
    cpu_kv_gib: int | None = None


@dataclass(frozen=True)
class _Need:
    fits: bool
    weights: int
    kv_per_token: int
    kv_needed: int
    activations: int
    available: int
    kv_room: int
    text: str


def estimate(profile: ModelProfile, shape: ModelShape | None, hardware: Hardware) -> Estimate:
    """Whether `profile` fits `hardware`, why, and what change would make it fit."""
    if shape is None:
        return Estimate(
            verdict="unknown",
            reason=(
                f"no config.json is known for {profile.model} (the profile names none, and it is not "
                "a local folder nor in the Hugging Face cache), so its memory cannot be estimated"
            ),
        )
    configured = _Setup(
        profile.max_model_len,
        profile.tensor_parallel_size,
        profile.requires_gpus,
        cpu_kv_gib=profile.cpu_kvcache_space_gib,
    )
    if hardware.kind == "cpu" and profile.requires_gpus:
        weights = _weights(profile, shape, configured)
        return Estimate(
            verdict="does_not_fit",
            reason=(
                f"the profile requires {_gpus(profile.requires_gpus)} (tensor_parallel_size "
                f"{profile.tensor_parallel_size}, weights {_gib(weights)} GiB per device); this machine "
                f"runs vLLM's CPU build ({hardware.summary()})"
            ),
            weights_bytes=weights,
        )
    if hardware.kind == "gpu" and not hardware.devices:
        return Estimate(
            verdict="does_not_fit",
            reason=f"no GPU found on this GPU worker ({hardware.summary()}): NVML sees no device",
        )
    need = _assess(profile, shape, hardware, configured)
    if need.fits:
        return _result(profile, "fits", need.text, None, need)
    for setup, change in _changes(profile, shape, hardware, configured):
        changed = _assess(profile, shape, hardware, setup)
        if changed.fits:
            text = f"{need.text}; with {change}: {changed.text}"
            return _result(profile, "fits_with_changes", text, change, changed)
    return _result(profile, "does_not_fit", need.text, None, need)


def _result(profile: ModelProfile, verdict: Verdict, text: str, change: str | None, need: _Need) -> Estimate:
    """The numbers are those of the setup the verdict is about: the changed one for
    `fits_with_changes` (the reason gives both), else the profile as configured."""
    # No KV cache (an encoder): the scheduler's limit is the only one.
    concurrency = round(need.kv_room / need.kv_needed, 2) if need.kv_needed else float(profile.max_num_seqs)
    return Estimate(
        verdict=verdict,
        reason=text,
        suggestion=change,
        weights_bytes=need.weights,
        kv_cache_bytes=need.kv_needed,
        activation_bytes=need.activations,
        available_bytes=need.available,
        kv_bytes_per_token=need.kv_per_token,
        max_concurrency=concurrency,
    )


def _changes(
    profile: ModelProfile, shape: ModelShape, hardware: Hardware, configured: _Setup
) -> Iterator[tuple[_Setup, str]]:
    """Candidate changes in the documented order, each with its wording."""
    on_cpu = hardware.kind == "cpu"
    devices = 1 if on_cpu else len(hardware.devices)
    if on_cpu and configured.tp == 1 and not shape.encoder_only:
        kv_gib = max(1, math.ceil(_kv_per_token(profile, shape, 1) * configured.max_model_len / GIB))
        if kv_gib != configured.cpu_kv_gib:
            yield replace(configured, cpu_kv_gib=kv_gib), f"cpu_kvcache_space_gib {kv_gib}"
    bases: list[tuple[_Setup, list[str]]] = []
    if max(configured.tp, configured.requires_gpus) <= devices:
        bases.append((configured, []))
    # vLLM splits attention heads evenly over the tensor-parallel ranks.
    if devices != configured.tp and shape.heads % devices == 0:
        tp_setup = replace(configured, tp=devices, requires_gpus=min(configured.requires_gpus, devices))
        words = [f"tensor_parallel_size {devices}"]
        if tp_setup.requires_gpus != configured.requires_gpus:
            words.append(f"requires_gpus {tp_setup.requires_gpus}")
        bases.append((tp_setup, words))
    for setup, words in bases:
        if words:
            yield setup, ", ".join(words)
        yield from _shorter(setup, words)
    if shape.weight_bits >= 8 and not profile.quantization:
        for setup, words in bases:
            int4_words = [*words, "a 4-bit quantized checkpoint (AWQ/GPTQ)"]
            yield replace(setup, int4=True), ", ".join(int4_words)
            yield from _shorter(replace(setup, int4=True), int4_words)


def _shorter(setup: _Setup, words: list[str]) -> Iterator[tuple[_Setup, str]]:
    """Powers of two below max_model_len, longest first, down to 2048."""
    length = 1 << ((setup.max_model_len - 1).bit_length() - 1) if setup.max_model_len > 1 else 0
    while length >= MIN_SUGGESTED_LEN:
        yield replace(setup, max_model_len=length), ", ".join([*words, f"max_model_len {length}"])
        length //= 2


def _assess(profile: ModelProfile, shape: ModelShape, hardware: Hardware, setup: _Setup) -> _Need:
    weights = _weights(profile, shape, setup)
    kv_per_token = _kv_per_token(profile, shape, setup.tp)
    kv_needed = kv_per_token * setup.max_model_len
    seq = f"one {setup.max_model_len}-token sequence"
    if hardware.kind == "cpu":
        activations = _activations(profile, shape, setup, gpu=False)
        budget = int(CPU_RAM_FRACTION * hardware.ram_bytes)
        if kv_per_token == 0:
            kv_space = 0
        elif setup.cpu_kv_gib is not None:
            kv_space = setup.cpu_kv_gib * GIB
        else:
            kv_space = max(
                0, int(profile.gpu_memory_utilization * hardware.ram_bytes) - weights - activations
            )
        total = weights + activations + kv_space
        fits = setup.tp == 1 and total <= budget and kv_space >= kv_needed
        kv_text = (
            f" + KV cache space {_gib(kv_space)} GiB (needs {_gib(kv_needed)} GiB for {seq})"
            if kv_per_token
            else ""
        )
        text = (
            f"weights {_gib(weights)} GiB + activations {_gib(activations)} GiB{kv_text} = "
            f"{_gib(total)} GiB {'≤' if total <= budget else '>'} {_gib(budget)} GiB usable "
            f"({CPU_RAM_FRACTION} × {_gib(hardware.ram_bytes)} GiB RAM)"
        )
        if setup.tp != 1:
            text += f", and the CPU build runs tensor_parallel_size 1, not {setup.tp}"
        return _Need(fits, weights, kv_per_token, kv_needed, activations, budget, kv_space, text)
    activations = _activations(profile, shape, setup, gpu=True)
    needed_devices = max(setup.tp, setup.requires_gpus)
    used = hardware.devices[:needed_devices]
    memory = min(d.memory_bytes for d in used)
    available = int(profile.gpu_memory_utilization * memory)
    total = weights + kv_needed + activations
    enough = len(hardware.devices) >= needed_devices
    # Without the devices there is no KV room to speak of.
    kv_room = max(0, available - weights - activations) if enough else 0
    kv_text = f" + KV cache for {seq} {_gib(kv_needed)} GiB" if kv_per_token else ""
    text = (
        f"weights {_gib(weights)} GiB{kv_text} + activations {_gib(activations)} GiB = "
        f"{_gib(total)} GiB per GPU {'≤' if total <= available else '>'} {_gib(available)} GiB "
        f"available ({profile.gpu_memory_utilization:.2f} × {_gib(memory)} GiB)"
    )
    if not enough:
        text += f", but {_gpus(needed_devices)} are needed and {len(hardware.devices)} found"
    return _Need(
        enough and total <= available, weights, kv_per_token, kv_needed, activations, available, kv_room, text
    )


def _weights(profile: ModelProfile, shape: ModelShape, setup: _Setup) -> int:
    dense_bits = _dense_bits(profile)
    if setup.int4:
        quant_bits: float | None = INT4_BITS
    elif shape.weight_bits < 16:
        quant_bits = shape.weight_bits
    else:
        quant_bits = QUANT_BITS.get(profile.quantization or "")
    if quant_bits is None:
        total = shape.parameters * dense_bits / 8
    else:
        embeddings = shape.embedding_parameters
        total = embeddings * 2 + (shape.parameters - embeddings) * quant_bits / 8
    return int(total / setup.tp)


def _dense_bits(profile: ModelProfile) -> float:
    # `auto` is the checkpoint's dtype, but vLLM runs a float32 checkpoint in 16 bits
    # (`_resolve_auto_dtype`): only an explicit float32 profile keeps 32.
    return 32.0 if profile.dtype in ("float32", "float") else 16.0


def _act_bytes(profile: ModelProfile) -> int:
    return 4 if profile.dtype in ("float32", "float") else 2


def _kv_per_token(profile: ModelProfile, shape: ModelShape, tp: int) -> int:
    if shape.encoder_only:
        return 0
    return 2 * shape.layers * math.ceil(shape.kv_heads / tp) * shape.head_dim * _act_bytes(profile)


def _activations(profile: ModelProfile, shape: ModelShape, setup: _Setup, *, gpu: bool) -> int:
    chunked = profile.kind == "chat" and not shape.encoder_only
    tokens = CHUNKED_BATCH_TOKENS if chunked else max(setup.max_model_len, CHUNKED_BATCH_TOKENS)
    tokens = min(tokens, profile.max_num_seqs * setup.max_model_len)
    batch = tokens * (shape.hidden * 4 + shape.intermediate * 2) * _act_bytes(profile)
    logits = profile.max_num_seqs * shape.vocab * 4 if profile.kind == "chat" else 0
    overhead = 0
    if gpu:
        overhead = CUDA_OVERHEAD_EAGER if profile.enforce_eager else CUDA_OVERHEAD
    return batch + logits + overhead


def _gpus(count: int) -> str:
    return f"{count} GPU{'s' if count > 1 else ''}"


def _gib(value: int | float) -> str:
    return f"{value / GIB:.1f}"
