from __future__ import annotations

import pytest

from llmchat_worker.errors import ProfileError
from llmchat_worker.profiles import check_hardware, load_profile


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
