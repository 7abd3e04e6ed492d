"""The kernel registry: one replica per kernel, from ``create_kernel`` to being forgotten.

Lifecycle (``common.status.KernelStatus``; health is a separate axis, ``common.status.RouteHealth``)::

    starting ──first passing probe──▶ running (healthy ⇄ unhealthy)
       │                                 │ process ended
       │ pre-start failure, exit,        ▼
       │ or no pass by the deadline    exited   (error: exit code + stderr tail)
       ▼
     failed   (error; a replica that never passed is stopped)
    any live state ──destroy──▶ terminated   (once the whole process group is gone)

* ``create_kernel`` is idempotent on ``kernel_id``: the same id returns the existing report.
* Every replica gets its own host port from ``[agent] port_range`` (never the definition's ``port``):
  ``{port}`` and ``PORT`` carry it, and the prober and app proxy use ``replica_host:port``.
* Terminal kernels stay listed for ``terminal_retention`` seconds so the manager sees the outcome, then
  they are forgotten and their directory removed.
* Any status or health change calls ``on_change`` (the heartbeat loop sends at once).
* GPU slots (``cuda.device``/``cuda.shares`` in ``KernelSpec.resource_slots``) are placed on this agent's
  devices by :class:`agent.alloc.GpuAllocator` at create time; a request that does not fit is a 409 naming
  the slot, a malformed one a 400. The placement is persisted, reported per kernel (``allocation``) and
  released when the replica is gone.
* Each kernel's state is persisted as ``state_dir/kernels/<id>/kernel.json`` on every change. ``close()``
  leaves replicas running; ``destroy_all()`` is for embedded shutdown.
* Restart (also after SIGKILL): :meth:`KernelRegistry.start` re-adopts every replica of the previous run
  that is still alive (same port, same GPU placement, health carried over, supervised again), reports the
  ones that died meanwhile as ``exited``/``failed`` (exit code when the runtime knows it, stderr tail, "while
  the agent was down"), and lets the runtime remove what it started but has no record of (orphans).

The decisions (exit classification, spec validation) are pure functions at the top of the module.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import posixpath
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from agent.alloc import Allocation, AllocationError, GpuAllocator, gpu_environ
from agent.config import AgentConfig
from agent.gpu import GpuDevice
from agent.health import HealthPolicy, HealthTracker, make_probe, run_prober
from agent.ports import PortAllocator, PortsExhausted
from agent.runtime.base import EXIT_UNKNOWN, LAUNCH_DIR, KernelHandle, KernelRuntime, ReplicaPlan
from common.definitions import DefinitionError, ModelConfig, ModelDefinition
from common.errors import (
    Conflict,
    InvalidAPIParameters,
    ObjectNotFound,
    ServiceUnavailable,
    invalid_params_from_validation,
)
from common.protocol import KernelError, KernelReport, KernelSpec
from common.slots import ResourceSlots, SlotError
from common.status import KernelStatus, RouteHealth

log = logging.getLogger(__name__)

TERMINAL = frozenset({KernelStatus.FAILED, KernelStatus.EXITED, KernelStatus.TERMINATED})
STDERR_TAIL_BYTES = 4096
MAX_LOG_TAIL_LINES = 10_000
CREATE_WAIT = 3.0  # seconds create_kernel waits for the runtime's start before answering `starting`
HOUSEKEEPING_INTERVAL = 1.0  # seconds between retention sweeps and log rotation checks
STATE_FILE = "kernel.json"
# Mount destinations that would hide what the sandbox needs to run anything.
FORBIDDEN_MOUNTS = frozenset({"/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/var", "/tmp"})
PSEUDO_FS = ("/proc", "/dev", "/sys")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------------
# Pure decisions
# ---------------------------------------------------------------------------------------------------------

def describe_exit(code: int) -> str:
    if code == EXIT_UNKNOWN:
        return "ended (exit status unknown)"
    if code > 128:
        try:
            return f"was killed by {signal.Signals(code - 128).name} (exit code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"


def exit_outcome(ever_healthy: bool, exit_code: int, launch_error: dict[str, Any] | None,
                 stderr_tail: str) -> tuple[KernelStatus, KernelError]:
    """Status and error of a replica whose main process ended on its own."""
    code = None if exit_code == EXIT_UNKNOWN else exit_code
    if launch_error is not None and not ever_healthy:
        return KernelStatus.FAILED, KernelError(type=launch_error["type"], message=launch_error["message"],
                                                exit_code=code, stderr_tail=stderr_tail)
    if ever_healthy:
        return KernelStatus.EXITED, KernelError(type="exited", message=f"the replica {describe_exit(exit_code)}",
                                                exit_code=code, stderr_tail=stderr_tail)
    return KernelStatus.FAILED, KernelError(
        type="start_failed", message=f"the replica {describe_exit(exit_code)} before it became healthy",
        exit_code=code, stderr_tail=stderr_tail)


def never_healthy_error(policy: HealthPolicy, port: int, stderr_tail: str) -> KernelError:
    if policy.kind == "tcp":
        message = (f"the replica did not accept connections on port {port} within {policy.start_deadline:g}s "
                   "(no health_check in the model definition; [agent] startup_timeout); it was stopped")
    else:
        message = (f"no health check of {policy.path} passed within {policy.start_deadline:g}s (initial_delay "
                   f"{policy.initial_delay:g} + interval {policy.interval:g} × (max_retries {policy.max_retries}"
                   f" + 1)); the replica was stopped")
    return KernelError(type="health_check_failed", message=message, stderr_tail=stderr_tail)


class _Action(BaseModel):
    """Structure of a pre-start action. The action *name* is judged by the launcher (an
    unknown action fails the start), so an agent older than its manager reports a clear route error."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    ref: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


