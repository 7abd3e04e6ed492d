#!/usr/bin/env python3
"""What a replica's own network namespace costs: one nginx on the host vs the same nginx in a bubblewrap
sandbox with ``--unshare-net``, reached through pasta as the agent sets it up (agent/runtime/netfwd.py), in
one run (loopback only, ~40 s, as root).

    .venv/bin/python bench/netfwd/run.py [--seconds 8] [--connections 32]

wrk (1 thread) measures each twice: throughput (``--connections``) and latency (1 connection, so p50 is the
added per-request time). Prints the ratios. Installs nginx-light, wrk, bubblewrap and passt when missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.runtime.local import read_child_pid  # noqa: E402
from agent.runtime.netfwd import start_forwarder, stop_forwarder  # noqa: E402
from bench._lib.common import Procs, ensure_tools, free_port, print_wrk_table, wait_port, which, wrk  # noqa: E402
from bench.proxy.run import NGINX_CONF, UPSTREAM  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the agent's setup: pasta enters the sandbox's namespace as root)")
    ensure_tools("nginx", "wrk", "bwrap", "pasta")
    tmp = tempfile.mkdtemp(prefix="moorage-bench-netfwd-")
    os.chmod(tmp, 0o755)
    Path(tmp, "www").mkdir()
    Path(tmp, "www", "static").write_bytes(b"x" * 100)
    ports = {"host": free_port(), "sandbox+pasta": free_port()}
    results = {}
    fwd: dict = {}
    sandbox: subprocess.Popen | None = None
    with Procs() as procs:
        try:
            for name, port in ports.items():
                conf = Path(tmp, f"nginx-{port}.conf")
                conf.write_text(NGINX_CONF.format(dir=tmp, name=str(port),
                                                  body=UPSTREAM.format(port=port, dir=tmp)))
                command = [which("nginx"), "-c", str(conf), "-p", tmp]
                if name == "host":
                    wait_port(port, proc=procs.start(command, stderr=subprocess.DEVNULL))
                    continue
                info_r, info_w = os.pipe()
                argv = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                        "--bind", tmp, tmp, "--unshare-net", "--unshare-pid", "--info-fd", str(info_w), "--",
                        *command]
                sandbox = subprocess.Popen(argv, stderr=subprocess.DEVNULL, pass_fds=(info_w,),
                                           start_new_session=True)
                os.close(info_w)
                child = read_child_pid(info_r)
                assert child is not None, "bwrap did not start"
                fwd = start_forwarder(shutil.which("pasta") or "pasta", child, "127.0.0.1", port, Path(tmp))
                wait_port(port, proc=sandbox)
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}/static"
                wrk(url, args.connections, 2)  # warm-up
                results[name] = (wrk(url, args.connections, args.seconds), wrk(url, 1, max(3.0, args.seconds / 2)))
        finally:
            stop_forwarder(fwd)
            if sandbox is not None:
                os.killpg(sandbox.pid, signal.SIGKILL)  # the sandbox's whole process group: nginx and its workers
                sandbox.wait()
    print_wrk_table(results, args.connections)
    host, boxed = results["host"], results["sandbox+pasta"]
    print(f"sandbox+pasta/host: rps ratio (c={args.connections}) = {boxed[0]['rps'] / host[0]['rps']:.2f}, "
          f"(c=1) = {boxed[1]['rps'] / host[1]['rps']:.2f}; p50 added (c=1) = "
          f"{boxed[1]['p50'] - host[1]['p50']:.3f} ms")


if __name__ == "__main__":
    main()
