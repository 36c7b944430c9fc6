# The summaries and reasons use the multiplication sign.
# ruff: noqa: RUF001
"""The hardware check: parameter counts from the shipped configs against the published sizes,
the catalog against the reference box (2 x RTX 3090), one 24 GB card and this CPU machine, the
changes it suggests, and device detection through a fake NVML."""

from __future__ import annotations

import json
import sys
import types
from importlib import resources
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from llmchat_worker import hardware
from llmchat_worker.errors import ProfileError
from llmchat_worker.hardware import Device, Hardware, ModelShape, estimate, load_config, shape_from_config
from llmchat_worker.profiles import ModelProfile, load_profile

GIB = 1024**3
RTX_3090 = Device("NVIDIA GeForce RTX 3090", 24 * GIB)
BOX = Hardware("gpu", (RTX_3090, RTX_3090), 64 * GIB)
ONE_CARD = Hardware("gpu", (RTX_3090,), 64 * GIB)
CPU_BOX = Hardware("cpu", (), 24 * GIB)

# What llmchat_worker.tiny_model writes (its vocabulary is what its tokenizer learns from
# corpus.txt) and what the SmolLM2 conversion writes: the models folder's own configs.
TINY_RANDOM = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "dtype": "float32",
    "vocab_size": 859,
}
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "dtype": "float32",
    "vocab_size": 49152,
}
MINILM = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}
BUILT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-random": TINY_RANDOM,
    "smollm2-135m-instruct": SMOLLM2,
    "all-minilm-l6-v2": MINILM,
}

# Published sizes (model cards; Qwen2.5 14B's card says 14.7B).
PUBLISHED = {
    "llama-3.1-8b-instruct": 8.03e9,
    "qwen2.5-7b-instruct": 7.62e9,
    "qwen2.5-14b-instruct-awq": 14.8e9,
    "qwen2.5-32b-instruct-awq": 32.5e9,
    "qwen2.5-0.5b-instruct": 0.49e9,
    "mistral-7b-instruct-v0.3": 7.25e9,
    "gemma-2-9b-it": 9.24e9,
    "phi-3.5-mini-instruct": 3.82e9,
    "exaone-3.5-7.8b-instruct": 7.82e9,
    "solar-10.7b-instruct": 10.7e9,
}


def _catalog() -> list[ModelProfile]:
    folder = resources.files("llmchat_worker").joinpath("profiles")
    aliases = [
        yaml.safe_load(entry.read_text())["alias"]
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    ]
    return [load_profile(alias) for alias in sorted(aliases)]


def _shape(profile: ModelProfile) -> ModelShape:
    config = load_config(profile)
    assert config is not None, profile.alias
    return shape_from_config(config)


def _config(name: str) -> dict[str, Any]:
    text = (
        resources.files("llmchat_worker").joinpath("profiles").joinpath("configs").joinpath(name).read_text()
    )
    return cast(dict[str, Any], json.loads(text))


def test_catalog_loads_and_names_configs_that_exist() -> None:
    catalog = _catalog()
    assert len(catalog) >= 10
    assert {p.alias for p in catalog} >= set(PUBLISHED) | set(BUILT_CONFIGS)
    for profile in catalog:
        assert profile.description, profile.alias
        # Every built-in names its config, so that its verdict is known before its weights are
        # downloaded or built (a fresh models folder has none).
        assert profile.config is not None, profile.alias
        config = load_config(profile)
        assert config is not None and config["architectures"], profile.alias
        assert profile.max_model_len <= config["max_position_embeddings"], profile.alias


@pytest.mark.parametrize("alias", sorted(BUILT_CONFIGS))
def test_shipped_configs_of_built_models_match_what_the_builders_write(alias: str) -> None:
    config = load_config(load_profile(alias))
    assert config is not None
    assert {key: config.get(key) for key in BUILT_CONFIGS[alias]} == BUILT_CONFIGS[alias]