_ACTIONS = TypeAdapter(list[_Action])
MAX_ACTIONS = 64


@dataclass(frozen=True)
class CheckedSpec:
    definition: ModelDefinition
    model: ModelConfig
    pre_start_actions: list[dict[str, Any]]
    policy: HealthPolicy
    model_folder: Path
    mount_destination: str
    slots: ResourceSlots = field(default_factory=ResourceSlots)


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def resolve_model_folder(storage_root: Path, relpath: str) -> Path:
    """The model folder's host path; refuses absolute paths, ``..`` and symlinks escaping the root."""
    parts = PurePosixPath(relpath).parts
    if not relpath or "\x00" in relpath or relpath.startswith("/") or ".." in parts or not parts:
        raise InvalidAPIParameters("folder_relpath: must be a relative path inside the storage root, without '..'")
    root = os.path.realpath(storage_root)
    target = os.path.realpath(os.path.join(root, relpath))
    if target == root or not target.startswith(root.rstrip(os.sep) + os.sep):
        raise InvalidAPIParameters("folder_relpath: resolves outside the storage root")
    return Path(target)


def check_mount_destination(dest: str, work_mount: str) -> str:
    norm = posixpath.normpath(dest) if dest.startswith("/") else ""
    if (not norm or norm in FORBIDDEN_MOUNTS or any(_overlaps(norm, p) for p in PSEUDO_FS)
            or _overlaps(norm, work_mount) or _overlaps(norm, LAUNCH_DIR)):
        raise InvalidAPIParameters(
            f"mount_destination: {dest!r} must be an absolute path that does not hide system directories "
            f"or overlap {work_mount} and {LAUNCH_DIR}")
    return norm


