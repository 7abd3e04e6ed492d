"""The ``docker`` kernel runtime: one container per replica, through aiodocker (``[agent] runtime = "docker"``).

The container (named ``moorage-<kernel_id>``):

* runs the image from ``KernelSpec.image`` (pulled when missing, unless ``[docker] pull = "never"``);
* runs the SAME launcher as the local runtime, with the image's ``python3`` (``[docker] python``): the
  kernel's ``launch/`` dir (launcher.py, spec.json, error files, logs) is bind-mounted at ``/opt/moorage``,
  so pre-start actions and the start command run inside the container;
* sees the model folder read-only at the mount destination (``/models``) and a private writable work dir
  at ``[docker] work_mount`` (also ``HOME``);
* has no network but its own loopback (``NetworkMode: none``, ``[docker] network = "isolated"``): pasta
  forwards ``replica_host:port`` into it (:mod:`agent.runtime.netfwd`), so the replica reaches nothing on the
  host or beyond while the app proxy and the agent's health checks reach it as for the local runtime;
* runs as the replica's own unprivileged uid with no capabilities (``[docker] run_as = "replica"``), no new
  privileges, a read-only root file system (``/tmp`` a tmpfs) and a pids limit;
* gets ``NanoCpus``/``Memory`` from the ``cpu``/``mem`` slots, GPUs through ``DeviceRequests`` (driver
  ``[docker] gpu_driver``, the allocated UUIDs) plus ``CUDA_VISIBLE_DEVICES`` and MPS limits in its env;
* runs docker-init as PID 1 (``[docker] init``), so SIGTERM reaches the server and zombies are reaped;
* carries labels ``ai.moorage.{managed,agent,kernel,endpoint,route,port}``: a restarted agent finds its
  containers by them, re-adopts the ones it has state for, and removes the others (orphans).

Logs: the launcher appends stdout/stderr to ``launch/stdout.log``/``stderr.log`` on the host (bounded by the
agent's copy-truncate like the local runtime), so ``kernel_logs`` works during and after the container's
life and across agent restarts. Output written before the launcher runs (e.g. "python3: not found") is
copied from ``docker logs`` into ``stderr.log`` when the container ends.

Stopping: ``docker stop`` (SIGTERM, SIGKILL after the grace) then remove; ``destroy`` leaves no container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from agent.config import AgentConfig, DockerSection
from agent.runtime import launcher
from agent.runtime.base import (
    EXIT_UNKNOWN,
    LAUNCH_DIR,
    KernelHandle,
    ReplicaPlan,
    RuntimeUnavailable,
    launcher_spec,
    replica_environ,
)
from agent.runtime.logfiles import LaunchFiles
from agent.runtime.netfwd import start_forwarder, stop_forwarder
from agent.runtime.uids import UidPool, hand_over
from agent.stats import UsageSample, docker_usage
from common.slots import parse_binary_size

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(launcher.__file__)
LABEL_PREFIX = "ai.moorage."
MANAGED_LABEL = LABEL_PREFIX + "managed"
AGENT_LABEL = LABEL_PREFIX + "agent"
KERNEL_LABEL = LABEL_PREFIX + "kernel"
NAME_PREFIX = "moorage-"
WAIT_RETRY = 1.0  # seconds between attempts to re-establish a broken wait on a container
STATS_TIMEOUT = 5.0  # seconds one container's stats call may take (dockerd under load answers slowly)
DOCKER_LOG_TAIL = 200  # lines of `docker logs` kept when the launcher never wrote its own


def container_name(kernel_id: str) -> str:
    return NAME_PREFIX + kernel_id


def image_command(image_config: dict[str, Any]) -> str | None:
    """The image's own command (ENTRYPOINT + CMD) as a no-shell command line, for definitions without a
    ``start_command`` (the ``cmd`` and ``nim`` runtime variants); None when the image defines none."""
    argv = [*(image_config.get("Entrypoint") or []), *(image_config.get("Cmd") or [])]
    return " ".join(shlex.quote(str(a)) for a in argv) if argv else None


# Dropped even when the container runs as the image's (possibly root) user: raw sockets, device nodes,
# chroot, file capabilities and audit writes are what container escapes and spoofing use.
DANGEROUS_CAPS = ["NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP", "AUDIT_WRITE", "NET_ADMIN", "SYS_ADMIN"]


def container_config(plan: ReplicaPlan, docker: DockerSection, agent_id: str, launch_dir: Path,
                     work_dir: Path, uid: int | None = None) -> dict[str, Any]:
    """The Docker Engine API ``ContainerCreate`` body for one replica (pure). With ``uid`` the container runs
    as that unprivileged uid (= gid) without any capability; else as the image's user minus
    :data:`DANGEROUS_CAPS`. Always: no new privileges, a pids limit, only the model folder, launch and work
    dirs from the host; with ``network = "isolated"`` no network but its own loopback (see netfwd)."""
    env = replica_environ(plan, model_path=plan.model_path, models_dir=plan.mount_destination,
                          work_dir=docker.work_mount, extra_path=[])
    env.pop("PATH")  # keep the image's PATH (its python, CUDA tools, ...)
    env = {**docker.extra_env, **env}
    labels = {
        **plan.labels,
        MANAGED_LABEL: "true",
        AGENT_LABEL: agent_id,
        KERNEL_LABEL: plan.kernel_id,
        LABEL_PREFIX + "endpoint": plan.endpoint_id,
        LABEL_PREFIX + "route": plan.route_id,
        LABEL_PREFIX + "port": str(plan.port),
    }
    host: dict[str, Any] = {
        "NetworkMode": "none" if docker.network == "isolated" else "host",
        "Init": docker.init,
        "SecurityOpt": ["no-new-privileges"],
        "CapDrop": ["ALL"] if uid is not None else list(DANGEROUS_CAPS),
        "PidsLimit": docker.pids_limit,
        "ReadonlyRootfs": docker.read_only_root,
        "Binds": [
            f"{plan.model_folder}:{plan.mount_destination}:ro",
            f"{launch_dir}:{LAUNCH_DIR}:rw",
            f"{work_dir}:{docker.work_mount}:rw",
        ],
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        "ShmSize": int(parse_binary_size(docker.shm_size)),
    }
    cpu = plan.resource_slots.get("cpu")
    if cpu is not None and Decimal(cpu) > 0:
        host["NanoCpus"] = int(Decimal(cpu) * 1_000_000_000)
    mem = plan.resource_slots.get("mem")
    if mem is not None and int(Decimal(mem)) > 0:
        host["Memory"] = int(Decimal(mem))
    if docker.read_only_root:
        host["Tmpfs"] = {"/tmp": "rw,nosuid,nodev,mode=1777"}
    if plan.gpu_devices:
        host["DeviceRequests"] = [{"Driver": docker.gpu_driver, "DeviceIDs": list(plan.gpu_devices),
                                   "Capabilities": [["gpu", "compute", "utility"]]}]
    return {
        "Image": plan.image,
        "Entrypoint": [docker.python],
        "Cmd": [f"{LAUNCH_DIR}/launcher.py", f"{LAUNCH_DIR}/spec.json"],
        "Env": [f"{k}={v}" for k, v in env.items()],
        "WorkingDir": docker.work_mount,
        "Labels": labels,
        "StopSignal": "SIGTERM",
        "HostConfig": host,
        **({"User": f"{uid}:{uid}"} if uid is not None else {}),
    }


@dataclass
class _Watch:
    """In-memory state of a container we watch (``KernelHandle.live``)."""

    exit_code: int | None = None
    task: asyncio.Task[None] | None = None
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class DockerRuntime(LaunchFiles):
    name = "docker"

    def __init__(self, config: AgentConfig):
        self._cfg = config.docker
        self._agent_id = config.agent.id
        self._replica_host = config.agent.replica_host
        self._max_log_bytes = config.agent.max_log_bytes
        self._docker: Any = None
        self._pasta: str | None = None
        self._uids = UidPool(config.replica_uids.base, config.replica_uids.count)

    # -- setup -----------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        import aiodocker

        self._docker = aiodocker.Docker(url=self._cfg.socket)
        try:
            version = await asyncio.wait_for(self._docker.version(), 15)
        except Exception as exc:
            await self.close()
            raise RuntimeUnavailable(f"docker runtime: cannot reach dockerd at {self._cfg.socket}: "
                                     f"{type(exc).__name__}: {exc}") from None
        if self._cfg.network == "isolated":
            self._pasta = shutil.which(self._cfg.pasta_path)
            if not self._pasta or os.geteuid() != 0:
                await self.close()
                raise RuntimeUnavailable(
                    "docker runtime: [docker] network = \"isolated\" needs pasta (apt-get install passt) and an "
                    "agent running as root (to enter the containers' network namespaces); or set network = "
                    "\"host\" to share the host network")
        log.info("docker runtime: dockerd %s (API %s) at %s, %s, run as %s", version.get("Version"),
                 version.get("ApiVersion"), self._cfg.socket, self._cfg.network, self._cfg.run_as)

    async def close(self) -> None:
        if self._docker is not None:
            with contextlib.suppress(Exception):
                await self._docker.close()
            self._docker = None

    def describe(self) -> str:
        net = "own network namespace" if self._cfg.network == "isolated" else "HOST network"
        return f"docker ({self._cfg.socket}, {net}, {'own uid' if self._cfg.run_as == 'replica' else 'image user'})"

    # -- start -----------------------------------------------------------------------------------------
    async def _ensure_image(self, image: str) -> None:
        from aiodocker.exceptions import DockerError

        try:
            await self._docker.images.inspect(image)
            return
        except DockerError as exc:
            if exc.status != 404:
                raise
        if self._cfg.pull == "never":
            raise RuntimeError(f"image {image!r} is not present on this host and [docker] pull = \"never\"")
        log.info("pulling image %s", image)
        await asyncio.wait_for(self._docker.images.pull(image), self._cfg.pull_timeout)

    async def start(self, plan: ReplicaPlan, kernel_dir: Path) -> KernelHandle:
        if not plan.image:
            raise RuntimeError("no image given for the docker runtime")
        work = kernel_dir / "work"
        launch = kernel_dir / "launch"
        work.mkdir(parents=True, exist_ok=True)
        launch.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LAUNCHER_SOURCE, launch / "launcher.py")
        await self._ensure_image(plan.image)
        spec = launcher_spec(plan, model_path=plan.model_path, work_dir=self._cfg.work_mount,
                             runtime_path=self._cfg.python)
        spec["stdout_path"] = f"{LAUNCH_DIR}/stdout.log"
        spec["stderr_path"] = f"{LAUNCH_DIR}/stderr.log"
        if not spec.get("start_command"):  # run the image's own command (through the launcher, after pre-start)
            inspected = await self._docker.images.inspect(plan.image)
            spec["start_command"] = image_command(inspected.get("Config") or {})
            spec["shell"] = None
        (launch / "spec.json").write_text(json.dumps(spec, indent=1))
        uid = self._uids.take() if self._cfg.run_as == "replica" else None
        if uid is not None:
            hand_over(work, launch, uid)
        config = container_config(plan, self._cfg, self._agent_id, launch, work, uid)
        name = container_name(plan.kernel_id)
        try:
            container = await self._create(config, name, plan.kernel_id)
        except BaseException:
            self._uids.release(uid)  # no container holds it
            raise
        info = {"container_id": container.id, "name": name, "kernel_dir": str(kernel_dir),
                "started_at": time.time(), "image": plan.image, "uid": uid}
        try:
            await container.start()
            if self._pasta is not None:
                pid = int(((await container.show()).get("State") or {}).get("Pid") or 0)
                if not pid:
                    raise RuntimeError("the container ended before its port could be forwarded")
                info.update(await asyncio.to_thread(start_forwarder, self._pasta, pid, self._replica_host,
                                                    plan.port, kernel_dir, pin=True,
                                                    outbound=plan.network_outbound))
        except Exception:
            stop_forwarder(info)
            await self._remove(container.id)
            self._uids.release(uid)
            raise
        handle = KernelHandle(runtime=self.name, ident=container.id, info=info)
        self._watch(handle)
        return handle

    async def _create(self, config: dict[str, Any], name: str, kernel_id: str) -> Any:
        from aiodocker.exceptions import DockerError

        try:
            return await self._docker.containers.create(config, name=name)
        except DockerError as exc:
            if exc.status != 409:
                raise
        # A container of an earlier attempt (the agent died before recording it): replace it.
        log.warning("kernel %s: removing a stale container named %s", kernel_id, name)
        await self._remove(name)
        return await self._docker.containers.create(config, name=name)

    # -- watch -----------------------------------------------------------------------------------------
    def _watch(self, handle: KernelHandle) -> _Watch:
        watch = _Watch()
        handle.live = watch
        watch.task = asyncio.create_task(self._wait(handle, watch), name=f"docker-wait-{handle.ident[:12]}")
        return watch

    async def _wait(self, handle: KernelHandle, watch: _Watch) -> None:
        from aiodocker.exceptions import DockerError

        container = self._docker.containers.container(handle.ident)
        code: int | None = None
        while code is None:
            try:
                result = await container.wait()
                code = int(result.get("StatusCode", EXIT_UNKNOWN))
            except asyncio.CancelledError:
                raise
            except DockerError as exc:
                if exc.status == 404:
                    code = EXIT_UNKNOWN
                    break
                log.warning("container %s: wait failed (%s); retrying", handle.ident[:12], exc)
                await asyncio.sleep(WAIT_RETRY)
            except Exception as exc:  # dockerd restarting, connection reset: try again
                log.warning("container %s: wait failed (%s: %s); retrying", handle.ident[:12],
                            type(exc).__name__, exc)
                await asyncio.sleep(WAIT_RETRY)
        await self._salvage_docker_logs(handle)
        watch.exit_code = code
        watch.gone.set()

    async def _salvage_docker_logs(self, handle: KernelHandle) -> None:
        """Output from before the launcher took over its streams (e.g. no python3 in the image)."""
        stderr = self._dir(handle) / "stderr.log"
        if stderr.exists():
            return
        try:
            lines = await self._docker.containers.container(handle.ident).log(stdout=True, stderr=True,
                                                                              tail=DOCKER_LOG_TAIL)
        except Exception:
            return
        text = "".join(lines)
        if text:
            with contextlib.suppress(OSError):
                stderr.write_text(text)

    async def sample_usage(self, handles: list[KernelHandle]) -> dict[str, UsageSample]:
        """One non-streaming ``one-shot`` stats call per container, concurrently (see agent.stats)."""
        async def one(handle: KernelHandle) -> tuple[str, UsageSample | None]:
            try:
                data = await self._docker._query_json(
                    f"containers/{handle.ident}/stats", params={"stream": "false", "one-shot": "true"},
                    timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT))
            except Exception as exc:  # gone, or dockerd busy: no sample this round
                log.debug("container %s: no stats: %s: %s", handle.ident[:12], type(exc).__name__, exc)
                return handle.ident, None
            return handle.ident, docker_usage(data) if isinstance(data, dict) else None

        if self._docker is None:
            return {}
        results = await asyncio.gather(*(one(h) for h in handles))
        return {ident: sample for ident, sample in results if sample is not None}

    def poll(self, handle: KernelHandle) -> int | None:
        watch: _Watch | None = handle.live
        if watch is None:
            return EXIT_UNKNOWN
        return watch.exit_code

    def is_alive(self, handle: KernelHandle) -> bool:
        return self.poll(handle) is None

    async def reattach(self, handle: KernelHandle) -> int | None:
        from aiodocker.exceptions import DockerError

        try:
            data = await self._docker.containers.container(handle.ident).show()
        except DockerError as exc:
            if exc.status == 404:
                return EXIT_UNKNOWN
            raise
        state = data.get("State") or {}
        if state.get("Running") or state.get("Restarting"):
            if handle.info.get("uid") is not None:
                self._uids.hold(int(handle.info["uid"]))
            self._watch(handle)
            return None
        stop_forwarder(handle.info)
        await self._salvage_docker_logs(handle)
        code = state.get("ExitCode")
        return int(code) if isinstance(code, int) and state.get("Status") == "exited" else EXIT_UNKNOWN

    async def cleanup_orphans(self, agent_id: str, known: set[str]) -> list[str]:
        filters = json.dumps({"label": [f"{MANAGED_LABEL}=true", f"{AGENT_LABEL}={agent_id}"]})
        removed = []
        for container in await self._docker.containers.list(all=True, filters=filters):
            labels = container._container.get("Labels") or {}
            if labels.get(KERNEL_LABEL) in known:
                continue
            log.warning("removing orphaned container %s (kernel %s): no state for it on this agent",
                        container.id[:12], labels.get(KERNEL_LABEL))
            await self._remove(container.id)
            removed.append(container.id)
        return removed

    async def list_managed(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Our containers (for diagnostics and tests): id, name, state, labels."""
        labels = [f"{MANAGED_LABEL}=true"] + ([f"{AGENT_LABEL}={agent_id}"] if agent_id else [])
        found = await self._docker.containers.list(all=True, filters=json.dumps({"label": labels}))
        return [{"id": c.id, "state": c._container.get("State"), "labels": c._container.get("Labels") or {}}
                for c in found]

    # -- stop ------------------------------------------------------------------------------------------
    async def _remove(self, ident: str) -> None:
        from aiodocker.exceptions import DockerError

        try:
            await self._docker.containers.container(ident).delete(force=True, v=True)
        except DockerError as exc:
            if exc.status not in (404, 409):  # 409: removal already in progress
                raise

    async def stop(self, handle: KernelHandle, grace: float) -> None:
        from aiodocker.exceptions import DockerError

        container = self._docker.containers.container(handle.ident)
        try:
            if grace > 0:
                await container.stop(t=max(1, math.ceil(grace)))
        except DockerError as exc:
            if exc.status not in (304, 404):
                log.warning("container %s: stop failed (%s); removing it by force", handle.ident[:12], exc)
        watch: _Watch | None = handle.live
        if watch is not None and watch.task is not None and not watch.task.done():
            with contextlib.suppress(TimeoutError):  # the exit code and salvaged logs, when quick
                await asyncio.wait_for(asyncio.shield(watch.gone.wait()), 2.0 if grace > 0 else 0.5)
        await self._remove(handle.ident)
        stop_forwarder(handle.info)
        self._uids.release(handle.info.get("uid"))
        if watch is not None and watch.task is not None and not watch.task.done():
            watch.task.cancel()
            with contextlib.suppress(BaseException):
                await watch.task
            if watch.exit_code is None:
                watch.exit_code = EXIT_UNKNOWN

    def detach(self, handle: KernelHandle) -> None:
        watch: _Watch | None = handle.live
        if watch is not None and watch.task is not None:
            watch.task.cancel()
        handle.live = None

    # -- files (same layout as the local runtime, under launch/) -----------------------------------------
    @staticmethod
    def _dir(handle: KernelHandle) -> Path:
        return Path(handle.info["kernel_dir"]) / "launch"

    def _launch_dir(self, handle: KernelHandle) -> Path:
        return self._dir(handle)

    def _log_dir(self, handle: KernelHandle) -> Path:
        return self._dir(handle)  # the launcher in the container appends to launch/stdout.log, stderr.log
