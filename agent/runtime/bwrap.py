"""The bubblewrap command line of a sandboxed replica (pure; file-system access is injectable for tests).

Layout inside the sandbox:

* ``/`` is a tmpfs, remounted read-only at the end, on which the host's root entries are bind-mounted
  read-only. Building the root this way (instead of ``--ro-bind / /``) lets bwrap create mount points such
  as ``/models`` or ``/home/work`` that do not exist on the host: on the way to a mount point, the parent
  directories are rebuilt entry by entry ("punched through"), so their other contents stay visible.
* ``/dev`` (minimal devices, with a private ``/dev/shm`` for multiprocessing), ``/proc`` (of a new pid
  namespace) and ``/tmp`` (private tmpfs; both sticky and world-writable) are fresh.
* The model folder is bound read-only at the mount destination, the kernel's work dir read-write at the work
  mount, the launch dir (launcher + spec) read-write at :data:`agent.runtime.base.LAUNCH_DIR`.
* Hidden paths (the agent's state dir with other kernels' dirs, the storage root with other folders, the
  secret file) are left out of the rebuilt root.
* ``--unshare-pid``: the replica's processes live in their own pid namespace, so killing the namespace's
  init (in our process group) takes down everything, even processes that called ``setsid``; ``/proc`` shows
  only the replica. ``--cap-drop ALL``: root in the sandbox has no capabilities (cannot remount).
* Not used: ``--die-with-parent`` (replicas must survive an agent restart) and ``--new-session`` (the
  replica must stay in the agent-created process group so that stop signals reach all of it). The network
  is shared: replicas listen on their host port.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FRESH_MOUNTS = ("/dev", "/proc", "/tmp")  # never taken from the host


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    writable: bool = False


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def root_args(
    excluded: Iterable[str],
    listdir: Callable[[str], list[str]] = os.listdir,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> list[str]:
    """Arguments that rebuild the host's root read-only, minus ``excluded`` paths (mount points and hidden
    paths) and :data:`FRESH_MOUNTS`; siblings of excluded paths stay visible."""
    skip = {_norm(p) for p in excluded}
    skip = {p for p in skip if p != "/" and not any(_under(p, fresh) for fresh in FRESH_MOUNTS)}
    args: list[str] = []

    def walk(directory: str) -> None:
        try:
            names = sorted(listdir(directory))
        except OSError:
            return
        for name in names:
            path = posixpath.join(directory, name)
            if path in FRESH_MOUNTS or path in skip:
                continue
            try:
                st = lstat(path)
            except OSError:
                continue
            if any(_under(p, path) for p in skip):
                if stat.S_ISDIR(st.st_mode):
                    walk(path)  # a directory on the way to a mount point: punch through
                continue  # a file or symlink where a mount point must go: leave it out
            if stat.S_ISLNK(st.st_mode):
                try:
                    args.extend(["--symlink", readlink(path), path])
                except OSError:
                    continue
            elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                args.extend(["--ro-bind", path, path])
            # sockets, fifos and devices outside /dev are not carried over

    walk("/")
    return args


def bwrap_argv(
    bwrap: str,
    binds: list[Bind],
    hidden: Iterable[str],
    chdir: str,
    command: list[str],
    listdir: Callable[[str], list[str]] = os.listdir,
    lstat: Callable[[str], os.stat_result] = os.lstat,
    readlink: Callable[[str], str] = os.readlink,
) -> list[str]:
    """The full argv: ``bwrap <root> <fresh mounts> <binds> --remount-ro / ... -- command``."""
    dests = [_norm(b.dest) for b in binds]
    argv = [bwrap, "--tmpfs", "/"]
    argv += root_args([*dests, *hidden], listdir=listdir, lstat=lstat, readlink=readlink)
    argv += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc",
             "--perms", "1777", "--tmpfs", "/tmp"]
    for bind in sorted(binds, key=lambda b: _norm(b.dest).count("/")):
        argv += ["--bind" if bind.writable else "--ro-bind", bind.source, _norm(bind.dest)]
    argv += ["--remount-ro", "/", "--unshare-pid", "--cap-drop", "ALL", "--chdir", chdir, "--", *command]
    return argv
