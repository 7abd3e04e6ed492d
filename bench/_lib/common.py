"""Shared helpers for the benchmarks: tools, processes, ports, wrk output parsing. Loopback traffic only."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
LIB = Path(__file__).resolve().parent


def ensure_tools(*names: str) -> None:
    """apt-get install what is missing (nginx-light provides nginx, wrk provides wrk)."""
    packages = {"nginx": "nginx-light", "wrk": "wrk", "bwrap": "bubblewrap", "pasta": "passt"}
    missing = [packages[n] for n in names if shutil.which(n) is None and not os.path.exists(f"/usr/sbin/{n}")]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False, stdout=subprocess.DEVNULL)
        if any(shutil.which(n) is None and not os.path.exists(f"/usr/sbin/{n}") for n in names):
            subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL)


def which(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def raise_nofile(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Procs:
    """Processes started by a benchmark; all stopped (TERM, then KILL) on exit, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO), **kwargs.pop("env", {})}
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        proc = subprocess.Popen(args, env=env, cwd=REPO, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, seconds: float, threads: int = 1, script: str | None = None) -> dict[str, float]:
    """Run wrk (with a Lua ``script`` when given); return rps, p50/p99 in ms, the request count and the error
    count (socket errors + non-2xx)."""
    args = [which("wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if script is not None:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "requests": float(re.search(r"(\d+) requests in", out).group(1))}
    for pct, key in (("50%", "p50"), ("99%", "p99")):
        result[key] = _ms(re.search(rf"^\s+{pct}\s+(\S+)", out, re.M).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    result["errors"] = errors
    return result


def print_wrk_table(results: dict[str, tuple[dict[str, float], dict[str, float]]], connections: int) -> None:
    """The machine line and one row per target: wrk under load (``connections``) and with one connection."""
    import platform

    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"{'target':<16} {'rps(c=' + str(connections) + ')':>12} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} | {'rps(c=1)':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (load, single) in results.items():
        print(f"{name:<16} {load['rps']:>12.0f} {load['p50']:>8.3f} {load['p99']:>8.3f} "
              f"{load['errors'] + single['errors']:>6} | {single['rps']:>9.0f} {single['p50']:>8.3f} "
              f"{single['p99']:>8.3f}")
