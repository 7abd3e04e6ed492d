"""The ``local`` kernel runtime: the launcher as a subprocess in a bubblewrap sandbox.

Per kernel, under ``state_dir/kernels/<kernel_id>/``: ``work/`` (the replica's private writable dir,
``HOME``), ``launch/`` (a copy of the launcher, ``spec.json``, the launcher's error files),
``stdout.log``/``stderr.log`` (written by the replica directly, so it survives an agent restart) and the
sandbox's ``passwd``/``group`` files.

The sandbox (:mod:`agent.runtime.bwrap`) shows the replica only the system directories, its software, its
model folder (read-only) and its own work and launch dirs; it runs as an unprivileged uid of its own (from
``[local] uid_base``) when the agent is root, and in a network namespace of its own whose port the agent
forwards (:mod:`agent.runtime.netfwd`). See docs/security.md.

The process is started in a new session (``start_new_session``), so the replica is its own process group
whose id is the handle; stopping signals the whole group. The group also holds the pid namespace's init,
whose death takes every process of the replica with it. The replica *is* its main process (the launcher,
then what it execs): when that dies, whatever it left in the sandbox is killed, so the death is noticed
(bwrap only exits once its sandbox is empty) and reported with the real exit code.

No silent fallback: when bubblewrap (or pasta, for the network namespace) does not work here, the agent
refuses to start. Only an explicit ``[local] sandbox = "none"`` runs replicas unsandboxed (as the agent's
user, on the host network, seeing the whole host); the agent then says so in its log and in every
kernel's report, and ``service info`` shows it.
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
from agent.runtime.bwrap import (
    SETPRIV,
    SYSTEM_PATHS,
    Bind,
    Identity,
    SandboxSpec,
    bwrap_argv,
    passwd_lines,
    under,
)
from agent.runtime.logfiles import LaunchFiles
from agent.runtime.netfwd import ForwarderFailed, start_forwarder, stop_forwarder
from agent.runtime.procs import (
    children,
    group_members,
    is_running,
    namespace_members,
    pid_namespace,
    signal_group,
    start_ticks,
)
from agent.runtime.uids import UidPool, hand_over
from agent.stats import UsageSample, proc_group_usage

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(launcher.__file__)
KILL_WAIT = 5.0  # seconds to wait for the group to vanish after SIGKILL
STOP_POLL = 0.05
NAMESPACE_WAIT = 5.0  # seconds for bwrap to create the sandbox's namespaces (its first child) after exec


def software_roots(paths: list[str]) -> list[str]:
    """Host dirs the replica's software needs, bound read-only at the same path: for each interpreter, venv
    or PATH entry its root (``.../bin`` -> ``...``), and the prefix of the real interpreter behind a venv's
    symlink. Paths already inside the bound system dirs need nothing more."""
    roots: set[str] = set()
    for path in paths:
        candidates = [os.path.abspath(path)]
        real = os.path.realpath(path)
        if real != candidates[0]:
            candidates.append(real)
        for candidate in candidates:
            directory = candidate if os.path.isdir(candidate) else os.path.dirname(candidate)
            if os.path.basename(directory) == "bin":
                directory = os.path.dirname(directory)
            if directory in ("", "/") or any(under(directory, system) for system in SYSTEM_PATHS):
                continue
            roots.add(directory)
    # the outermost roots only: a venv inside a bound checkout needs no bind of its own
    return sorted(r for r in roots if os.path.isdir(r) and not any(o != r and under(r, o) for o in roots))


GPU_DEVICE_GLOB = "/dev/nvidia*"  # nvidiactl, nvidia-uvm(-tools), nvidia-modeset, nvidia0..N


def gpu_device_binds(gpu_devices: list[str], found: list[str] | None = None) -> list[Bind]:
    """The NVIDIA device nodes for a replica that was given GPUs (none otherwise). All of them: which GPUs it
    may use is CUDA_VISIBLE_DEVICES (by UUID) in its environment, as for Backend.AI's local kernels."""
    if not gpu_devices:
        return []
    import glob

    nodes = sorted(glob.glob(GPU_DEVICE_GLOB)) if found is None else found
    return [Bind(node, node, writable=True, device=True) for node in nodes if not node.endswith("/nvidia-caps")]


class SandboxUnavailable(RuntimeUnavailable):
    pass


