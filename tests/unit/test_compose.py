"""docker-compose.yml and the override `make compose-smoke` adds (infra/compose/smoke.yml),
checked offline: both against the compose-spec JSON schema (the copy check-jsonschema vendors),
and the override changes only what it says it changes. The stack itself is started by `make
compose-smoke` (opt-in: its first run builds images for several minutes)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SMOKE = REPO / "infra" / "compose" / "smoke.yml"
# What the smoke override may set: its images, and host networking on loopback (the servers'
# bind addresses in `command`, the services' in `environment`).
SMOKE_KEYS = {"image", "network_mode", "extra_hosts", "command", "environment"}


def validator() -> jsonschema.protocols.Validator:
    """A validator of the draft the schema names (2020-12 today)."""
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("path", [COMPOSE, SMOKE], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_spec(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)
    ]
    assert not errors, f"{path.name}:\n" + "\n".join(errors)


def test_a_wrong_compose_file_fails_the_schema() -> None:
    """The check can fail: a misspelt key and a wrong type are both caught."""
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["chat"]["restart_policy"] = "always"
    document["services"]["nats"]["volumes"] = "nats-data:/data"  # a list, not a string
    errors = list(validator().iter_errors(document))
    assert len(errors) >= 2


def test_the_smoke_override_changes_images_and_networking_only() -> None:
    base = yaml.safe_load(COMPOSE.read_text())["services"]
    smoke = yaml.safe_load(SMOKE.read_text())["services"]
    assert set(smoke) <= set(base)
    for name, service in smoke.items():
        assert set(service) <= SMOKE_KEYS, f"{name}: {set(service) - SMOKE_KEYS}"
        assert service["image"].startswith("localhost/"), name
        assert service["network_mode"] == "host", name
    # Every service the smoke starts runs a locally built image, the CPU worker included.
    assert {"nats", "postgres", "redis", "chat", "auth", "history", "metrics", "inference-worker-cpu"} <= set(
        smoke
    )
    assert "inference-worker" not in smoke  # the GPU worker is not started


def test_the_cpu_worker_is_the_gpu_worker_on_the_cpu_build() -> None:
    """Same NATS user, settings and signals as the GPU worker; only the build's extra, the model
    and the GPU reservation differ; and it starts only with its profile."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    gpu, cpu = services["inference-worker"], services["inference-worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "profiles" not in gpu
    assert cpu["build"]["args"] == {"WORKER_EXTRA": "cpu"}
    assert cpu["build"]["dockerfile"] == gpu["build"]["dockerfile"]
    assert "deploy" not in cpu
    same = {k: v for k, v in gpu["environment"].items() if k not in {"LLMCHAT_WORKER_MODEL", "HF_TOKEN"}}
    assert {k: cpu["environment"].get(k) for k in same} == same
    for key in ("init", "stop_grace_period", "depends_on", "restart"):
        assert cpu[key] == gpu[key], key
