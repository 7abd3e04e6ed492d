"""``moorage up`` (embedded mode in one process) and ``moorage down``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.config import ConfigError
from common.fileperms import private_umask
from manager.cli.connection import CLIError, resolve_data_dir

LOG_FILE = "moorage.log"  # = manager.embedded.LOG_FILE (not imported: every CLI command loads this module)


def _parse_range(value: str) -> tuple[int, int]:
    try:
        low, high = (int(x) for x in value.split("-", 1))
    except ValueError:
        raise argparse.ArgumentTypeError("expected LOW-HIGH, e.g. 10300-10399") from None
    return low, high


def _data_dir(args: argparse.Namespace) -> Path:
    return resolve_data_dir(getattr(args, "data_dir", None))


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CLIError(f"moorage up exited with status {proc.returncode}; see the log")
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise CLIError(f"moorage up did not answer at {url} within {timeout:.0f}s; see the log")


def _running_pid(data_dir: Path) -> int | None:
    """The pid of a `moorage up` already serving this data dir, if any."""
    try:
        pid = int(json.loads((data_dir / "cluster.json").read_text()).get("pid", 0))
        os.kill(pid, 0)
        return pid or None
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError, json.JSONDecodeError):
        return None


def run_up(args: argparse.Namespace) -> int:
    from manager.embedded import secure_data_dir

    private_umask()  # before anything is created: the database, secrets, cluster.json and the log are 0600
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    data_dir = _data_dir(args)
    secure_data_dir(data_dir)
    running = _running_pid(data_dir)
    if running:
        if args.detach:
            print(f"Moorage is already running for {data_dir} (pid {running}); `moorage down` stops it")
            return 0
        raise CLIError(f"Moorage is already running for {data_dir} (pid {running}); `moorage down` stops it")
    if args.console_port is None:
        args.console_port = args.port + 1
    if args.gateway_port is None:
        args.gateway_port = args.port + 2
    if args.detach:
        log_path = data_dir / LOG_FILE
        cmd = [sys.executable, "-m", "manager.cli.main", "--data-dir", str(data_dir), "up", "--host", args.host,
               "--port", str(args.port), "--proxy-ports", f"{args.proxy_ports[0]}-{args.proxy_ports[1]}",
               "--gateway-port", str(args.gateway_port), "--console-port", str(args.console_port),
               "--log-level", args.log_level]
        with open(log_path, "ab") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        _wait_ready(f"http://{args.host}:{args.port}", proc, args.wait)
        deadline = time.monotonic() + 10
        while not (data_dir / "cluster.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            login_url = json.loads((data_dir / "cluster.json").read_text()).get("console_login_url", "")
        except (OSError, ValueError):
            login_url = ""
        gateway = (f"  gateway (OpenAI-compatible; keys: moorage key create NAME): "
                   f"http://{args.host}:{args.gateway_port}/v1\n" if args.gateway_port else "")
        print(f"Moorage is up in the background (pid {proc.pid}); log: {log_path}\n"
              f"  manager: http://{args.host}:{args.port}   connection file: {data_dir / 'cluster.json'}\n"
              f"  console: {login_url or f'http://{args.host}:{args.console_port}'}\n"
              f"           (a one-time login link, valid a few minutes; later, log in with the keys in the "
              f"connection file)\n"
              f"{gateway}"
              f"  stop it with: moorage down")
        return 0
    from manager.embedded import run_embedded

    try:
        asyncio.run(run_embedded(data_dir, args.host, args.port, args.proxy_ports,
                                 gateway_port=args.gateway_port or None, console_port=args.console_port))
    except (OSError, ConfigError) as exc:
        raise CLIError(f"cannot start: {exc}") from None
    return 0


def run_down(args: argparse.Namespace) -> int:
    path = _data_dir(args) / "cluster.json"
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        print("moorage is not running (no cluster.json)")
        return 0
    pid = int(info.get("pid", 0))
    if not pid:
        raise CLIError(f"{path} names no process")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        print("moorage was not running; removed the stale connection file")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("moorage stopped")
            return 0
        time.sleep(0.2)
    raise CLIError(f"process {pid} did not stop within {args.wait:.0f}s")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser("up", help="run manager, agent and app proxy in one process (embedded mode)")
    up.add_argument("--host", default="127.0.0.1", help="address for the manager, replicas and endpoint URLs")
    up.add_argument("--port", type=int, default=8090, help="manager port (default 8090)")
    up.add_argument("--proxy-ports", type=_parse_range, default=(10300, 10399),
                    help="port range for endpoint URLs (default 10300-10399)")
    up.add_argument("--console-port", type=int, default=None,
                    help="web console port (default: the manager port + 1, so 8091)")
    up.add_argument("--gateway-port", type=int, default=None,
                    help="port of the OpenAI-compatible gateway (default: the manager port + 2, so 8092; 0: none)")
    up.add_argument("--detach", action="store_true", help="run in the background and return once it answers")
    up.add_argument("--wait", type=float, default=120.0, help="seconds --detach waits for the manager")
    up.add_argument("--log-level", default="info")
    up.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS,
                    help="state directory (default: $MOORAGE_DATA_DIR, else the user data dir)")
    up.set_defaults(func=run_up)
    down = subparsers.add_parser("down", help="stop a `moorage up` running in the background")
    down.add_argument("--wait", type=float, default=60.0)
    down.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS)
    down.set_defaults(func=run_down)