def parse_definition(raw: Any) -> tuple[ModelDefinition, ModelConfig, list[dict[str, Any]]]:
    """Validate the definition; returns it, the serving model and that model's pre-start actions."""
    if not isinstance(raw, dict):
        raise InvalidAPIParameters("model_definition: must be a mapping")
    data = copy.deepcopy(raw)
    raw_actions: dict[int, Any] = {}
    for index, model in enumerate(data.get("models") or []):
        service = model.get("service") if isinstance(model, dict) else None
        if isinstance(service, dict) and "pre_start_actions" in service:
            raw_actions[index] = service.pop("pre_start_actions")
    try:
        definition = ModelDefinition.model_validate(data)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc, "model_definition") from None
    try:
        model = definition.serving_model()
    except DefinitionError as exc:
        raise InvalidAPIParameters(f"model_definition.{exc}") from None
    index = definition.models.index(model)
    where = f"model_definition.models.{index}.service.pre_start_actions"
    actions = raw_actions.get(index) or []
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        raise InvalidAPIParameters(f"{where}: must be a list of at most {MAX_ACTIONS} actions")
    try:
        parsed = _ACTIONS.validate_python(actions)
    except ValidationError as exc:
        raise invalid_params_from_validation(exc, where) from None
    return definition, model, [a.model_dump(exclude_none=True) for a in parsed]


def check_spec(spec: KernelSpec, config: AgentConfig) -> CheckedSpec:
    """Everything about a spec that can be judged without starting it; raises InvalidAPIParameters."""
    definition, model, actions = parse_definition(spec.model_definition)
    for name, value in spec.environ.items():
        if not _ENV_NAME.match(name) or "\x00" in value:
            raise InvalidAPIParameters(f"environ.{name}: invalid environment variable name or value")
    check = definition.health_check()
    if check is not None:
        policy = HealthPolicy.from_check(check)
    else:
        agent = config.agent
        policy = HealthPolicy.tcp(agent.tcp_probe_interval, agent.tcp_probe_retries, agent.startup_timeout)
    try:
        slots = ResourceSlots.parse(spec.resource_slots)
    except SlotError as exc:
        raise InvalidAPIParameters(f"resource_slots.{exc.field}: {exc.reason}") from None
    if config.agent.runtime == "docker" and not spec.image:
        raise InvalidAPIParameters("image: the docker runtime needs an image (set it on the service, or in "
                                   "service-definition.toml)")
    work_mount = config.docker.work_mount if config.agent.runtime == "docker" else config.local.work_mount
    return CheckedSpec(
        definition=definition, model=model, pre_start_actions=actions, policy=policy,
        model_folder=resolve_model_folder(config.agent.storage_root, spec.folder_relpath),
        mount_destination=check_mount_destination(spec.mount_destination, work_mount), slots=slots,
    )


# ---------------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Kernel:
    spec: KernelSpec
    port: int
    kernel_dir: Path
    tracker: HealthTracker
    started_at: float
    updated_at: float
    status: KernelStatus = KernelStatus.STARTING
    health: RouteHealth = RouteHealth.NOT_CHECKED
    handle: KernelHandle | None = None
    error: KernelError | None = None
    finished_at: float | None = None  # monotonic time it became terminal (retention)
    supervisor: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # the start attempt is over
    allocation: Allocation | None = None  # GPU placement
    adopted: bool = False  # re-adopted from a previous agent run
    holds_port: bool = False  # the port is ours in the PortAllocator (released exactly once)
    launch_task: asyncio.Task[None] | None = None
    stats: dict[str, float] | None = None  # last utilisation sample (agent.stats); not persisted

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def allocation_json(self) -> dict[str, str]:
        """``{gpu uuid: fraction}`` held by this kernel (empty without GPUs)."""
        return self.allocation.describe() if self.allocation else {}

    def report(self, host: str) -> KernelReport:
        extra: dict[str, Any] = {}
        if "allocation" in KernelReport.model_fields:  # forward-compatible with the protocol field
            extra["allocation"] = self.allocation_json()
        if self.stats is not None and not self.terminal:
            extra["stats"] = self.stats
        return KernelReport(
            kernel_id=self.spec.kernel_id, endpoint_id=self.spec.endpoint_id, route_id=self.spec.route_id,
            status=self.status, health=self.health, host=host, port=self.port,
            handle=self.handle.ident if self.handle else None, error=self.error,
            started_at=self.started_at, updated_at=self.updated_at, **extra,
        )

    def report_json(self, host: str) -> dict[str, Any]:
        """The report as sent over RPC: the protocol fields plus ``allocation``."""
        data = self.report(host).model_dump(mode="json")
        data["allocation"] = self.allocation_json()
        return data


