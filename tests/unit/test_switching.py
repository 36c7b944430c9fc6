"""The worker's switch logic with fake engines (the real path: tests/e2e/test_model_switch.py):
what is refused before anything is unloaded, the order of the steps, and the rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmchat_common.contracts import SwitchModel
from llmchat_worker.hardware import Hardware
from llmchat_worker.profiles import ModelProfile, catalog, load_profile
from llmchat_worker.settings import WorkerSettings
from llmchat_worker.switching import ModelHost, weights_missing


class FakeEngine:
    def __init__(self, profile: ModelProfile, log: list[str], fail: bool) -> None:
        self.profile = profile
        self.model_path = f"/models/{profile.alias}"
        self._log = log
        self._fail = fail

    def start(self) -> None:
        self._log.append(f"start {self.profile.alias}")
        if self._fail:
            raise RuntimeError("Cannot find any model weights")

    async def probe(self) -> None:
        pass

    def shutdown(self) -> None:
        self._log.append(f"shutdown {self.profile.alias}")


class FakeConsumer:
    def __init__(self, log: list[str]) -> None:
        self._log = log
        self.state = "ready"
        self.switch: Any = None

    async def heartbeat(self) -> None:
        self._log.append(f"heartbeat {self.state}")

    async def drain(self, **kwargs: Any) -> None:
        self._log.append(f"drain {kwargs['reason']} leave_registry={kwargs['leave_registry']}")


def make_host(tmp_path: Path, log: list[str], failing: set[str]) -> ModelHost:
    settings = WorkerSettings(models_dir=tmp_path, profiles_dir=tmp_path / "profiles", worker_id="w1")

    def factory(_: WorkerSettings, profile: ModelProfile) -> Any:
        return FakeEngine(profile, log, profile.alias in failing)

    host = ModelHost(
        settings,
        broker=None,  # type: ignore[arg-type]
        profile=load_profile("tiny-random"),
        make_engine=factory,
        on_fatal=lambda: log.append("fatal"),
    )
    host.engine = factory(settings, host.profile)
    host.consumer = FakeConsumer(log)  # type: ignore[assignment]
    host.hardware = Hardware("cpu", (), 24 * 2**30)
    host._state = "ready"

    async def serve(engine: Any) -> None:
        log.append(f"serve {host.profile.alias}")
        host.consumer = FakeConsumer(log)  # type: ignore[assignment]
        host._state = "ready"

    async def audit(outcome: str, source: str, target: str, error: str | None) -> None:
        log.append(f"audit {outcome} {source}->{target}")

    host._serve = serve  # type: ignore[method-assign]
    host._audit = audit  # type: ignore[method-assign]
    return host


def command(profile: str) -> SwitchModel:
    return SwitchModel(profile=profile, requested_by="admin-1", switch_id="switch-1")


async def test_refused_before_anything_is_unloaded(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, set())
    cases = {
        "no-such-profile": "profile_not_found",
        "tiny-random": "same_profile",
        # Two GPUs on a CPU worker.
        "llama-3.1-8b-instruct": "does_not_fit",
    }
    for profile, code in cases.items():
        reply = await host.request_switch(command(profile))
        assert not reply.accepted and reply.code == code, reply
        assert reply.message
    assert "GiB" in (await host.request_switch(command("llama-3.1-8b-instruct"))).message
    assert log == [] and host.profile.alias == "tiny-random"


async def test_steps_in_order_then_ready(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, set())
    reply = await host.request_switch(command("smollm2-135m-instruct"))
    assert reply.accepted and reply.source == "tiny-random" and reply.target == "smollm2-135m-instruct"
    busy = await host.request_switch(command("tiny-random"))
    assert not busy.accepted and busy.code == "switch_in_progress"
    assert host._switch_task is not None
    await host._switch_task
    assert log == [
        "heartbeat draining",
        "drain model switch leave_registry=False",
        "shutdown tiny-random",
        "start smollm2-135m-instruct",
        "serve smollm2-135m-instruct",
        "audit completed tiny-random->smollm2-135m-instruct",
    ]
    assert host.profile.alias == "smollm2-135m-instruct"
    assert host.status is not None and host.status.step == "ready" and host.status.requested_by == "admin-1"


async def test_a_failed_load_rolls_back(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, {"smollm2-135m-instruct"})
    assert (await host.request_switch(command("smollm2-135m-instruct"))).accepted
    assert host._switch_task is not None
    await host._switch_task
    assert log[-4:] == [
        "shutdown smollm2-135m-instruct",
        "start tiny-random",
        "serve tiny-random",
        "audit rolled_back tiny-random->smollm2-135m-instruct",
    ]
    assert host.profile.alias == "tiny-random"
    status = host.status
    assert status is not None and status.step == "rolled_back"
    assert status.error is not None and "Cannot find any model weights" in status.error


async def test_a_failed_rollback_ends_the_worker(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, {"smollm2-135m-instruct", "tiny-random"})
    assert (await host.request_switch(command("smollm2-135m-instruct"))).accepted
    assert host._switch_task is not None
    await host._switch_task
    assert log[-2:] == ["audit failed tiny-random->smollm2-135m-instruct", "fatal"]
    assert host.status is not None and host.status.step == "failed"


def test_missing_weights_are_named(tmp_path: Path) -> None:
    absent = ModelProfile(alias="x", model=str(tmp_path / "nope"))
    message = weights_missing(absent)
    assert message is not None and str(tmp_path / "nope") in message
    assert weights_missing(ModelProfile(alias="y", model=str(tmp_path))) is None
    assert weights_missing(ModelProfile(alias="z", model="Qwen/Qwen2.5-7B-Instruct")) is None
    assert weights_missing(load_profile("tiny-random")) is None


def test_operator_profiles_join_the_catalog(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "mine.yaml").write_text("alias: mine\nmodel: /models/mine\n")
    (folder / "tiny.yaml").write_text("alias: tiny-random\nmodel: builtin:tiny-random\nmax_model_len: 1024\n")
    (folder / "bad.yaml").write_text("alias: [oops\n")
    found = catalog(folder)
    assert found["mine"][1] == "operator"
    assert found["tiny-random"][0].max_model_len == 1024 and found["tiny-random"][1] == "operator"
    assert found["smollm2-135m-instruct"][1] == "builtin"
    assert "operator profile skipped" in caplog.text
    assert load_profile("mine", folder=folder).model == "/models/mine"


def test_catalog_marks_the_chatml_fallback(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, set())
    bare = tmp_path / "bare-model"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text("{}")
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bare.yaml").write_text(f"alias: bare\nmodel: {bare}\n")
    listed = {p.alias: p for p in host._catalog().profiles}
    assert listed["bare"].chat_template_fallback and listed["bare"].chat_template == "chatml (fallback)"
    assert listed["bare"].verdicts[0].verdict == "unknown"
    assert listed["qwen2.5-7b-instruct"].chat_template == "model"
    assert listed["qwen2.5-7b-instruct"].verdicts[0].verdict == "does_not_fit"


async def test_a_failed_drain_serves_the_old_engine_again(tmp_path: Path) -> None:
    log: list[str] = []
    host = make_host(tmp_path, log, set())

    async def broken_drain(**kwargs: Any) -> None:
        raise RuntimeError("broker gone")

    assert host.consumer is not None
    host.consumer.drain = broken_drain  # type: ignore[method-assign]
    assert (await host.request_switch(command("smollm2-135m-instruct"))).accepted
    assert host._switch_task is not None
    await host._switch_task
    # No second engine started: the old one serves again.
    assert not [line for line in log if line.startswith(("start", "shutdown"))], log
    assert log[-2:] == ["serve tiny-random", "audit rolled_back tiny-random->smollm2-135m-instruct"]
    assert host.status is not None and host.status.step == "rolled_back"
