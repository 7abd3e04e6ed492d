"""``python -m appproxy --config appproxy.toml [--workers N]``: the app proxy as its own process(es), against etcd.

One worker (the default): this process serves. SIGTERM/SIGINT stop it cleanly (ports closed, in-flight requests
get ``proxy.shutdown_timeout``), exit status 0.

``--workers N`` (or ``[proxy] workers``) with N > 1: this process becomes a supervisor that starts N worker
processes (``python -m appproxy --worker-index k``). They bind the same ports with SO_REUSEPORT, so the kernel
spreads connections over them; each has its own etcd watch, route cache, upstream pool and metrics, and worker k
serves its admin listener on ``admin_port + k``. The supervisor forwards SIGTERM/SIGINT to the workers and exits
when they have all exited (status 0 when they all did). If a worker dies on its own, the supervisor stops the
others and exits non-zero: a half-sized proxy is left to the service manager (systemd ``Restart=``) to restart
as a whole rather than limping on. Workers get SIGTERM if the supervisor itself is killed (Linux
``PR_SET_PDEATHSIG``).

A configuration error exits with status 2 and a one-line message (checked before any worker starts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys

from appproxy.config import ProxyConfig, load_proxy_config
from appproxy.server import AppProxy, tune_gc
from common.aio import STOP_SIGNALS, stop_on_signals
from common.config import ConfigError
from common.fileperms import private_umask
from common.store import EtcdStore

log = logging.getLogger("appproxy")



async def serve(config: ProxyConfig, worker_index: int = 0, workers: int = 1) -> int:
    store = EtcdStore.from_config(config.etcd)
    try:
        await store.check()  # a wrong etcd password stops the proxy here, in one line
    except BaseException:
        await store.close()
        raise
    proxy = AppProxy(config, store, worker_index=worker_index, reuse_port=workers > 1,
                     lease_store_factory=store.clone)
    try:
        with stop_on_signals() as stopping:
            await proxy.start()
            tune_gc()
            log.info("app proxy ready (etcd %s:%d)", config.etcd.host, config.etcd.port)
            await stopping.wait()
            log.info("stopping")
    finally:
        await proxy.stop()
        await store.close()
    return 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(args: argparse.Namespace, workers: int) -> int:
    stopping = False
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    base = [sys.executable, "-m", "appproxy", "--log-level", args.log_level, "--workers", str(workers)]
    if args.config:
        base += ["--config", args.config]
    for index in range(workers):
        proc = subprocess.Popen([*base, "--worker-index", str(index)], preexec_fn=_die_with_parent)
        procs[proc.pid] = proc
    log.info("supervisor %d started %d workers: %s", os.getpid(), workers, sorted(procs))
    if stopping:  # a signal arrived while the workers were being started
        forward(signal.SIGTERM, None)
    status = 0
    alive = dict(procs)
    while alive:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        exited = alive.pop(pid, None)
        if exited is None:
            continue
        exited.returncode = code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            status = status or (code if code > 0 else 1)
        if not stopping:
            log.error("worker %d exited on its own (status %d); stopping the others", pid, code)
            status = status or 1
            forward(signal.SIGTERM, None)
    log.info("all workers exited; supervisor exits with %d", status)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appproxy", description="Moorage app proxy")
    parser.add_argument("--config", "-c", metavar="PATH",
                        help="TOML config file (keys can be overridden by MOORAGE_APPPROXY__SECTION__KEY)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes sharing the ports (default: [proxy] workers, 1)")
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    args = parser.parse_args(argv)
    private_umask()  # anything the proxy writes (workers inherit it) is 0600
    worker = "" if args.worker_index is None else f"[w{args.worker_index}] "
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s")
    try:
        config = load_proxy_config(args.config)
        config.jwt_secret()
        config.cluster_secret()
        config.server_ssl_context()  # certificate and key readable, matching (before any worker starts)
        config.etcd.credentials()  # the password file's mode, before any worker starts
        workers = args.workers if args.workers is not None else config.proxy.workers
        if not 1 <= workers <= 64:
            raise ConfigError("--workers must be between 1 and 64")
        if args.worker_index is None and workers > 1:
            return supervise(args, workers)
        return asyncio.run(serve(config, args.worker_index or 0, workers))
    except ConfigError as exc:
        print(f"appproxy: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
