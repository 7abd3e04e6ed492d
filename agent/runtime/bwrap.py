"""The bubblewrap command line of a sandboxed replica (pure; file-system access is injectable for tests).

A replica is untrusted code (its ``start_command`` and pre-start actions are the user's), so the sandbox is
built from an allow-list, never by hiding a few paths of the host (docs/security.md, "Replica sandbox"):

* ``/`` is an empty tmpfs, remounted read-only at the end. Only the system directories named in
  :data:`SYSTEM_PATHS` (``/usr``, ``/etc``, the ``/bin``/``/lib`` links, ...) and the software the replica
  runs (the interpreter's prefix, the venv, the agent's engine package: ``software`` binds) are bound into it,
  read-only. Nothing of Moorage's own state is there: not the data dir, configs, secrets, databases or logs,
  wherever they live, because nothing outside the allow-list is.
* Sensitive files inside bound system paths are masked (:data:`MASKED_PATHS`: ``/etc/shadow``, sudoers, ssh
  host keys, ...) and so are the operator's hidden paths where they fall under a bound path.
* ``/etc/passwd`` and ``/etc/group`` are replaced by the replica's own (one user, ``work``), so the replica
  learns nothing of the host's accounts and tools that look up their own user name work.
* ``/dev`` holds only the harmless character devices (:data:`DEVICES`) plus a private ``/dev/shm``;
  ``/proc`` belongs to a new pid namespace; ``/tmp`` is a private tmpfs.
* Namespaces: pid, ipc, uts and (unless the host network is asked for) net; the replica's port is reached
  through a forwarder (:mod:`agent.runtime.netfwd`).
* Identity: when the agent is root, the sandbox keeps only CAP_SETUID/CAP_SETGID and its first command is
  ``setpriv``, which switches to the replica's own unprivileged uid/gid (no supplementary groups, no new
  privileges) before any user code runs: files of root and of other replicas stay unreadable even if a
  path leaked in. A non-root agent runs the sandbox in a user namespace as its own uid.
* Not used: ``--die-with-parent`` (replicas must survive an agent restart) and ``--new-session`` (the replica
  must stay in the agent-created process group so that stop signals reach all of it).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

FRESH_MOUNTS = ("/dev", "/proc", "/tmp")  # never taken from the host
# Host directories a program needs to run at all (read-only). /sys stays: CPU topology and GPU libraries
# read it, and it holds no secrets of Moorage's.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
# Inside the bound system paths: what a replica must never read (even where file modes would allow it).
MASKED_PATHS = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
    "/etc/ssh", "/etc/ssl/private", "/etc/moorage", "/etc/machine-id",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")
SETPRIV = "/usr/bin/setpriv"  # util-linux; drops to the replica's uid inside the sandbox


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    writable: bool = False
    device: bool = False  # --dev-bind (GPU device nodes)


@dataclass(frozen=True)
class Identity:
    """Who the replica runs as: ``uid``/``gid`` on the host when the agent is root (``setpriv`` switches to
    them), else None (a user namespace as the agent's own uid)."""

    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class SandboxSpec:
    binds: list[Bind]
    chdir: str
    command: list[str]
    hidden: Iterable[str] = ()  # host paths that must not show even under a bound path
    software: list[str] = field(default_factory=list)  # host dirs bound read-only at the same path
    identity: Identity = Identity()
    isolate_network: bool = True
    info_fd: int | None = None  # bwrap writes {"child-pid": N} there once the namespaces exist
    passwd_file: str | None = None  # host file bound at /etc/passwd (and group_file at /etc/group)
    group_file: str | None = None


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def root_args(
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> list[str]:
    """Arguments that bind the allow-listed system paths read-only (symlinks such as ``/bin -> usr/bin`` are
    recreated as symlinks); paths missing on this host are left out."""
    args: list[str] = []
    for path in SYSTEM_PATHS:
        try:
            st = lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            try:
                args.extend(["--symlink", readlink(path), path])
            except OSError:
                continue
        elif stat.S_ISDIR(st.st_mode):
            args.extend(["--ro-bind", path, path])
    return args


def software_args(software: Iterable[str], lstat: Callable[[str], os.stat_result] = os.lstat) -> list[str]:
    """``--ro-bind DIR DIR`` for each software dir not already inside a system path (triples)."""
    args: list[str] = []
    for path in sorted({_norm(p) for p in software}):
        if path == "/" or any(under(path, s) for s in SYSTEM_PATHS) or any(under(path, f) for f in ("/dev", "/proc")):
            continue
        try:
            if not stat.S_ISDIR(lstat(path).st_mode) and not stat.S_ISLNK(lstat(path).st_mode):
                continue
        except OSError:
            continue
        args.extend(["--ro-bind", path, path])
    return args


def parent_dir_args(dests: Iterable[str]) -> list[str]:
    """``--perms 0755 --dir`` for the missing parents of mount points (bwrap would make them 0700, which an
    unprivileged replica cannot traverse), outermost first; system paths and fresh mounts exist already."""
    parents: set[str] = set()
    for dest in dests:
        parent = posixpath.dirname(_norm(dest))
        while parent != "/":
            parents.add(parent)
            parent = posixpath.dirname(parent)
    args: list[str] = []
    for parent in sorted(parents, key=lambda p: (p.count("/"), p)):
        if parent in FRESH_MOUNTS or any(under(parent, s) for s in SYSTEM_PATHS):
            continue
        args.extend(["--perms", "0755", "--dir", parent])
    return args


def mask_args(
    roots: Iterable[str],
    hidden: Iterable[str],
    lstat: Callable[[str], os.stat_result] = os.lstat,
) -> list[str]:
    """Cover every masked or hidden path that lies under a bound root: an empty tmpfs over a directory,
    ``/dev/null`` over anything else."""
    roots = [_norm(r) for r in roots]
    args: list[str] = []
    for path in sorted({_norm(p) for p in [*MASKED_PATHS, *hidden]}):
        if not any(under(path, r) for r in roots):
            continue
        try:
            st = lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            args.extend(["--tmpfs", path])
        elif stat.S_ISREG(st.st_mode):
            args.extend(["--ro-bind", "/dev/null", path])
    return args


def bwrap_argv(
    bwrap: str,
    spec: SandboxSpec,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> list[str]:
    """The full argv: ``bwrap <system> <dev/proc/tmp> <software> <masks> <binds> --remount-ro / <ns> -- cmd``.

    Software comes after the fresh mounts, so a venv under /tmp (a CI clone) is not hidden by the private
    /tmp; masks come after everything they may cover."""
    argv = [bwrap, "--tmpfs", "/"]
    argv += root_args(lstat=lstat, readlink=readlink)
    argv += ["--tmpfs", "/dev"]
    for device in DEVICES:
        argv += ["--dev-bind-try", device, device]
    argv += ["--symlink", "/proc/self/fd", "/dev/fd", "--symlink", "/proc/self/fd/0", "/dev/stdin",
             "--symlink", "/proc/self/fd/1", "/dev/stdout", "--symlink", "/proc/self/fd/2", "/dev/stderr",
             "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
    software = software_args(spec.software, lstat=lstat)
    argv += parent_dir_args([*software[2::3], *(b.dest for b in spec.binds)])
    argv += software
    argv += mask_args([*SYSTEM_PATHS, *software[2::3]], spec.hidden, lstat=lstat)
    if spec.passwd_file:
        argv += ["--ro-bind", spec.passwd_file, "/etc/passwd"]
    if spec.group_file:
        argv += ["--ro-bind", spec.group_file, "/etc/group"]
    for bind in sorted(spec.binds, key=lambda b: _norm(b.dest).count("/")):
        flag = "--dev-bind" if bind.device else "--bind" if bind.writable else "--ro-bind"
        argv += [flag, bind.source, _norm(bind.dest)]
    argv += ["--remount-ro", "/", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "replica"]
    if spec.isolate_network:
        argv += ["--unshare-net"]
    command = list(spec.command)
    if spec.identity.uid is not None:
        gid = spec.identity.gid if spec.identity.gid is not None else spec.identity.uid
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        command = [SETPRIV, f"--reuid={spec.identity.uid}", f"--regid={gid}", "--clear-groups",
                   "--inh-caps=-all", "--nnp", "--", *command]
    else:
        argv += ["--unshare-user", "--cap-drop", "ALL"]
    if spec.info_fd is not None:
        argv += ["--info-fd", str(spec.info_fd)]
    argv += ["--chdir", spec.chdir, "--", *command]
    return argv


def passwd_lines(uid: int, gid: int, home: str) -> tuple[str, str]:
    """``/etc/passwd`` and ``/etc/group`` of a sandbox: root, nobody and the replica's user ``work``."""
    passwd = (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
              f"work:x:{uid}:{gid}:replica:{home}:/bin/sh\n"
              f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = f"root:x:0:\nwork:x:{gid}:\nnogroup:x:65534:\n"
    return passwd, group
