"""A worker's model, and switching it at runtime (the admin's command, over NATS).

The worker holds one engine at a time. A switch is refused at once, before anything is unloaded,
when the profile is unknown, when the hardware check says it does not fit, or when another
switch is under way. Accepted, it goes, in order:

1. draining: the worker stops pulling the old model's requests; running ones finish within
   `switch_drain_s`, past it they are released (their stored tokens stay on the log) and
   continue on another worker of that model through the ordinary continuation;
2. unloading: the engine shuts down (its processes and memory go);
3. checking: the hardware check again, now with the memory free;
4. loading: the new profile's engine starts (in a thread: the event loop keeps answering the
   registry, cancels and the admin meanwhile);
5. ready: the worker registers under the new model and pulls its requests.

A load that fails rolls back to the previous profile (`rolled_back`); if that fails too the
worker is `failed` and exits, as an engine death does, for its supervisor to restart it. Every
step is written to the worker's registry entry (`WorkerInfo.state`, `.switch`) at once and at
each heartbeat; the outcome goes on the audit stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from faststream.nats import NatsBroker
from nats.js.kv import KeyValue

from llmchat_common import subjects
from llmchat_common.contracts import (
    AuditEvent,
    CatalogProfile,
    CatalogReply,
    CatalogVerdict,
    HardwareInfo,
    SwitchModel,
    SwitchReply,
    SwitchStatus,
    SwitchStep,
    WorkerInfo,
    WorkerStateName,
)
from llmchat_common.messaging import jetstream, publish_audit, registry_kv
from llmchat_common.rpc import Operation, no_args, serve_operations
from llmchat_worker import hardware
from llmchat_worker.errors import ProfileError
from llmchat_worker.handlers import VERSION, RequestConsumer, capabilities
from llmchat_worker.profiles import ModelProfile, catalog, template_label
from llmchat_worker.service import ServingEngine
from llmchat_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

EngineFactory = Callable[[WorkerSettings, ModelProfile], ServingEngine]

# The loading step's progress: vLLM reports no finer phases than started / weights / ready.
_LOAD_PROGRESS = {"unloading": 0.1, "checking": 0.2, "loading": 0.3}


class ModelHost:
    """The worker's current profile, engine and consumer, and the switches between profiles."""

    def __init__(
        self,
        settings: WorkerSettings,
        broker: NatsBroker,
        profile: ModelProfile,
        make_engine: EngineFactory,
        on_fatal: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.profile = profile
        self._make_engine = make_engine
        self._on_fatal = on_fatal
        self.engine: ServingEngine | None = None
        self.consumer: RequestConsumer | None = None
        self.hardware: hardware.Hardware | None = None
        self.status: SwitchStatus | None = None
        self._registry: KeyValue | None = None
        self._switch_task: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._state: WorkerStateName = "loading"

    # -- start and stop ------------------------------------------------------------------
    async def load(self) -> None:
        """The first engine, before the broker connects (a failure here ends the process:
        there is nothing to go back to)."""
        engine = self._make_engine(self.settings, self.profile)
        self.engine = engine
        engine.start()
        await engine.probe()
        self.hardware = hardware.detect(is_cpu=_is_cpu(engine))

    async def start(self) -> None:
        """Serve the loaded engine's model (the broker is connected)."""
        assert self.engine is not None
        self._registry = await registry_kv(jetstream(self.broker), self.settings.nats.replicas)
        await self._serve(self.engine)

    async def _serve(self, engine: ServingEngine) -> None:
        consumer = RequestConsumer(self.settings, engine, self.broker, self.profile.alias, self._on_fatal)
        consumer.hardware = self._hardware_info()
        consumer.switch = self.status
        await consumer.start()
        self.consumer = consumer
        self._state = "ready"
        log.info("worker ready", extra={"model": self.profile.alias, "capacity": consumer.capacity})

    async def stop(self) -> None:
        """SIGTERM: a switch under way is abandoned; the consumer drains as always."""
        if self._switch_task is not None and not self._switch_task.done():
            self._switch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._switch_task
        await self._stop_beat()
        if self.consumer is not None:
            await self.consumer.drain()
            log.info("drained")
        elif self._registry is not None:
            # Stopped mid-switch: the entry that showed the switch goes with the worker.
            with contextlib.suppress(Exception):
                await self._registry.delete(
                    subjects.registry_key(self.profile.alias, self.settings.worker_id)
                )
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def register(self) -> None:
        """The admin's operations on this worker: `switch` and `catalog` (request-reply)."""
        worker_id = self.settings.worker_id
        operations = {
            "switch": Operation(SwitchModel, self.request_switch),
            "catalog": no_args(self.catalog),
        }
        serve_operations(
            self.broker,
            operations,
            service="worker",
            subject=lambda op: subjects.worker_control(worker_id, op),
            queue=f"control-{worker_id}",
            max_workers=4,
            unavailable="the worker could not answer",
        )

    # -- the catalog ---------------------------------------------------------------------
    async def catalog(self) -> CatalogReply:
        """Every profile this worker may load, with the hardware check against its devices."""
        return await asyncio.to_thread(self._catalog)

    def _catalog(self) -> CatalogReply:
        found = []
        for alias, (profile, source) in sorted(catalog(self.settings.profiles_dir).items()):
            local = self._local_path(profile)
            shape = self._shape(profile, local)
            template, fallback = template_label(profile, local)
            found.append(
                CatalogProfile(
                    alias=alias,
                    model=profile.model,
                    kind=profile.kind,
                    source=source,
                    description=profile.description,
                    dtype=profile.dtype,
                    quantization=profile.quantization,
                    tensor_parallel_size=profile.tensor_parallel_size,
                    max_model_len=profile.max_model_len,
                    max_num_seqs=profile.max_num_seqs,
                    tool_call_parser=profile.tool_call_parser,
                    chat_template=template,
                    chat_template_fallback=fallback,
                    parameters=None if shape is None else shape.parameters,
                    verdicts=[self._verdict(profile, shape)],
                )
            )
        return CatalogReply(profiles=found)

    def _local_path(self, profile: ModelProfile) -> str | None:
        """The model's folder when it is on this machine (built-in models once built)."""
        if profile.model.startswith("builtin:"):
            folder = self.settings.models_dir / profile.model.removeprefix("builtin:")
            return str(folder) if folder.is_dir() else None
        return profile.model if Path(profile.model).is_dir() else None

    def _verdict(self, profile: ModelProfile, shape: hardware.ModelShape | None) -> CatalogVerdict:
        machine = self.hardware or hardware.Hardware("cpu", (), 0)
        result = hardware.estimate(profile, shape, machine)
        return CatalogVerdict(
            worker_id=self.settings.worker_id,
            hardware=machine.summary(),
            verdict=result.verdict,
            reason=result.reason,
            suggestion=result.suggestion,
            weights_bytes=result.weights_bytes,
            kv_cache_bytes=result.kv_cache_bytes,
            activation_bytes=result.activation_bytes,
            available_bytes=result.available_bytes,
        )

    def check(self, profile: ModelProfile) -> hardware.Estimate:
        shape = self._shape(profile, self._local_path(profile))
        return hardware.estimate(profile, shape, self.hardware or hardware.Hardware("cpu", (), 0))

    def _shape(self, profile: ModelProfile, local: str | None) -> hardware.ModelShape | None:
        """The model's shape from its config.json; None (the verdict says unknown) when there
        is none to read or it does not parse."""
        try:
            config = hardware.load_config(profile, local)
            return hardware.shape_from_config(config) if config else None
        except Exception as exc:  # noqa: BLE001
            log.warning("model config unreadable", extra={"model": profile.alias, "error": repr(exc)})
            return None

    # -- switching -----------------------------------------------------------------------
    async def request_switch(self, command: SwitchModel) -> SwitchReply:
        """Accept (and start) a switch, or say why not before anything is unloaded."""
        source = self.profile.alias
        if self._switch_task is not None and not self._switch_task.done():
            busy = "a model switch is already under way on this worker"
            return self._refuse("switch_in_progress", busy, source)
        try:
            target = load_profile_strict(command.profile, self.settings.profiles_dir)
        except ProfileError as exc:
            return self._refuse("profile_not_found", str(exc), source, command.profile)
        if target.alias == source:
            return self._refuse("same_profile", f"the worker already serves {source!r}", source, target.alias)
        if (missing := weights_missing(target)) is not None:
            return self._refuse("weights_not_found", missing, source, target.alias)
        if self.consumer is None or self._state != "ready":
            return self._refuse("worker_not_ready", "the worker is not serving a model right now", source)
        verdict = await asyncio.to_thread(self.check, target)
        if verdict.verdict == "does_not_fit":
            return self._refuse("does_not_fit", verdict.reason, source, target.alias)
        now = time.time()
        self.status = SwitchStatus(
            switch_id=command.switch_id,
            source=source,
            target=target.alias,
            step="draining",
            message=f"{verdict.verdict}: {verdict.reason}",
            requested_by=command.requested_by,
            started_at=now,
            updated_at=now,
        )
        self._switch_task = asyncio.create_task(self._switch(target), name="model-switch")
        log.info(
            "model switch accepted", extra={"from": source, "to": target.alias, "by": command.requested_by}
        )
        return SwitchReply(accepted=True, source=source, target=target.alias, message=self.status.message)

    def _refuse(self, code: str, message: str, source: str, target: str = "") -> SwitchReply:
        log.info("model switch refused", extra={"code": code, "from": source, "to": target})
        return SwitchReply(accepted=False, code=code, message=message, source=source, target=target)

    async def _switch(self, target: ModelProfile) -> None:
        source = self.profile
        try:
            await self._drain()
            await self._step("unloading", "the engine is shutting down")
            await self._unload()
            await self._step("checking", "checking the hardware with the memory free")
            verdict = await asyncio.to_thread(self.check, target)
            if verdict.verdict == "does_not_fit":
                raise ProfileError(f"does not fit: {verdict.reason}")
            await self._step("loading", f"loading {target.alias}")
            engine = await self._load(target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure: back to the old profile
            error = _describe(exc)
            log.error("model switch failed; rolling back", extra={"to": target.alias, "error": error})
            await self._step("loading", f"rolling back to {source.alias}", error=error)
            try:
                # Failed before the old engine was unloaded (the drain): it serves again as is.
                engine = self.engine if self.engine is not None else await self._load(source)
            except Exception as again:  # noqa: BLE001
                failed = f"the rollback to {source.alias} failed too"
                await self._step("failed", failed, error=_describe(again))
                await self._audit("failed", source.alias, target.alias, error)
                await self._stop_beat()
                self._on_fatal()
                return
            await self._finish(engine, source, "rolled_back", f"rolled back to {source.alias}", error)
            await self._audit("rolled_back", source.alias, target.alias, error)
            return
        await self._finish(engine, target, "ready", f"serving {target.alias}", None)
        await self._audit("completed", source.alias, target.alias, None)

    async def _drain(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        self._state = "draining"
        consumer.state = "draining"
        consumer.switch = self.status
        with contextlib.suppress(Exception):
            await consumer.heartbeat()
        await consumer.drain(
            timeout_s=self.settings.switch_drain_s, reason="model switch", leave_registry=False
        )
        self.consumer = None
        # From here the consumer's heartbeat is gone: the host writes the entry.
        self._beat_task = asyncio.create_task(self._beat_loop(), name="switch-heartbeat")

    async def _unload(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)

    async def _load(self, profile: ModelProfile) -> ServingEngine:
        engine = self._make_engine(self.settings, profile)
        try:
            await asyncio.to_thread(engine.start)
            await engine.probe()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(engine.shutdown)
            raise
        return engine

    async def _finish(
        self, engine: ServingEngine, profile: ModelProfile, step: SwitchStep, message: str, error: str | None
    ) -> None:
        old_key = subjects.registry_key(self.profile.alias, self.settings.worker_id)
        self.engine = engine
        await self._set_status(step, message, error=error, progress=1.0)
        await self._stop_beat()
        self.profile = profile
        await self._serve(engine)
        moved = old_key != subjects.registry_key(profile.alias, self.settings.worker_id)
        if moved and self._registry is not None:
            with contextlib.suppress(Exception):
                await self._registry.delete(old_key)
        log.info("model switch ended", extra={"step": step, "model": profile.alias})

    # -- status --------------------------------------------------------------------------
    async def _step(self, state: WorkerStateName, message: str, *, error: str | None = None) -> None:
        self._state = state
        await self._set_status(state, message, error=error, progress=_LOAD_PROGRESS.get(state))

    async def _set_status(
        self, step: SwitchStep, message: str, *, error: str | None = None, progress: float | None = None
    ) -> None:
        assert self.status is not None
        self.status = self.status.model_copy(
            update={
                "step": step,
                "message": message,
                "error": error or self.status.error,
                "progress": progress,
                "updated_at": time.time(),
            }
        )
        log.info("model switch step", extra={"step": step, "switch_message": message})
        with contextlib.suppress(Exception):
            await self._beat()

    def info(self) -> WorkerInfo:
        """The registry entry while no consumer serves (a switch's steps)."""
        now = time.time()
        return WorkerInfo(
            model=self.profile.alias,
            engine_model=self.engine.model_path if self.engine is not None else "",
            worker_id=self.settings.worker_id,
            capacity=0,
            running=0,
            max_model_len=self.profile.max_model_len,
            version=VERSION,
            heartbeat_at=now,
            started_at=now,
            capabilities=capabilities(self.profile),
            state=self._state,
            switch=self.status,
            hardware=self._hardware_info(),
        )

    async def _beat(self) -> None:
        if self._registry is None or self.consumer is not None:
            return
        key = subjects.registry_key(self.profile.alias, self.settings.worker_id)
        await self._registry.put(key, self.info().model_dump_json().encode())

    async def _beat_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._beat()
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def _stop_beat(self) -> None:
        task, self._beat_task = self._beat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _hardware_info(self) -> HardwareInfo | None:
        found = self.hardware
        if found is None:
            return None
        data = found.to_json()
        return HardwareInfo(
            kind=found.kind,
            summary=found.summary(),
            devices=list(data.get("devices", [])),
            ram_bytes=found.ram_bytes,
        )

    async def _audit(self, outcome: str, source: str, target: str, error: str | None) -> None:
        status = self.status
        event = AuditEvent(
            action="model_switch",
            actor=status.requested_by if status else None,
            target=self.settings.worker_id,
            detail={
                "switch_id": status.switch_id if status else None,
                "from": source,
                "to": target,
                "error": error,
                "worker_id": self.settings.worker_id,
            },
            outcome=outcome,
            ts=time.time(),
        )
        await publish_audit(jetstream(self.broker), event, f"{event.detail['switch_id']}:{outcome}")


def load_profile_strict(name: str, folder: Path | None) -> ModelProfile:
    """A catalog alias only: a switch names a profile, never an arbitrary hub id."""
    found = catalog(folder).get(name)
    if found is None:
        raise ProfileError(f"no profile {name!r} in the catalog")
    return found[0]


def weights_missing(profile: ModelProfile) -> str | None:
    """Why the profile's weights cannot be loaded, when that is plain before trying: a local
    path that does not exist. (A hub id is looked up by the engine; a folder without weights
    fails the load, which rolls back.)"""
    model = profile.model
    if model.startswith("builtin:") or not model.startswith(("/", "./", "../", "~")):
        return None
    path = Path(model).expanduser()
    if path.exists():
        return None
    return f"profile {profile.alias!r}: its weights are not at {path} (the model folder does not exist)"


def _is_cpu(engine: ServingEngine) -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - no vLLM (the synthetic engine in a benchmark): a CPU
        return True


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400]}" if text else type(exc).__name__
