"""The ``local`` kernel runtime: the launcher as a subprocess, sandboxed with bubblewrap when it works here.

Per kernel, under ``state_dir/kernels/<kernel_id>/``: ``work/`` (the replica's private writable dir,
``HOME``), ``launch/`` (a copy of the launcher, ``spec.json``, the launcher's error files) and
``stdout.log``/``stderr.log`` (written by the replica directly, so it survives an agent restart).

The process is started in a new session (``start_new_session``), so the replica is its own process group
whose id is the handle; stopping signals the whole group. In the sandbox the group also holds the pid
namespace's init, whose death takes every process of the replica with it. The replica *is* its main
process (the launcher, then what it execs): when that dies, whatever it left in the sandbox is killed, so
the death is noticed (bwrap only exits once its sandbox is empty) and reported with the real exit code.

Without bubblewrap (or with ``[local] sandbox = "none"``) the replica runs unsandboxed: ``{model_path}``,
``BACKEND_MODEL_PATH`` and ``MOORAGE_MODELS_DIR`` then point at the model folder on the host, ``HOME`` at the
work dir on the host, and a child that leaves the process group (``setsid``) escapes the stop signals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.runtime import launcher
from agent.runtime.base import (
    EXIT_UNKNOWN,
    LAUNCH_DIR,
    KernelHandle,
    ReplicaPlan,
    RuntimeUnavailable,
    host_model_path,
    launcher_spec,
    replica_environ,
)
from agent.runtime.bwrap import FRESH_MOUNTS, Bind, bwrap_argv
from agent.runtime.logfiles import LaunchFiles
from agent.runtime.procs import (
    children,
    group_members,
    is_running,
    namespace_members,
    pid_namespace,
    signal_group,
    start_ticks,
)
from agent.stats import UsageSample, proc_group_usage

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(launcher.__file__)
KILL_WAIT = 5.0  # seconds to wait for the group to vanish after SIGKILL
STOP_POLL = 0.05


def software_binds(paths: list[str]) -> list[Bind]:
    """Read-only binds for the interpreter/venv the replica runs that would otherwise be hidden by the
    sandbox's fresh mounts (a checkout or venv under /tmp, as in CI clones): the venv root of each path."""
    roots: set[str] = set()
    for path in paths:
        path = os.path.abspath(path)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.basename(directory) == "bin":
            directory = os.path.dirname(directory)
        if any(directory == fresh or directory.startswith(fresh + "/") for fresh in FRESH_MOUNTS):
            roots.add(directory)
    return [Bind(root, root) for root in sorted(roots) if os.path.isdir(root)]


class SandboxUnavailable(RuntimeUnavailable):
    pass