@pytest.mark.parametrize(("alias", "published"), sorted(PUBLISHED.items()))
def test_parameter_count_matches_the_published_size(alias: str, published: float) -> None:
    assert _shape(load_profile(alias)).parameters == pytest.approx(published, rel=0.03)


def test_parameter_count_is_exact_for_the_built_checkpoints() -> None:
    # Tensor sizes summed over the built checkpoints' safetensors (MiniLM's less its
    # 512-entry position_ids buffer, which is no parameter).
    assert shape_from_config(TINY_RANDOM).parameters == 548_224
    assert shape_from_config(SMOLLM2).parameters == 134_515_008
    assert shape_from_config(MINILM).parameters == 22_713_216


def test_shape_reads_each_architecture() -> None:
    gemma = shape_from_config(_config("gemma-2-9b-it.json"))
    assert (gemma.head_dim, gemma.kv_heads, gemma.tied_embeddings) == (256, 8, True)
    exaone = shape_from_config(_config("exaone-3.5-7.8b-instruct.json"))
    assert (exaone.layers, exaone.kv_heads, exaone.tied_embeddings) == (32, 8, False)
    phi = shape_from_config(_config("phi-3.5-mini-instruct.json"))
    assert (phi.head_dim, phi.kv_heads) == (96, 32)
    awq = shape_from_config(_config("qwen2.5-14b-instruct-awq.json"))
    assert awq.weight_bits == pytest.approx(4.25)
    assert shape_from_config(SMOLLM2).weight_bits == 32
    assert shape_from_config(MINILM).encoder_only
    with pytest.raises(ValueError, match="hidden_size"):
        shape_from_config({"model_type": "llama"})


def test_every_catalog_profile_fits_the_reference_box() -> None:
    for profile in _catalog():
        result = estimate(profile, _shape(profile), BOX)
        assert result.verdict == "fits", (profile.alias, result.reason)
        assert result.suggestion is None
        used = result.weights_bytes + result.kv_cache_bytes + result.activation_bytes
        assert used <= result.available_bytes, profile.alias
        if profile.kind == "chat":
            assert result.max_concurrency >= 1, profile.alias


def test_reference_llama_numbers() -> None:
    result = estimate(
        load_profile("llama-3.1-8b-instruct"), _shape(load_profile("llama-3.1-8b-instruct")), BOX
    )
    # 2 (K, V) x 32 layers x 4 of the 8 KV heads per GPU x 128 x 2 bytes.
    assert result.kv_bytes_per_token == 65_536
    assert result.kv_cache_bytes == 65_536 * 16384
    assert result.weights_bytes == pytest.approx(8.03e9, rel=0.01)  # 16 GB of bf16 over 2 GPUs
    assert result.available_bytes == int(0.9 * 24 * GIB)
    room = result.available_bytes - result.weights_bytes - result.activation_bytes
    assert result.max_concurrency == pytest.approx(room / result.kv_cache_bytes, abs=0.01)
    assert "16384-token" in result.reason and "21.6 GiB available (0.90 × 24.0 GiB)" in result.reason


def test_gemma_kv_cache_uses_its_256_head_dim() -> None:
    profile = load_profile("gemma-2-9b-it")
    result = estimate(profile, _shape(profile), BOX)
    assert result.kv_bytes_per_token == 2 * 42 * 4 * 256 * 2


def test_tp2_llama_on_one_card_fits_with_tensor_parallel_1() -> None:
    profile = load_profile("llama-3.1-8b-instruct")
    result = estimate(profile, _shape(profile), ONE_CARD)
    assert result.verdict == "fits_with_changes", result.reason
    assert result.suggestion is not None and "tensor_parallel_size 1" in result.suggestion
    assert "2 GPUs are needed and 1 found" in result.reason
    # The numbers are those of the change: all weights on the one card.
    assert result.weights_bytes == pytest.approx(16.06e9, rel=0.01)


