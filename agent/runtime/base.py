"""The kernel-runtime seam: how a replica is started, watched and stopped.

The registry (:mod:`agent.kernels`) decides *what* to run as a :class:`ReplicaPlan` and talks to a
:class:`KernelRuntime` for the *how*: ``local`` (a sandboxed subprocess, :mod:`agent.runtime.local`) or
``docker`` (a container per replica, :mod:`agent.runtime.docker`; the handle is the container id).

This module also holds the pure pieces every runtime shares: the replica's environment and the JSON spec
the launcher (:mod:`agent.runtime.launcher`) reads.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

DEFAULT_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LAUNCH_DIR = "/opt/moorage"  # inside the replica: launcher.py, spec.json, error files
EXIT_UNKNOWN = -1  # KernelRuntime.poll: the replica ended, but its exit status is unknown (not our child)


class RuntimeUnavailable(RuntimeError):
    """The runtime cannot work on this host (no sandbox when one is required, dockerd unreachable)."""


@dataclass(frozen=True)
class ReplicaPlan:
    """What to run for one kernel, resolved from its :class:`common.protocol.KernelSpec`."""

    kernel_id: str
    endpoint_id: str
    route_id: str
    port: int  # the host port assigned to this replica (never the definition's port literally)
    model_name: str  # the serving model's name (BACKEND_MODEL_NAME)
    model_path: str  # the definition's model_path, as seen inside the replica (e.g. /models/llm)
    mount_destination: str  # where the model folder appears inside the replica (e.g. /models)
    model_folder: Path  # host path of the model folder (validated to stay inside the storage root)
    environ: dict[str, str] = field(default_factory=dict)
    pre_start_actions: list[dict[str, Any]] = field(default_factory=list)
    start_command: str | None = None
    shell: str | None = "/bin/bash"
    image: str | None = None  # docker: the image to run
    resource_slots: dict[str, str] = field(default_factory=dict)  # requested slots (docker: cpu/mem limits)
    platform_environ: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES; beats environ
    gpu_devices: list[str] = field(default_factory=list)  # GPU UUIDs allocated to this replica
    labels: dict[str, str] = field(default_factory=dict)  # extra identification (docker labels)
    network_outbound: bool = False  # the service allows outbound connections (docs/security.md)


@dataclass
class KernelHandle:
    """A running replica as a runtime knows it. ``ident`` is what the manager sees (pid / container id);
    ``info`` is JSON-able and persisted so that a restarted agent can find the replica again."""

    runtime: str
    ident: str
    info: dict[str, Any] = field(default_factory=dict)
    live: Any = None  # runtime-private in-memory object (e.g. the Popen); never persisted

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "ident": self.ident, "info": self.info}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KernelHandle:
        return cls(runtime=str(data["runtime"]), ident=str(data["ident"]), info=dict(data.get("info") or {}))


class KernelRuntime(Protocol):
    name: str

    async def prepare(self) -> None:
        """One-time setup at agent start (e.g. check that the sandbox works)."""

    def describe(self) -> str:
        """Human-readable mode, e.g. ``local (bwrap sandbox)``."""

    async def start(self, plan: ReplicaPlan, kernel_dir: Path) -> KernelHandle:
        """Start the launcher (pre-start actions, then the start command); return without waiting for it."""

    def poll(self, handle: KernelHandle) -> int | None:
        """The exit code once the replica's main process has ended (128+N for signal N; EXIT_UNKNOWN when it
        cannot be known), else None."""

    def is_alive(self, handle: KernelHandle) -> bool:
        """True while any process of the replica is left."""

    async def stop(self, handle: KernelHandle, grace: float) -> None:
        """SIGTERM the whole replica, SIGKILL what is left after ``grace`` seconds; return once it is gone."""

    def launch_error(self, handle: KernelHandle) -> dict[str, Any] | None:
        """The launcher's error document (pre-start or start-command failure), if it wrote one."""

    def logs(self, handle: KernelHandle, tail_lines: int) -> dict[str, str]:
        """``{"stdout": ..., "stderr": ...}``: the last ``tail_lines`` lines of each stream."""

    def stderr_tail(self, handle: KernelHandle, max_bytes: int) -> str:
        """The last ``max_bytes`` of stderr (for error reports)."""

    def housekeep(self, handle: KernelHandle) -> None:
        """Periodic upkeep of a live replica (log rotation)."""

    def detach(self, handle: KernelHandle) -> None:
        """The agent stops and leaves the replica running."""

    async def reattach(self, handle: KernelHandle) -> int | None:
        """After an agent restart: None when the replica is still alive (and now watched again), else its exit
        code (EXIT_UNKNOWN when it cannot be known)."""

    async def cleanup_orphans(self, agent_id: str, known: set[str]) -> list[str]:
        """Remove replicas this agent started that are not in ``known`` (kernel ids); return what was removed."""

    async def close(self) -> None:
        """Release the runtime's own resources (client connections); replicas keep running."""


def host_model_path(model_path: str, mount_destination: str, model_folder: Path) -> str:
    """Translate an in-replica path under ``mount_destination`` to the model folder on the host (for runtimes
    without a mount namespace); other paths are returned unchanged."""
    dest = posixpath.normpath(mount_destination)
    path = posixpath.normpath(model_path)
    if path == dest:
        return str(model_folder)
    if path.startswith(dest.rstrip("/") + "/"):
        return str(model_folder / posixpath.relpath(path, dest))
    return model_path


def replica_environ(
    plan: ReplicaPlan,
    *,
    model_path: str,
    models_dir: str,
    work_dir: str,
    extra_path: list[str],
    system_path: str = DEFAULT_SYSTEM_PATH,
) -> dict[str, str]:
    """A minimal clean environment (never the agent's own, which holds secrets).

    Order: base (PATH, HOME, LANG) < Backend.AI defaults (BACKEND_MODEL_NAME/PATH, which the user may
    override) < the spec's ``environ`` < what the platform guarantees (GPU visibility, PORT, MOORAGE_* ids).
    """
    env = {
        "PATH": ":".join([*[p for p in extra_path if p], system_path]),
        "HOME": work_dir,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # so a Python server's log lines reach the log files as they happen
        "BACKEND_MODEL_NAME": plan.model_name,
        "BACKEND_MODEL_PATH": model_path,
    }
    env.update(plan.environ)
    env.update(plan.platform_environ)
    env.update({
        "PORT": str(plan.port),
        "MOORAGE_ENDPOINT_ID": plan.endpoint_id,
        "MOORAGE_ROUTE_ID": plan.route_id,
        "MOORAGE_KERNEL_ID": plan.kernel_id,
        "MOORAGE_MODELS_DIR": models_dir,
        "MOORAGE_WORK_DIR": work_dir,
    })
    return env


def launcher_spec(plan: ReplicaPlan, *, model_path: str, work_dir: str, runtime_path: str) -> dict[str, Any]:
    """The JSON document :mod:`agent.runtime.launcher` reads."""
    return {
        "kernel_id": plan.kernel_id,
        "port": plan.port,
        "model_path": model_path,
        "work_dir": work_dir,
        "pre_start_actions": plan.pre_start_actions,
        "start_command": plan.start_command,
        "shell": plan.shell,
        "variables": {"runtime_path": runtime_path},
    }