class LocalRuntime(LaunchFiles):
    name = "local"

    def __init__(self, config: AgentConfig, hidden_paths: list[str] | None = None):
        self._local = config.local
        self._agent = config.agent
        self._max_log_bytes = config.agent.max_log_bytes
        hidden = [str(config.agent.state_dir), str(config.agent.storage_root)]
        if config.secrets.cluster_secret_file:
            hidden.append(os.path.abspath(config.secrets.cluster_secret_file))
        hidden += hidden_paths or []
        self._hidden = sorted({os.path.realpath(p) for p in hidden} | {os.path.abspath(p) for p in hidden})
        self.sandboxed = False
        self._bwrap: str | None = None
        # the agent package too: engine launchers (agent.engines) run inside the replica, and an editable
        # install under /tmp (a CI clone) would otherwise be hidden by the sandbox's fresh /tmp
        self._software = software_binds([self._local.python, *self._local.extra_path,
                                         os.path.dirname(os.path.dirname(os.path.abspath(__file__)))])

    # -- setup -----------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        mode = self._local.sandbox
        if mode == "none":
            log.warning("local runtime: [local] sandbox = \"none\": replicas run UNSANDBOXED")
            return
        path = shutil.which(self._local.bwrap_path)
        ok, why = (await asyncio.to_thread(self._probe, path)) if path else (False, "bwrap not found")
        if ok:
            self.sandboxed, self._bwrap = True, path
            log.info("local runtime: replicas run in a bubblewrap sandbox (%s)", path)
            return
        if mode == "bwrap":
            raise SandboxUnavailable(f"[local] sandbox = \"bwrap\" but bubblewrap is not usable: {why}")
        log.warning("local runtime: bubblewrap is not usable (%s); replicas run UNSANDBOXED (model folder "
                    "writable, no private /tmp); install bubblewrap or set [local] sandbox = \"none\"", why)

    def _probe(self, path: str) -> tuple[bool, str]:
        argv = bwrap_argv(path, [], self._hidden, "/", ["/bin/sh", "-c", "exit 0"])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, env={"PATH": os.defpath})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        if proc.returncode != 0:
            return False, (proc.stderr.strip() or f"exit code {proc.returncode}")[:500]
        return True, ""

    def describe(self) -> str:
        return "local (bwrap sandbox)" if self.sandboxed else "local (unsandboxed)"

    # -- start -----------------------------------------------------------------------------------------
    async def start(self, plan: ReplicaPlan, kernel_dir: Path) -> KernelHandle:
        return self._start(plan, kernel_dir)

    def _start(self, plan: ReplicaPlan, kernel_dir: Path) -> KernelHandle:
        work = kernel_dir / "work"
        launch = kernel_dir / "launch"
        work.mkdir(parents=True, exist_ok=True)
        launch.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(LAUNCHER_SOURCE, launch / "launcher.py")
        if self.sandboxed:
            model_path, models_dir = plan.model_path, plan.mount_destination
            work_dir, launch_dir = self._local.work_mount, LAUNCH_DIR
        else:
            model_path = host_model_path(plan.model_path, plan.mount_destination, plan.model_folder)
            models_dir, work_dir, launch_dir = str(plan.model_folder), str(work), str(launch)
        python = self._local.python
        spec = launcher_spec(plan, model_path=model_path, work_dir=work_dir, runtime_path=python)
        (launch / "spec.json").write_text(json.dumps(spec, indent=1))
        env = replica_environ(plan, model_path=model_path, models_dir=models_dir, work_dir=work_dir,
                              extra_path=self._local.extra_path)
        command = [python, f"{launch_dir}/launcher.py", f"{launch_dir}/spec.json"]
        if self.sandboxed:
            assert self._bwrap is not None
            binds = [
                Bind(str(plan.model_folder), plan.mount_destination),
                Bind(str(work), self._local.work_mount, writable=True),
                Bind(str(launch), LAUNCH_DIR, writable=True),
                *self._software,
            ]
            argv = bwrap_argv(self._bwrap, binds, self._hidden, work_dir, command)
        else:
            argv = command
        with open(kernel_dir / "stdout.log", "ab") as out, open(kernel_dir / "stderr.log", "ab") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                    cwd=str(work), start_new_session=True, close_fds=True)
        info = {"pgid": proc.pid, "start_ticks": start_ticks(proc.pid), "sandboxed": self.sandboxed,
                "kernel_dir": str(kernel_dir), "started_at": time.time()}
        return KernelHandle(runtime=self.name, ident=str(proc.pid), info=info, live=proc)

    # -- watch -----------------------------------------------------------------------------------------
    def poll(self, handle: KernelHandle) -> int | None:
        proc: subprocess.Popen[Any] | None = handle.live
        if proc is None:
            pid = int(handle.ident)
            return None if is_running(pid, handle.info.get("start_ticks")) else EXIT_UNKNOWN
        code = proc.poll()
        if code is not None:
            return 128 - code if code < 0 else code
        if handle.info.get("sandboxed"):
            self._end_orphaned_sandbox(handle)
        return None

    @staticmethod
    def _discover_main(handle: KernelHandle) -> bool:
        """Find (once) the sandbox's init (bwrap's child) and the main process (init's first child)."""
        info = handle.info
        if "main_pid" not in info:
            inits = children(int(handle.ident))
            mains = children(inits[0]) if inits else []
            if not mains:
                return False
            info.update(init_pid=inits[0], pid_ns=pid_namespace(inits[0]), main_pid=mains[0],
                        main_ticks=start_ticks(mains[0]))
        return True

    def _end_orphaned_sandbox(self, handle: KernelHandle) -> None:
        """The replica is its main process (the launcher, then what it execs). bwrap's init only exits once
        every process in the sandbox is gone, so when the main process has died, kill what it left behind:
        init then exits with the main process's status, and bwrap with it."""
        info = handle.info
        if not self._discover_main(handle):
            return  # not started yet (or already over: bwrap's exit tells)
        if is_running(info["main_pid"], info["main_ticks"]) or not info.get("pid_ns"):
            return
        for pid in namespace_members(info["pid_ns"]):
            if pid != info["init_pid"]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def is_alive(self, handle: KernelHandle) -> bool:
        pgid = int(handle.info["pgid"])
        if not group_members(pgid):
            return False
        ticks = handle.info.get("start_ticks")
        leader_ticks = start_ticks(pgid)
        return ticks is None or leader_ticks is None or leader_ticks == ticks  # else: the pid was reused

    async def stop(self, handle: KernelHandle, grace: float) -> None:
        pgid = int(handle.info["pgid"])
        if handle.info.get("sandboxed"):
            self._discover_main(handle)
        if group_members(pgid):
            signal_group(pgid, signal.SIGTERM)
            await self._wait_gone(handle, grace)
        if group_members(pgid):
            log.info("kernel group %d still alive after %.1fs; sending SIGKILL", pgid, grace)
            signal_group(pgid, signal.SIGKILL)
            if not await self._wait_gone(handle, KILL_WAIT):
                log.error("kernel group %d survived SIGKILL for %.0fs", pgid, KILL_WAIT)
        self.poll(handle)  # reap our child

    async def _wait_gone(self, handle: KernelHandle, timeout: float) -> bool:
        pgid = int(handle.info["pgid"])
        deadline = time.monotonic() + timeout
        while True:
            self.poll(handle)
            if handle.info.get("sandboxed"):  # bwrap itself dies on SIGTERM at once; its init may linger
                self._end_orphaned_sandbox(handle)
            if not group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(STOP_POLL)

    async def sample_usage(self, handles: list[KernelHandle]) -> dict[str, UsageSample]:
        """CPU time and RSS of each replica's process group (one ``/proc`` pass for all; see agent.stats)."""
        groups = {int(h.info["pgid"]): h.ident for h in handles if h.info.get("pgid")}
        found = await asyncio.to_thread(proc_group_usage, groups)
        return {groups[pgid]: sample for pgid, sample in found.items()}

    # -- files -----------------------------------------------------------------------------------------
    @staticmethod
    def _dir(handle: KernelHandle) -> Path:
        return Path(handle.info["kernel_dir"])

    def _launch_dir(self, handle: KernelHandle) -> Path:
        return self._dir(handle) / "launch"

    def _log_dir(self, handle: KernelHandle) -> Path:
        return self._dir(handle)  # the agent redirects the sandbox's stdout/stderr into the kernel dir

    async def reattach(self, handle: KernelHandle) -> int | None:
        """A replica of a previous agent run: alive when its process group still exists and its leader is the
        same process (pid + start time). It is not our child any more, so its exit status is unknown."""
        handle.live = None
        return None if self.is_alive(handle) else EXIT_UNKNOWN

    async def cleanup_orphans(self, agent_id: str, known: set[str]) -> list[str]:
        """Local replicas are found only through their state files; none can be orphaned otherwise."""
        return []

    async def close(self) -> None:
        return None

    def detach(self, handle: KernelHandle) -> None:
        proc: subprocess.Popen[Any] | None = handle.live
        if proc is not None and proc.poll() is None:
            # Leave it running: mark the Popen settled so that its finaliser neither warns nor reaps the pid
            # behind our back (a restarted agent re-adopts the replica by pid + start time).
            proc.returncode = EXIT_UNKNOWN
        handle.live = None