class KernelRegistry:
    def __init__(self, config: AgentConfig, runtime: KernelRuntime, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 gpus: list[GpuDevice] | None = None):
        self._config = config
        self._cfg = config.agent
        self._runtime = runtime
        self._on_change = on_change or (lambda: None)
        self._clock = clock
        self._wall = wall
        self._ports = PortAllocator(config.agent.port_range)
        self._kernels: dict[uuid.UUID, Kernel] = {}
        self._refusing: str | None = None  # set once shutdown begins: creates are refused with this reason
        self.gpus = list(gpus or [])
        self._gpu_alloc = GpuAllocator([g.uuid for g in self.gpus], config.gpu.allow_fragmentation)
        self._gpu_memory = {g.uuid: g.memory for g in self.gpus}
        self.recovery: dict[str, Any] = {}  # what the last start() found of the previous run (diagnostics)
        self._session: aiohttp.ClientSession | None = None
        self._housekeeper: asyncio.Task[None] | None = None

    @property
    def kernels_dir(self) -> Path:
        return self._cfg.state_dir / "kernels"

    @property
    def runtime(self) -> KernelRuntime:
        return self._runtime

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    # -- lifecycle of the registry ----------------------------------------------------------------------
    async def start(self) -> None:
        self.kernels_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.kernels_dir, 0o700)  # specs hold the users' environ (tokens); replicas see only their own
        self._cfg.storage_root.mkdir(parents=True, exist_ok=True)
        await self._runtime.prepare()
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=64))
        await self._recover_previous_run()
        self._housekeeper = asyncio.create_task(self._housekeep_loop(), name="agent-kernel-housekeeping")

    async def close(self) -> None:
        """Stop watching. Replicas keep running; their state stays on disk for re-adoption."""
        if self._housekeeper:
            self._housekeeper.cancel()
        launches = [k.launch_task for k in self._kernels.values() if k.launch_task and not k.launch_task.done()]
        for task in launches:
            task.cancel()
        await asyncio.gather(*launches, return_exceptions=True)
        stops = [k.stop_task for k in self._kernels.values() if k.stop_task and not k.stop_task.done()]
        if stops:
            await asyncio.gather(*stops, return_exceptions=True)
        for k in self._kernels.values():
            if k.supervisor:
                k.supervisor.cancel()
        await asyncio.gather(*(k.supervisor for k in self._kernels.values() if k.supervisor),
                             return_exceptions=True)
        for k in self._kernels.values():
            if k.handle and not k.terminal:
                self._persist(k)
                self._runtime.detach(k.handle)
        if self._session:
            await self._session.close()
        if self._housekeeper:
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        await self._runtime.close()

    def _load_records(self) -> dict[uuid.UUID, dict[str, Any]]:
        records: dict[uuid.UUID, dict[str, Any]] = {}
        for path in sorted(self.kernels_dir.iterdir()) if self.kernels_dir.is_dir() else []:
            try:
                record = json.loads((path / STATE_FILE).read_text())
                kernel_id = uuid.UUID(record["report"]["kernel_id"])
                if path.name != str(kernel_id):
                    raise ValueError("directory name does not match the kernel id")
                record["_spec"] = KernelSpec.model_validate(record["spec"])
                record["_report"] = KernelReport.model_validate(record["report"])
                record["_handle"] = KernelHandle.from_json(record["handle"]) if record.get("handle") else None
                records[kernel_id] = record
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("dropping unreadable kernel state %s: %s", path, exc)
                shutil.rmtree(path, ignore_errors=True)
        return records

    async def _recover_previous_run(self) -> None:
        """Re-adopt the live replicas of a previous agent run; report the dead ones; remove orphans."""
        t0 = self._clock()
        records = self._load_records()
        adopted: list[str] = []
        died: list[str] = []
        for kernel_id, record in records.items():
            try:
                if await self._recover_one(kernel_id, record):
                    adopted.append(str(kernel_id))
                else:
                    died.append(str(kernel_id))
            except Exception:
                log.exception("kernel %s: cannot recover it from the previous run", kernel_id)
        try:
            orphans = await self._runtime.cleanup_orphans(self._cfg.id, set(adopted))
        except Exception:
            log.exception("cannot look for orphaned replicas")
            orphans = []
        self.recovery = {"adopted": adopted, "died": died, "orphans_removed": orphans,
                         "seconds": round(self._clock() - t0, 3)}
        if records or orphans:
            log.info("previous run: re-adopted %d replica(s), %d ended while the agent was down, %d orphan(s) "
                     "removed (%.2fs)", len(adopted), len(died), len(orphans), self.recovery["seconds"])

    async def _recover_one(self, kernel_id: uuid.UUID, record: dict[str, Any]) -> bool:
        spec: KernelSpec = record["_spec"]
        report: KernelReport = record["_report"]
        handle: KernelHandle | None = record["_handle"]
        try:
            policy = check_spec(spec, self._config).policy
        except Exception:  # the config changed under it; the replica still deserves supervision
            policy = HealthPolicy.tcp(self._cfg.tcp_probe_interval, self._cfg.tcp_probe_retries,
                                      self._cfg.startup_timeout)
        now = self._clock()
        started_at = report.started_at or self._wall()
        tracker = HealthTracker(policy, now - max(0.0, self._wall() - started_at))
        k = Kernel(spec=spec, port=report.port, kernel_dir=self.kernels_dir / str(kernel_id), tracker=tracker,
                   started_at=started_at, updated_at=report.updated_at or self._wall(), status=report.status,
                   health=report.health, handle=handle, error=report.error, adopted=True)
        k.ready.set()
        if record.get("allocation"):
            try:
                k.allocation = Allocation.from_json(record["allocation"])
            except (ValueError, KeyError, TypeError):
                log.warning("kernel %s: unreadable GPU allocation record; ignored", kernel_id)
        self._kernels[kernel_id] = k
        if k.terminal:  # it had ended before the restart: keep reporting it for the retention time
            k.finished_at = now
            return False
        code: int | None = EXIT_UNKNOWN  # None: reattached, still running
        if handle is not None and handle.runtime == self._runtime.name:
            code = await self._runtime.reattach(handle)
        if code is None:
            self._ports.reserve(k.port)
            k.holds_port = True
            if k.allocation is not None:
                try:
                    self._gpu_alloc.restore(kernel_id, k.allocation)
                except AllocationError as exc:
                    log.error("kernel %s: its GPU allocation cannot be restored (%s); it keeps running",
                              kernel_id, exc)
            if k.status == KernelStatus.RUNNING:
                tracker.ever_passed = True
                tracker.state = k.health
                tracker.last_pass_at = now
            assert handle is not None
            log.info("kernel %s: re-adopted %s on port %d (%s, %s)", kernel_id, handle.ident, k.port, k.status,
                     k.health)
            self._persist(k)
            k.supervisor = asyncio.create_task(self._supervise(k), name=f"kernel-{kernel_id}")
            return True
        ever = k.status == KernelStatus.RUNNING
        launch_error = self._runtime.launch_error(handle) if handle else None
        stderr = self._runtime.stderr_tail(handle, STDERR_TAIL_BYTES) if handle else ""
        status, error = exit_outcome(ever, code, launch_error, stderr)
        error.message += " while the agent was down"
        log.warning("kernel %s: %s: %s", kernel_id, status, error.message)
        self._finish(k, status, error, RouteHealth.UNHEALTHY, grace=0)  # cleans up what is left (container)
        return False

    # -- RPC operations ---------------------------------------------------------------------------------
    def list_reports(self) -> list[KernelReport]:
        return [k.report(self._cfg.replica_host) for k in self._kernels.values()]

    def list_reports_json(self) -> list[dict[str, Any]]:
        return [k.report_json(self._cfg.replica_host) for k in self._kernels.values()]

    def report_json(self, kernel_id: uuid.UUID) -> dict[str, Any]:
        return self._kernels[kernel_id].report_json(self._cfg.replica_host)

    def gpu_usage(self) -> dict[str, str]:
        """``{gpu uuid: fraction in use}`` over all kernels."""
        return {d: format(Decimal(self._gpu_alloc.used[d]) / 100, ".2f") for d in self._gpu_alloc.devices}

    def live_kernels(self) -> list[Kernel]:
        """Kernels whose replica may be running (not terminal), for utilisation sampling."""
        return [k for k in self._kernels.values() if not k.terminal]

    def get(self, kernel_id: uuid.UUID) -> Kernel | None:
        return self._kernels.get(kernel_id)

    async def create_kernel(self, spec: KernelSpec) -> KernelReport:
        existing = self._kernels.get(spec.kernel_id)
        if existing is not None:
            if existing.launch_task is not None and not existing.launch_task.done():
                await asyncio.wait({existing.launch_task}, timeout=CREATE_WAIT)
            return existing.report(self._cfg.replica_host)
        if self._refusing:
            raise ServiceUnavailable(self._refusing)
        checked = check_spec(spec, self._config)
        try:
            allocation = self._gpu_alloc.plan(checked.slots.get("cuda.device", 0), checked.slots.get("cuda.shares", 0))
        except AllocationError as exc:
            if not self.gpus and exc.slot.startswith("cuda."):
                raise Conflict(f"resource_slots.{exc.slot}: this agent has no GPUs", data={"slot": exc.slot}) from None
            raise Conflict(f"resource_slots.{exc.slot}: {exc.reason}", data={"slot": exc.slot}) from None
        try:
            port = self._ports.allocate()
        except PortsExhausted as exc:
            raise ServiceUnavailable(str(exc)) from None
        if allocation is not None:
            self._gpu_alloc.restore(spec.kernel_id, allocation)  # planned just now, on this loop: it fits
        now = self._wall()
        k = Kernel(spec=spec, port=port, kernel_dir=self.kernels_dir / str(spec.kernel_id),
                   tracker=HealthTracker(checked.policy, self._clock()), started_at=now, updated_at=now)
        k.allocation, k.holds_port = allocation, True
        self._kernels[spec.kernel_id] = k
        k.launch_task = asyncio.create_task(self._launch(k, checked, port, allocation),
                                            name=f"launch-{spec.kernel_id}")
        k.launch_task.add_done_callback(_log_crash)
        # Quick starts (a process, a container from a present image) are answered with their handle; slow
        # ones (an image pull, a big vfs copy) go on in the background and the reply says `starting`.
        await asyncio.wait({k.launch_task}, timeout=CREATE_WAIT)
        return k.report(self._cfg.replica_host)

    async def _launch(self, k: Kernel, checked: CheckedSpec, port: int, allocation: Allocation | None) -> None:
        spec = k.spec
        try:
            k.kernel_dir.mkdir(parents=True, exist_ok=True)
            self._persist(k)  # a record before anything runs: a crash mid-start is found on restart
            if not checked.model_folder.is_dir():
                self._finish(k, KernelStatus.FAILED, KernelError(
                    type="start_failed",
                    message=f"model folder {spec.folder_relpath!r} does not exist under this agent's storage root"),
                    RouteHealth.NOT_CHECKED, grace=0)
                return
            service = checked.model.service
            assert service is not None
            plan = ReplicaPlan(
                kernel_id=str(spec.kernel_id), endpoint_id=str(spec.endpoint_id), route_id=str(spec.route_id),
                port=port, model_name=checked.model.name, model_path=checked.model.model_path,
                mount_destination=checked.mount_destination, model_folder=checked.model_folder,
                environ=dict(spec.environ), pre_start_actions=checked.pre_start_actions,
                start_command=service.start_command, shell=service.shell, image=spec.image,
                resource_slots=checked.slots.to_json(),
                platform_environ=gpu_environ(allocation, self._gpu_memory, bool(self.gpus)),
                gpu_devices=allocation.uuids if allocation else [],
                labels={"ai.moorage.agent": self._cfg.id, "ai.moorage.endpoint-name": spec.endpoint_name},
                network_outbound=spec.network_outbound,
            )
            k.handle = await self._runtime.start(plan, k.kernel_dir)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the runtime could not start it: a failed kernel, not a failed RPC
            log.exception("kernel %s: cannot start the replica", spec.kernel_id)
            if not k.terminal:
                self._finish(k, KernelStatus.FAILED,
                             KernelError(type="runtime_error", message=f"cannot start the replica: {exc}"),
                             RouteHealth.UNHEALTHY, grace=0)
            return
        finally:
            k.ready.set()
        k.tracker.started_at = self._clock()  # the timing contract counts from the process start
        log.info("kernel %s (endpoint %s): started %s on port %d (%s)", spec.kernel_id, spec.endpoint_name,
                 k.handle.ident, port, self._runtime.describe())
        self._persist(k)
        k.supervisor = asyncio.create_task(self._supervise(k), name=f"kernel-{spec.kernel_id}")
        self._notify()

    async def destroy_kernel(self, kernel_id: uuid.UUID) -> None:
        """Stop the replica (SIGTERM, SIGKILL after ``stop_grace``) and wait until it is gone. Idempotent."""
        k = self._kernels.get(kernel_id)
        if k is None:
            return
        await k.ready.wait()
        task = self._begin_stop(k, self._cfg.stop_grace)
        await asyncio.shield(task)

    async def destroy_all(self) -> None:
        """Destroy every kernel and refuse new ones from now on (embedded mode's shutdown: the manager's
        control loop, still running on the same event loop, would otherwise replace the replicas it sees end,
        and those replacements would outlive the process)."""
        self._refusing = "the agent is shutting down"
        await asyncio.gather(*(self.destroy_kernel(kid) for kid in list(self._kernels)), return_exceptions=True)

    def logs(self, kernel_id: uuid.UUID, tail: int) -> dict[str, str]:
        """The last ``tail`` lines of each stream (blocking file reads: call it in a thread)."""
        k = self._kernels.get(kernel_id)
        if k is None:
            raise ObjectNotFound(f"no kernel {kernel_id} on this agent")
        if k.handle is None:
            return {"stdout": "", "stderr": ""}
        return self._runtime.logs(k.handle, max(0, min(tail, MAX_LOG_TAIL_LINES)))

    # -- supervision ------------------------------------------------------------------------------------
    async def _supervise(self, k: Kernel) -> None:
        assert k.handle is not None and self._session is not None
        probe = make_probe(k.tracker.policy, self._session, self._cfg.replica_host, k.port)
        prober = asyncio.create_task(
            run_prober(k.tracker, probe, lambda ok, now: self._on_probe(k, ok, now), self._clock),
            name=f"probe-{k.spec.kernel_id}")
        prober.add_done_callback(_log_crash)
        try:
            while not k.terminal and k.stop_task is None:
                code = self._runtime.poll(k.handle)
                if code is not None:
                    self._on_exit(k, code)
                    return
                self._apply_health(k, k.tracker.tick(self._clock()))
                await asyncio.sleep(self._cfg.monitor_interval)
        finally:
            prober.cancel()

    def _on_probe(self, k: Kernel, ok: bool, now: float) -> None:
        if not k.terminal and k.stop_task is None:
            self._apply_health(k, k.tracker.record(ok, now))

    def _apply_health(self, k: Kernel, transition: RouteHealth | None) -> None:
        if transition is None or k.terminal or k.stop_task is not None or k.handle is None:
            return
        if k.tracker.gave_up:
            log.warning("kernel %s: never became healthy; stopping it", k.spec.kernel_id)
            error = never_healthy_error(k.tracker.policy, k.port,
                                        self._runtime.stderr_tail(k.handle, STDERR_TAIL_BYTES))
            self._finish(k, KernelStatus.FAILED, error, RouteHealth.UNHEALTHY, grace=self._cfg.stop_grace)
            return
        k.health = transition
        if transition == RouteHealth.HEALTHY and k.status == KernelStatus.STARTING:
            k.status = KernelStatus.RUNNING
        log.info("kernel %s: %s, %s", k.spec.kernel_id, k.status, k.health)
        self._touch(k)

    def _on_exit(self, k: Kernel, code: int) -> None:
        assert k.handle is not None
        status, error = exit_outcome(k.tracker.ever_passed, code, self._runtime.launch_error(k.handle),
                                     self._runtime.stderr_tail(k.handle, STDERR_TAIL_BYTES))
        log.warning("kernel %s: %s: %s", k.spec.kernel_id, status, error.message)
        self._finish(k, status, error, RouteHealth.UNHEALTHY, grace=0)  # grace 0: kill any leftovers

    def _finish(self, k: Kernel, status: KernelStatus, error: KernelError | None, health: RouteHealth,
                grace: float) -> None:
        """Enter a terminal state now, then clean up the process group and the port in the background."""
        k.status, k.error, k.health = status, error, health
        k.finished_at = self._clock()
        self._touch(k)
        self._begin_stop(k, grace)

    def _begin_stop(self, k: Kernel, grace: float) -> asyncio.Task[None]:
        if k.stop_task is None:
            if k.supervisor is not None and k.supervisor is not asyncio.current_task():
                k.supervisor.cancel()
            k.stop_task = asyncio.create_task(self._stop(k, grace), name=f"stop-{k.spec.kernel_id}")
            k.stop_task.add_done_callback(_log_crash)
        return k.stop_task

    async def _stop(self, k: Kernel, grace: float) -> None:
        try:
            if k.handle is not None:
                await self._runtime.stop(k.handle, grace)
        finally:
            if k.holds_port:
                self._ports.release(k.port)
                k.holds_port = False
            self._gpu_alloc.release(k.spec.kernel_id)
            if not k.terminal:
                k.status, k.health = KernelStatus.TERMINATED, RouteHealth.NOT_CHECKED
                k.finished_at = self._clock()
                log.info("kernel %s: terminated", k.spec.kernel_id)
                self._touch(k)
            else:
                self._persist(k)

    # -- housekeeping -----------------------------------------------------------------------------------
    async def _housekeep_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                await self._housekeep()
            except Exception:  # keep the loop alive; one bad kernel dir must not stop retention
                log.exception("kernel housekeeping failed")

    async def _housekeep(self) -> None:
        now = self._clock()
        forget = [k for k in self._kernels.values()
                  if k.terminal and k.finished_at is not None and now - k.finished_at >= self._cfg.terminal_retention
                  and (k.stop_task is None or k.stop_task.done())]
        for k in forget:
            del self._kernels[k.spec.kernel_id]
            await asyncio.to_thread(shutil.rmtree, k.kernel_dir, True)
        if forget:
            self._notify()
        live = [k.handle for k in self._kernels.values() if k.handle is not None and not k.terminal]
        if live:
            def housekeep() -> None:
                for h in live:
                    self._runtime.housekeep(h)

            await asyncio.to_thread(housekeep)

    # -- plumbing ---------------------------------------------------------------------------------------
    def _touch(self, k: Kernel) -> None:
        k.updated_at = self._wall()
        self._persist(k)
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("kernel change callback failed")

    def _persist(self, k: Kernel) -> None:
        record = {
            "report": k.report(self._cfg.replica_host).model_dump(mode="json", exclude={"stats"}),
            "spec": k.spec.model_dump(mode="json"),
            "handle": k.handle.to_json() if k.handle else None,
            "allocation": k.allocation.to_json() if k.allocation else None,
        }
        path = k.kernel_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("kernel %s: cannot persist state: %s", k.spec.kernel_id, exc)


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s crashed", task.get_name(), exc_info=task.exception())
