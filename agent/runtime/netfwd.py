"""A replica's port, reached from the host while the replica itself lives in a network namespace of its own.

Each replica (local sandbox or Docker container) runs with no network but its own loopback: it cannot reach
the manager, the agent's RPC, etcd, Redis, PostgreSQL, other replicas or anything else on the host or beyond
(docs/security.md, "Replica network"). The one way in is its serving port: ``pasta`` (from the passt
project) listens on ``replica_host:port`` on the host and hands every connection to the same port inside the
replica's namespace. Connections from the host's loopback are spliced to the namespace's loopback, so a
replica may listen on 127.0.0.1 or 0.0.0.0 alike; the app proxy and the agent's health checks connect as
before.

When ``replica_host`` is not a loopback address (app proxies on other hosts), or the service allows
outbound connections (``network_outbound``, e.g. to download weights), pasta also configures a tap interface
in the namespace (``--config-net``): remote connections arrive there (the replica must then listen on
0.0.0.0), and outbound ones leave through pasta's NAT, never to the host's loopback (no mapping of the
gateway to the host). Operators restrict who may connect to the replica port range with the host firewall.

pasta runs as root only to enter the namespace (owned by the host's user namespace); it then confines
itself (empty mount namespace, seccomp, no new privileges). It daemonises and writes its pid file; the pid
and start time go into the kernel's handle so that a restarted agent can still stop it. It does not exit
with the namespace, so :func:`stop_forwarder` is called whenever a replica ends.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.runtime.procs import is_running, start_ticks

START_TIMEOUT = 10.0  # seconds for pasta to join the namespace, bind the port and daemonise
NAMESPACE_RETRY = 0.02  # seconds between attempts while the sandbox is still being set up
PID_FILE = "netfwd.pid"
NETNS_FILE = "netns"  # a pinned namespace (bind mount) in the kernel dir


class ForwarderFailed(RuntimeError):
    """pasta could not start (port taken, namespace gone, pasta missing)."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def pasta_argv(pasta: str, netns: str, host: str, port: int, pid_file: str, *, run_as_root: bool,
               userns: str | None = None, outbound: bool = False) -> list[str]:
    """The pasta command line that forwards ``host:port`` into the namespace at ``netns`` (pure). With
    ``outbound`` (or a non-loopback ``host``) the namespace also gets pasta's address and default route, so
    the replica can open connections out through pasta; never to the host's loopback (no gateway mapping)."""
    argv = [pasta, "--netns", netns]
    if userns:
        argv += ["--userns", userns]
    else:
        argv += ["--netns-only"]
    if run_as_root:
        argv += ["--runas", "0"]  # entering a namespace of the host's user namespace needs root
    bind = f"[{host}]" if ":" in host else host
    argv += ["-t", f"{bind}/{port}", "-T", "none", "-U", "none", "-u", "none", "--no-map-gw", "--no-icmp",
             "-q", "-P", pid_file]
    if outbound or not is_loopback(host):
        argv += ["--config-net"]  # remote proxies arrive, and outbound leaves, over pasta's tap interface
    return argv


def pin_namespace(target_pid: int, state_dir: Path) -> str:
    """Bind-mount the network namespace of ``target_pid`` onto ``state_dir/netns`` (as ``ip netns attach``
    does) and return that path. pasta sheds CAP_SYS_PTRACE before it opens the namespace, so it cannot open
    ``/proc/PID/ns/net`` of a process of another uid (a container running as the replica's uid); the pinned
    file is opened with ordinary file permissions instead. It is unmounted as soon as pasta has started."""
    path = state_dir / NETNS_FILE
    subprocess.run(["umount", "-l", str(path)], capture_output=True, env={"PATH": os.defpath})
    path.touch(mode=0o600, exist_ok=True)
    proc = subprocess.run(["mount", "--bind", f"/proc/{target_pid}/ns/net", str(path)], capture_output=True,
                          text=True, env={"PATH": os.defpath})
    if proc.returncode != 0:
        raise ForwarderFailed(f"cannot pin the network namespace of pid {target_pid}: {proc.stderr.strip()}")
    return str(path)


def start_forwarder(pasta: str, target_pid: int, host: str, port: int, state_dir: Path,
                    *, userns: bool = False, pin: bool = False, outbound: bool = False) -> dict[str, Any]:
    """Start pasta for the namespace of ``target_pid`` (pinned first with ``pin``, and unpinned again once
    pasta holds it); return what :func:`stop_forwarder` needs."""
    pid_file = state_dir / PID_FILE
    pid_file.unlink(missing_ok=True)
    netns = pin_namespace(target_pid, state_dir) if pin else f"/proc/{target_pid}/ns/net"
    try:
        _run_pasta(pasta_argv(pasta, netns, host, port, str(pid_file), run_as_root=os.geteuid() == 0,
                              userns=f"/proc/{target_pid}/ns/user" if userns else None, outbound=outbound),
                   netns)
    finally:
        if pin:  # pasta holds the namespace open now (or failed): the pin would only outlive the replica
            subprocess.run(["umount", "-l", netns], capture_output=True, env={"PATH": os.defpath})
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ForwarderFailed(f"pasta wrote no pid file: {exc}") from None
    return {"fwd_pid": pid, "fwd_ticks": start_ticks(pid)}


def _run_pasta(argv: list[str], netns: str) -> None:
    """Run pasta until it has daemonised (its setup done), retrying while the namespace is not open to it."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT,
                                  stdin=subprocess.DEVNULL, env={"PATH": os.defpath})
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ForwarderFailed(f"pasta did not start: {exc}") from None
        if proc.returncode == 0:
            return
        message = " ".join(line for line in (proc.stderr + proc.stdout).splitlines() if "syslog" not in line)
        # While bwrap sets the sandbox up, its process is not dumpable and pasta (which has shed the
        # capability to look at such processes) cannot open the namespace yet: try again shortly.
        if "open network namespace" in message and os.path.exists(netns) and time.monotonic() < deadline:
            time.sleep(NAMESPACE_RETRY)
            continue
        hint = " (a non-root agent needs /dev/net/tun usable by its user: mode 0666, Debian's default)" \
            if "tun" in message and os.geteuid() != 0 else ""
        raise ForwarderFailed(f"pasta exited with {proc.returncode}: {message[-400:]}{hint}")


def stop_forwarder(info: dict[str, Any]) -> None:
    """End the forwarder recorded in ``info`` (if it is still the same process); idempotent."""
    pid = info.get("fwd_pid")
    if not pid or not is_running(int(pid), info.get("fwd_ticks")):
        return
    try:
        os.kill(int(pid), signal.SIGKILL)  # pasta holds no state worth a graceful stop
    except OSError:
        pass
