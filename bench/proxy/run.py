#!/usr/bin/env python3
"""App proxy vs nginx on one static upstream, in one run (loopback only, ~80 s).

    .venv/bin/python bench/proxy/run.py [--seconds 8] [--connections 32] [--no-uvloop]

The upstream is nginx serving a 100-byte static body (1 worker, its own port). wrk (1 thread) measures:
direct to the upstream; through nginx as a reverse proxy (1 worker, keepalive upstream pool, config in a temp
dir, a foreground process we start and stop); through the app proxy (1 worker process, public endpoint, the
real AppProxy with a MemoryStore); and, when uvloop is importable, the app proxy on uvloop. Two passes each:
throughput (``--connections`` connections) and latency (1 connection, so p50 is the added per-request time
rather than queueing). Prints the ratios. Installs nginx-light and wrk with apt-get when missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._lib.common import LIB, PYTHON, Procs, ensure_tools, free_port, print_wrk_table, wait_port, which, wrk  # noqa: E402

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx-{name}.pid;
error_log {dir}/error-{name}.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    {body}
}}
"""
UPSTREAM = """server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; root {dir}/www; }} }}"""
PROXY = """upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{ listen 127.0.0.1:{port};
        location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""


def start_nginx(procs: Procs, tmp: str, name: str, body: str, port: int) -> None:
    conf = Path(tmp, f"nginx-{name}.conf")
    conf.write_text(NGINX_CONF.format(dir=tmp, name=name, body=body))
    proc = procs.start([which("nginx"), "-c", str(conf), "-p", tmp], stderr=subprocess.DEVNULL)
    wait_port(port, proc=proc)


def start_appproxy(procs: Procs, tmp: str, upstream: int, port: int, uvloop: bool) -> int:
    table = {"endpoint_id": str(uuid.uuid4()), "name": "bench", "port": port, "open_to_public": True,
             "routes": [{"route_id": str(uuid.uuid4()), "host": "127.0.0.1", "port": upstream}]}
    tables = Path(tmp, f"tables-{port}.json")
    tables.write_text(json.dumps([table]))
    args = [PYTHON, str(LIB / "proxy_server.py"), "--tables", str(tables)] + (["--uvloop"] if uvloop else [])
    proc = procs.start(args)
    wait_port(port, proc=proc)
    return proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the app proxy during its load pass (raw "
                        "format to FILE) and print where the time goes; needs py-spy (pip install py-spy)")
    args = parser.parse_args()
    ensure_tools("nginx", "wrk")
    with_uvloop = not args.no_uvloop and importlib.util.find_spec("uvloop") is not None
    tmp = tempfile.mkdtemp(prefix="moorage-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as an unprivileged user when started by root
    Path(tmp, "www").mkdir()
    Path(tmp, "www", "static").write_bytes(b"x" * 100)
    ports = {name: free_port() for name in ("upstream", "nginx", "appproxy", "appproxy+uvloop")}
    with Procs() as procs:
        start_nginx(procs, tmp, "upstream", UPSTREAM.format(port=ports["upstream"], dir=tmp), ports["upstream"])
        start_nginx(procs, tmp, "proxy", PROXY.format(port=ports["nginx"], upstream=ports["upstream"]),
                    ports["nginx"])
        pids = {"appproxy": start_appproxy(procs, tmp, ports["upstream"], ports["appproxy"], uvloop=False)}
        targets = {"direct": ports["upstream"], "nginx": ports["nginx"], "appproxy": ports["appproxy"]}
        if with_uvloop:
            start_appproxy(procs, tmp, ports["upstream"], ports["appproxy+uvloop"], uvloop=True)
            targets["appproxy+uvloop"] = ports["appproxy+uvloop"]
        results = {}
        for name, port in targets.items():
            url = f"http://127.0.0.1:{port}/static"
            wrk(url, args.connections, 2)  # warm-up: pools, caches, page faults
            spy = None
            if args.profile and name == "appproxy":
                spy = subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "-p", str(pids[name]), "-d",
                                        str(max(1, round(args.seconds) - 2)), "-r", "200", "-f", "raw", "-o",
                                        args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = wrk(url, args.connections, args.seconds)
            if spy is not None:
                spy.wait(30)
            single = wrk(url, 1, max(3.0, args.seconds / 2))
            results[name] = (load, single)
    print_wrk_table(results, args.connections)
    direct_p50 = results["direct"][1]["p50"]
    nginx_rps = results["nginx"][0]["rps"]
    for name in [n for n in results if n.startswith("appproxy")]:
        load, single = results[name]
        print(f"{name}: rps ratio {name}/nginx = {load['rps'] / nginx_rps:.2f} (target >= 0.5); "
              f"p50 added over direct (c=1) = {single['p50'] - direct_p50:.3f} ms (target <= 1 ms)")
    print(f"nginx: p50 added over direct (c=1) = {results['nginx'][1]['p50'] - direct_p50:.3f} ms")
    if args.profile:
        from bench._lib.profile import summarise

        print(summarise(args.profile))


if __name__ == "__main__":
    main()