def _whoami() -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except KeyError:
        return f"uid {os.geteuid()}"


def read_child_pid(info_fd: int, timeout: float = NAMESPACE_WAIT) -> int | None:
    """The sandbox's init pid (in the new namespaces) from bwrap's ``--info-fd``; None when bwrap ended
    without writing it or took longer than ``timeout``. Closes ``info_fd``."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    try:
        while b"}" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([info_fd], [], [], left)[0]:
                return None
            chunk = os.read(info_fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(info_fd)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


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
        self._pasta: str | None = None
        self._privileged = os.geteuid() == 0  # root: replicas get uids of their own; else a user namespace
        self._uids = UidPool(config.replica_uids.base, config.replica_uids.count)
        # The agent package too: engine launchers (agent.engines) run inside the replica.
        agent_package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._software = software_roots([self._local.python, *self._local.extra_path, agent_package,
                                         *self._local.readonly_paths])

    @property
    def unsandboxed(self) -> bool:
        """Replicas run without any sandbox (only with an explicit ``[local] sandbox = "none"``)."""
        return self._local.sandbox == "none"

    @property
    def isolates_network(self) -> bool:
        return self.sandboxed and self._local.network == "isolated"

    # -- setup -----------------------------------------------------------------------------------------
    async def prepare(self) -> None:
        if self._local.sandbox == "none":
            log.warning("local runtime: [local] sandbox = \"none\": replicas run UNSANDBOXED as %s, on the "
                        "host network, and can read whatever this user can", _whoami())
            return
        bwrap = shutil.which(self._local.bwrap_path)
        if not bwrap:
            raise SandboxUnavailable(f"bubblewrap ({self._local.bwrap_path!r}) is not installed; install it "
                                     "(apt-get install bubblewrap) or set [local] sandbox = \"none\" to run "
                                     "replicas unsandboxed")
        pasta = None
        if self._local.network == "isolated":
            pasta = shutil.which(self._local.pasta_path)
            if not pasta:
                raise SandboxUnavailable(f"pasta ({self._local.pasta_path!r}) is not installed; install it "
                                         "(apt-get install passt) or set [local] network = \"host\"")
        if self._privileged and not os.path.exists(SETPRIV):
            raise SandboxUnavailable(f"{SETPRIV} (util-linux) is needed to run replicas as their own uid")
        ok, why = await asyncio.to_thread(self._probe, bwrap, pasta)
        if not ok:
            raise SandboxUnavailable(f"the replica sandbox does not work here: {why}; fix it or set [local] "
                                     "sandbox = \"none\" to run replicas unsandboxed")
        self.sandboxed, self._bwrap, self._pasta = True, bwrap, pasta
        log.info("local runtime: replicas run in a bubblewrap sandbox (%s), %s, %s", bwrap,
                 "own uid each" if self._privileged else "user namespace",
                 "own network namespace" if pasta else "HOST network")

    def _probe(self, bwrap: str, pasta: str | None) -> tuple[bool, str]:
        """Start a sandbox exactly as a replica's (identity, namespaces) and, with the network isolated,
        attach pasta to it: the agent fails at start, not at the first replica."""
        import tempfile

        base = self._uids.base
        identity = Identity(base, base) if self._privileged else Identity()
        info_r, info_w = os.pipe()
        spec = SandboxSpec(binds=[], chdir="/", command=["/bin/sh", "-c", "read _ || true"],
                           hidden=self._hidden, software=self._software, identity=identity,
                           isolate_network=pasta is not None, info_fd=info_w)
        argv = bwrap_argv(bwrap, spec)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env={"PATH": os.defpath},
                                    start_new_session=True, pass_fds=(info_w,))
        except OSError as exc:
            os.close(info_r)
            return False, str(exc)
        finally:
            os.close(info_w)
        try:
            init = read_child_pid(info_r)
            if pasta is not None:
                if init is None:
                    proc.kill()
                    return False, (proc.communicate(timeout=5)[1] or "bwrap exited at once").strip()[:500]
                with tempfile.TemporaryDirectory(prefix="moorage-probe-") as tmp:
                    try:
                        from agent.ports import port_is_bindable

                        low, high = self._agent.port_range
                        port = next(p for p in range(high, low - 1, -1) if port_is_bindable(p))
                        info = start_forwarder(pasta, init, self._agent.replica_host, port, Path(tmp),
                                               userns=not self._privileged)
                        stop_forwarder(info)
                    except (ForwarderFailed, StopIteration) as exc:
                        proc.kill()
                        return False, f"pasta: {exc}"
            _, err = proc.communicate(input="\n", timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return False, "the probe sandbox did not exit"
        if proc.returncode != 0:
            return False, (err.strip() or f"exit code {proc.returncode}")[:500]
        return True, ""

    def describe(self) -> str:
        if not self.sandboxed:
            return "local (UNSANDBOXED)"
        who = "own uid" if self._privileged else "user namespace"
        net = "own network namespace" if self.isolates_network else "host network"
        return f"local (bwrap sandbox, {who}, {net})"

    # -- start -----------------------------------------------------------------------------------------
    async def start(self, plan: ReplicaPlan, kernel_dir: Path) -> KernelHandle:
        handle, info_fd = self._start(plan, kernel_dir)
        if info_fd is not None:
            try:
                await asyncio.to_thread(self._attach_forwarder, handle, info_fd, plan.port, kernel_dir,
                                        plan.network_outbound)
            except Exception:
                await self.stop(handle, 0)
                raise
        return handle

    def _attach_forwarder(self, handle: KernelHandle, info_fd: int, port: int, kernel_dir: Path,
                          outbound: bool) -> None:
        assert self._pasta is not None
        init = read_child_pid(info_fd)
        if init is None:
            raise RuntimeUnavailable("the sandbox ended before its network could be set up")
        handle.info.update(start_forwarder(self._pasta, init, self._agent.replica_host, port, kernel_dir,
                                           userns=not self._privileged, outbound=outbound))

    def _start(self, plan: ReplicaPlan, kernel_dir: Path) -> tuple[KernelHandle, int | None]:
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
        uid: int | None = None
        info_r = info_w = None
        if self.sandboxed:
            assert self._bwrap is not None
            identity = Identity()
            if self._privileged:
                uid = self._uids.take()
                identity = Identity(uid, uid)
                hand_over(work, launch, uid)
            passwd, group = passwd_lines(uid if uid is not None else os.getuid(),
                                         uid if uid is not None else os.getgid(), work_dir)
            for name, text in (("passwd", passwd), ("group", group)):
                (kernel_dir / name).write_text(text)
                os.chmod(kernel_dir / name, 0o644)  # the replica's uid reads them (the agent runs with umask 077)
            env.update({"USER": "work", "LOGNAME": "work"})
            binds = [
                Bind(str(plan.model_folder), plan.mount_destination),
                Bind(str(work), self._local.work_mount, writable=True),
                Bind(str(launch), LAUNCH_DIR, writable=True),
                *gpu_device_binds(plan.gpu_devices),
            ]
            if self.isolates_network:
                info_r, info_w = os.pipe()
            sandbox = SandboxSpec(binds=binds, chdir=work_dir, command=command, hidden=self._hidden,
                                  software=self._software, identity=identity,
                                  isolate_network=self.isolates_network, info_fd=info_w,
                                  passwd_file=str(kernel_dir / "passwd"), group_file=str(kernel_dir / "group"))
            argv = bwrap_argv(self._bwrap, sandbox)
        else:
            argv = command
        try:
            with open(kernel_dir / "stdout.log", "ab") as out, open(kernel_dir / "stderr.log", "ab") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                        cwd=str(work), start_new_session=True, close_fds=True,
                                        pass_fds=() if info_w is None else (info_w,))
        except BaseException:
            self._uids.release(uid)
            if info_r is not None:
                os.close(info_r)
            raise
        finally:
            if info_w is not None:
                os.close(info_w)
        info = {"pgid": proc.pid, "start_ticks": start_ticks(proc.pid), "sandboxed": self.sandboxed,
                "kernel_dir": str(kernel_dir), "started_at": time.time(), "uid": uid,
                "network": "isolated" if self.isolates_network else "host"}
        return KernelHandle(runtime=self.name, ident=str(proc.pid), info=info, live=proc), info_r

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
        stop_forwarder(handle.info)  # pasta outlives the namespace; the port must be free again
        self._uids.release(handle.info.get("uid"))

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
        if self.is_alive(handle):
            if handle.info.get("uid") is not None:
                self._uids.hold(int(handle.info["uid"]))
            return None
        stop_forwarder(handle.info)
        return EXIT_UNKNOWN

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
