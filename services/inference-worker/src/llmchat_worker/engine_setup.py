"""What starting vLLM's AsyncLLM takes, the same for the chat engine (`engine.VllmEngine`) and the
embedding engine (`embedding_engine.EmbeddingEngine`): the hardware check, the process
environment, and the engine arguments a profile gives. vLLM is imported inside the functions:
importing it is slow and must not happen at module import.
"""

from __future__ import annotations

import os
from typing import Any

from llmchat_common.telemetry import traces_endpoint
from llmchat_worker.profiles import ModelProfile, check_hardware


def prepare(profile: ModelProfile) -> str | None:
    """Checks the machine can run `profile` and sets vLLM's environment; the OTLP traces
    endpoint the engine should report its request spans to (None: engine tracing off)."""
    from vllm.platforms import current_platform

    is_cpu = current_platform.is_cpu()
    gpu_count = 0
    if not is_cpu:
        import torch

        gpu_count = torch.cuda.device_count()
    check_hardware(profile, is_cpu=is_cpu, gpu_count=gpu_count)
    if is_cpu and profile.cpu_kvcache_space_gib:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(profile.cpu_kvcache_space_gib))
    # The engine's internal sockets must stay on loopback.
    os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

    # vLLM's engine tracing: it emits an `llm_request` span per finished request, child of
    # the trace headers it is given. Its exporter speaks gRPC unless told otherwise; ours is
    # OTLP/HTTP. Its spans go through the process's tracer provider (ours: the same
    # service name and exporter); the engine-core process builds its own from the same
    # environment.
    endpoint = traces_endpoint()
    if endpoint:
        os.environ.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    return endpoint


def engine_args(profile: ModelProfile, model_path: str, traces_endpoint: str | None, **extra: Any) -> Any:
    """vLLM's `AsyncEngineArgs` for `profile`'s model at `model_path`; `extra`: what only one
    kind of engine sets (the runner, the scheduling policy)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model_path,
        served_model_name=[profile.alias],
        dtype=profile.dtype,  # type: ignore[arg-type]
        max_model_len=profile.max_model_len,
        tensor_parallel_size=profile.tensor_parallel_size,
        gpu_memory_utilization=profile.gpu_memory_utilization,
        quantization=profile.quantization,
        max_num_seqs=profile.max_num_seqs,
        enforce_eager=profile.enforce_eager,
        seed=profile.seed,
        otlp_traces_endpoint=traces_endpoint,
        # Stats stay on: they feed the vllm:* Prometheus metrics, and the request spans
        # are built from them.
        disable_log_stats=False,
        # Progress bars are not log lines.
        use_tqdm_on_load=False,
        **extra,
    )