def test_one_card_needs_a_shorter_context_for_llama_at_128k() -> None:
    profile = load_profile("llama-3.1-8b-instruct").model_copy(
        update={"tensor_parallel_size": 1, "requires_gpus": 1, "max_model_len": 131072}
    )
    result = estimate(profile, _shape(profile), ONE_CARD)
    # 16 GiB of KV cache for 128k tokens beside 15 GiB of weights: 32k is the longest that fits.
    assert (result.verdict, result.suggestion) == ("fits_with_changes", "max_model_len 32768")


def test_more_devices_are_suggested_before_quantization() -> None:
    profile = load_profile("solar-10.7b-instruct").model_copy(
        update={"tensor_parallel_size": 1, "requires_gpus": 1, "gpu_memory_utilization": 0.85}
    )
    # 20 GiB of fp16 weights leave no room in 0.85 x 24 GiB even at 2048 tokens.
    result = estimate(profile, _shape(profile), BOX)
    assert (result.verdict, result.suggestion) == ("fits_with_changes", "tensor_parallel_size 2")
    assert result.weights_bytes == pytest.approx(10.73e9, rel=0.01)


def test_a_4bit_checkpoint_is_the_last_resort() -> None:
    config = _config("qwen2.5-32b-instruct-awq.json")
    del config["quantization_config"]
    config["torch_dtype"] = "bfloat16"
    profile = load_profile("qwen2.5-32b-instruct-awq").model_copy(
        update={"quantization": None, "dtype": "bfloat16", "max_model_len": 4096}
    )
    shape = shape_from_config(config)
    result = estimate(profile, shape, BOX)
    assert (result.verdict, result.suggestion) == (
        "fits_with_changes",
        "a 4-bit quantized checkpoint (AWQ/GPTQ)",
    )
    small = Hardware("gpu", (Device("NVIDIA GeForce RTX 3060 Ti", 8 * GIB),), 32 * GIB)
    result = estimate(profile, shape, small)
    assert result.verdict == "does_not_fit" and result.suggestion is None
    assert "> 7.2 GiB available" in result.reason


def test_gpu_profiles_do_not_fit_this_cpu_machine() -> None:
    gpu_profiles = [p for p in _catalog() if p.requires_gpus]
    assert len(gpu_profiles) >= 8
    for profile in gpu_profiles:
        result = estimate(profile, _shape(profile), CPU_BOX)
        assert result.verdict == "does_not_fit", profile.alias
        assert f"requires {profile.requires_gpus} GPU" in result.reason


@pytest.mark.parametrize(
    "alias", ["tiny-random", "smollm2-135m-instruct", "all-minilm-l6-v2", "qwen2.5-0.5b-instruct"]
)
def test_cpu_profiles_fit_this_cpu_machine(alias: str) -> None:
    profile = load_profile(alias)
    result = estimate(profile, _shape(profile), CPU_BOX)
    assert result.verdict == "fits", result.reason
    assert result.available_bytes == int(0.8 * 24 * GIB)


def test_cpu_kv_space_too_small_for_one_sequence() -> None:
    # float32 KV: 2 x 30 layers x 3 heads x 64 x 4 bytes = 45 KiB per token; 64k tokens: 2.8 GiB.
    profile = load_profile("smollm2-135m-instruct").model_copy(update={"max_model_len": 65536})
    result = estimate(profile, _shape(profile), CPU_BOX)
    assert (result.verdict, result.suggestion) == ("fits_with_changes", "cpu_kvcache_space_gib 3")
    assert result.kv_bytes_per_token == 46_080


def test_cpu_build_runs_tensor_parallel_1() -> None:
    profile = load_profile("qwen2.5-0.5b-instruct").model_copy(update={"tensor_parallel_size": 2})
    result = estimate(profile, _shape(profile), CPU_BOX)
    assert (result.verdict, result.suggestion) == ("fits_with_changes", "tensor_parallel_size 1")


def test_no_config_is_unknown() -> None:
    result = estimate(load_profile("some-org/some-model"), None, BOX)
    assert result.verdict == "unknown" and "no config.json" in result.reason


