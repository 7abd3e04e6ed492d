"""A private, real dockerd for the docker-runtime tests, and a small local image with python3.

* :func:`rootfs_tarball` builds a Debian bookworm ``minbase`` rootfs with ``python3`` using debootstrap (about a
  minute with a reachable mirror) and caches the tarball under ``~/.cache/moorage/images/`` (override with
  ``MOORAGE_IMAGE_CACHE``; mirror: ``MOORAGE_DEBIAN_MIRROR``). A file lock serialises concurrent builds.
* :class:`Dockerd` starts ``dockerd`` with its own data root, exec root, socket and pidfile in a fresh
  directory (``--storage-driver=vfs --bridge=none --iptables=false``: nothing on the host's network or
  firewall changes), imports the tarball as :data:`IMAGE`, and on :meth:`Dockerd.stop` removes every
  container, stops the daemon (and its containerd) and deletes the directory.

``make test`` installs ``docker.io`` and ``debootstrap`` (``.ci/install-system-deps``); nothing is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

IMAGE = "moorage-test/python3:bookworm"
CACHE_DIR = Path(os.environ.get("MOORAGE_IMAGE_CACHE") or Path.home() / ".cache" / "moorage" / "images")
ROOTFS_TAR = CACHE_DIR / "bookworm-minbase-python3.tar"
MIRROR = os.environ.get("MOORAGE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Dropped from the rootfs: documentation and package caches (vfs copies the whole rootfs per container).
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
         "var/lib/apt/lists", "var/cache/debconf/templates.dat-old"]


def _require(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if not path:
        raise RuntimeError(f"{binary} is not installed: run `make system-deps` (.ci/install-system-deps)")
    return path


def rootfs_tarball() -> Path:
    """The cached rootfs tarball, built with debootstrap on first use."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ROOTFS_TAR.exists():
            return ROOTFS_TAR
        debootstrap = _require("debootstrap")
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
        try:
            rootfs = work / "rootfs"
            proc = subprocess.run([debootstrap, "--variant=minbase", "--include=python3", "bookworm", str(rootfs),
                                   MIRROR], capture_output=True, text=True, timeout=1200, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                   f"{proc.stderr[-3000:]}")
            for rel in PRUNE:
                shutil.rmtree(rootfs / rel, ignore_errors=True)
            tmp = work / "rootfs.tar"
            subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tmp), "."], check=True,
                           timeout=600)
            os.replace(tmp, ROOTFS_TAR)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return ROOTFS_TAR


class Dockerd:
    def __init__(self) -> None:
        self.dockerd = _require("dockerd")
        self.docker_cli = _require("docker")
        base_parent = Path(os.environ.get("MOORAGE_DOCKERD_DIR") or Path.home() / ".cache" / "moorage" / "dockerd")
        base_parent.mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix="run-", dir=base_parent))
        # Unix socket paths are limited to 107 bytes: keep the socket (and exec root) short, under /tmp.
        self.short = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
        self.socket_path = self.short / "docker.sock"
        self.socket = f"unix://{self.socket_path}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "dockerd.log"

    def cli(self, *args: str, timeout: float = 300, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.docker_cli, "-H", self.socket, *args], capture_output=True, timeout=timeout,
                              input=stdin, check=False)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                             proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr}\n{self.log_tail()}")
        return result

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self, timeout: float = 90) -> None:
        args = [self.dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
                "--data-root", str(self.base / "data"), "--exec-root", str(self.short / "exec"),
                "-H", self.socket, "--pidfile", str(self.short / "dockerd.pid"), "--userland-proxy=false",
                "--log-level=warn"]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket_path.exists() and self.cli("version", "--format", "{{.Server.Version}}",
                                                      check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")

    def import_image(self, tarball: Path, image: str = IMAGE) -> None:
        env = json.dumps(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
        self.cli("import", "--change", f"ENV {' '.join(json.loads(env))}", "--change", 'CMD ["python3"]',
                 str(tarball), image, timeout=600)

    def containers(self, all_: bool = True, label: str = "ai.moorage.managed=true") -> list[str]:
        args = ["ps", "-q", "--no-trunc", "--filter", f"label={label}"] + (["-a"] if all_ else [])
        return self.cli(*args).stdout.split()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.cli("ps", "-aq", timeout=30, check=False).stdout.split()
                if ids:
                    self.cli("rm", "-f", *ids, timeout=120, check=False)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        _kill_leftover_containerd(self.short)
        for path in (self.base, self.short):
            _rmtree_mounted(path)


def _kill_leftover_containerd(exec_root: Path) -> None:
    """dockerd's managed containerd (and shims) whose command line names our exec root."""
    marker = str(exec_root)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(name) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(name), signal.SIGKILL)


def _rmtree_mounted(path: Path) -> None:
    """Remove a tree, unmounting what dockerd/containerd may have left mounted below it first."""
    if not path.exists():
        return
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = urllib.parse.unquote(line.split()[1].replace("\\040", " "))
            if target == str(path) or target.startswith(str(path) + "/"):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_dockerd() -> Iterator[Dockerd]:
    """A private dockerd with the test image imported; stopped (every container removed) afterwards."""
    tarball = rootfs_tarball()
    daemon = Dockerd()
    try:
        daemon.start()
        daemon.import_image(tarball)
        yield daemon
    finally:
        daemon.stop()