def test_no_gpu_on_a_gpu_worker() -> None:
    profile = load_profile("qwen2.5-7b-instruct")
    result = estimate(profile, _shape(profile), Hardware("gpu", (), 64 * GIB))
    assert result.verdict == "does_not_fit" and "no GPU" in result.reason


def test_load_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2))
    assert load_config(ModelProfile(alias="x", model="builtin:x"), str(folder)) == SMOLLM2
    assert load_config(load_profile(str(folder))) == SMOLLM2
    assert load_config(ModelProfile(alias="x", model="x", config=str(folder / "config.json"))) == SMOLLM2
    # A hub model already downloaded is read from the cache, never fetched.
    assert load_config(load_profile("some-org/some-model")) is None
    snapshot = tmp_path / "hub" / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_RANDOM))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    assert load_config(load_profile("some-org/some-model")) == TINY_RANDOM
    with pytest.raises(ProfileError, match=r"nope\.json"):
        load_config(ModelProfile(alias="x", model="x", config="nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_config(ModelProfile(alias="x", model="x", config=str(tmp_path / "bad.json")))


def test_hardware_summary_and_json() -> None:
    assert BOX.summary() == "2 × NVIDIA GeForce RTX 3090 (24.0 GiB)"
    assert CPU_BOX.summary() == "CPU, 24.0 GiB RAM"
    mixed = Hardware("gpu", (RTX_3090, Device("NVIDIA RTX A4000", 16 * GIB)), 64 * GIB)
    assert mixed.summary() == "1 × NVIDIA GeForce RTX 3090 (24.0 GiB) + 1 × NVIDIA RTX A4000 (16.0 GiB)"
    for machine in (BOX, CPU_BOX, mixed):
        assert Hardware.from_json(json.loads(json.dumps(machine.to_json()))) == machine
    with pytest.raises(ValueError, match="kind"):
        Hardware.from_json({"kind": "tpu", "devices": [], "ram_bytes": 1})


class _NvmlError(Exception):
    pass


def _fake_nvml(devices: list[tuple[bytes, int]], *, init_fails: bool = False) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_fails:
            raise _NvmlError("NVML Shared Library Not Found")

    def memory(handle: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(total=devices[handle][1], free=0, used=0)

    attrs: dict[str, Any] = {
        "NVMLError": _NvmlError,
        "nvmlInit": init,
        "nvmlShutdown": lambda: calls.append("shutdown"),
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda index: index,
        "nvmlDeviceGetName": lambda handle: devices[handle][0],
        "nvmlDeviceGetUUID": lambda handle: f"GPU-{handle}aaa",
        "nvmlDeviceGetMemoryInfo": memory,
        "calls": calls,
    }
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def test_detect_reads_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml([(b"NVIDIA GeForce RTX 3090", 24 * GIB), (b"NVIDIA GeForce RTX 3090", 24 * GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = hardware.detect(is_cpu=False)
    assert found.kind == "gpu" and found.devices == (RTX_3090, RTX_3090) and found.ram_bytes > 0
    assert found.summary() == "2 × NVIDIA GeForce RTX 3090 (24.0 GiB)"
    assert fake.calls == ["init", "shutdown"]
    # vLLM sees only the visible devices.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert hardware.detect(is_cpu=False).devices == (RTX_3090,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-0")
    assert hardware.detect(is_cpu=False).devices == (RTX_3090,)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware.detect(is_cpu=False).devices == ()


def test_detect_without_nvml_sees_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([], init_fails=True))
    assert hardware.detect(is_cpu=False) == Hardware("gpu", (), hardware.detect(is_cpu=True).ram_bytes)
    # The binding not installed at all: importing it fails.
    monkeypatch.setitem(cast(dict[str, Any], sys.modules), "pynvml", None)
    assert hardware.detect(is_cpu=False).devices == ()


def test_detect_on_cpu_reads_ram() -> None:
    found = hardware.detect(is_cpu=True)
    assert found.kind == "cpu" and found.devices == ()
    assert 1 * GIB < found.ram_bytes < 1 << 50
    assert found.summary().startswith("CPU, ")
