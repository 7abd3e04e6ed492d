#!/usr/bin/env python3
"""The LLM gateway vs the plain per-endpoint path vs nginx (and LiteLLM's proxy), one upstream, one run.

    .venv/bin/python bench/gateway/run.py [--seconds 10] [--connections 16] [--no-litellm] [--profile FILE]

Upstream: ``bench/_lib/openai_stub.py`` (a fast OpenAI-compatible stub: fixed chat completion with usage, or a
chunked SSE stream of 8 content events + the usage event when asked + ``[DONE]``). Client: wrk (1 thread) with a
Lua script POSTing a chat completion, non-streaming then streaming. Targets, all in front of the same stub:

* ``gateway``: the app proxy's gateway port: API key auth (``Authorization: Bearer``), rpm + tpm limits in the
  real Redis (``--redis``, default 127.0.0.1:6379; limits high enough never to refuse), usage metering (records
  batched and serialised as for the manager);
* ``plain``: the per-endpoint port of the *same* app proxy process (public endpoint, no token);
* ``nginx``: Debian's nginx (1 worker, keepalive upstream pool), installed with apt-get when missing;
* ``direct``: the stub itself (the floor);
* ``litellm``: LiteLLM's proxy (``litellm[proxy]`` pip-installed into a venv in the temp dir, master key, no
  limits: it needs a database for per-key limits), when it installs and starts offline within a few minutes.

Per target: a load pass (``--connections``) and a latency pass (1 connection, so p50 is per-request time, not
queueing). Redis round trips per gateway request: ``MONITOR`` during a short extra pass, counting the commands
that carry this run's key prefix and do not come from a Lua script. Prints the table and the goals: gateway ≥
0.8 × plain rps, added p50 ≤ 0.3 ms, ≤ 1 Redis round trip per request.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._lib.common import LIB, PYTHON, Procs, ensure_tools, free_port, wait_port, which, wrk  # noqa: E402
from common.apikeys import ApiKeyRecord, hash_key, new_key  # noqa: E402

NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
    uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream stub {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{ listen 127.0.0.1:{port};
        location / {{ proxy_pass http://stub; proxy_http_version 1.1; proxy_set_header Connection "";
                      proxy_buffering off; }} }}
}}
"""
LITELLM_CONF = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: none
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
PATH = "/v1/chat/completions"
LITELLM_INSTALL_TIMEOUT = 300  # seconds: "for the record" must not eat the run
LITELLM_START_TIMEOUT = 90


def body(stream: bool) -> str:
    return json.dumps({"model": "bench", "stream": stream, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Say hello eight times."}]})


def start_litellm(procs: Procs, tmp: str, upstream: int, port: int, key: str, venv: str | None) -> str | None:
    """Start LiteLLM's proxy; None when ready, else why it is not in the table."""
    if venv is None:
        venv = os.path.join(tmp, "litellm-venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        print("installing litellm[proxy] into the temp dir (at most 5 min) ...", flush=True)
        try:
            done = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "litellm[proxy]"],
                                  capture_output=True, text=True, timeout=LITELLM_INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"pip install litellm[proxy] did not finish in {LITELLM_INSTALL_TIMEOUT}s"
        if done.returncode != 0:
            return "pip install litellm[proxy] failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
    exe = os.path.join(venv, "bin", "litellm")
    if not os.path.exists(exe):
        return f"no litellm in {venv}"
    conf = Path(tmp, "litellm.yaml")
    conf.write_text(LITELLM_CONF.format(upstream=upstream, key=key))
    log = open(Path(tmp, "litellm.log"), "w")  # noqa: SIM115 - closed with the process group
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "NO_DOCS": "True",
           "DISABLE_ADMIN_UI": "True", "LITELLM_TELEMETRY": "False", "PATH": os.environ.get("PATH", "")}
    proc = procs.start([exe, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                        "--num_workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=LITELLM_START_TIMEOUT, proc=proc)
    except (TimeoutError, RuntimeError) as exc:
        tail = Path(tmp, "litellm.log").read_text().strip().splitlines()[-1:] or [""]
        return f"litellm did not start ({exc}; {tail[0][:120]})"
    return None


def redis_cli(url: str) -> list[str]:
    return [which("redis-cli"), "-u", url]


def round_trips(url: str, redis_url: str, script: str, prefix: str, seconds: float) -> tuple[float, float]:
    """(Redis commands per request, of which not carrying the prefix) for a short pass at 4 connections while
    MONITOR records; commands run inside Lua scripts are not round trips and are left out."""
    with tempfile.TemporaryFile("w+") as out:
        monitor = subprocess.Popen(redis_cli(redis_url) + ["MONITOR"], stdout=out, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        result = wrk(url, 4, seconds, script=script)
        time.sleep(1.0)  # anything the gateway sends after the answers (deferred work) is counted too
        monitor.terminate()
        monitor.wait(5)
        out.seek(0)
        ours = [line for line in out if prefix in line and " lua]" not in line]
    return len(ours) / max(result["requests"], 1), result["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="per load pass (the latency pass: half)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--litellm-venv", help="a venv where litellm[proxy] is already installed")
    parser.add_argument("--no-uvloop", action="store_true", help="run the app proxy and the stub on asyncio")
    parser.add_argument("--only", help="comma-separated targets (default: all)")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the app proxy during the gateway's "
                        "load pass (raw format to FILE) and print where the time goes")
    parser.add_argument("--profile-mode", choices=("json", "stream"), default="json")
    args = parser.parse_args()
    ensure_tools("nginx", "wrk")
    if shutil.which("redis-cli") is None:
        sys.exit("redis-cli is missing (apt-get install redis-tools); the gateway's limits need Redis")
    uvloop = not args.no_uvloop and importlib.util.find_spec("uvloop") is not None
    tmp = tempfile.mkdtemp(prefix="moorage-gwbench-")
    os.chmod(tmp, 0o755)  # nginx workers run as an unprivileged user when started by root
    ports = {name: free_port() for name in ("stub", "plain", "gateway", "nginx", "litellm")}
    key = new_key()
    owner = uuid.uuid4()
    record = ApiKeyRecord(key_id=uuid.uuid4(), key_hash=hash_key(key), name="bench", owner_id=owner,
                          rpm=100_000_000, tpm=1_000_000_000_000)  # counted in full, never refused
    prefix = f"moorage-bench:{uuid.uuid4().hex[:8]}:"
    Path(tmp, "keys.json").write_text(json.dumps([record.model_dump(mode="json")]))
    Path(tmp, "tables.json").write_text(json.dumps([{
        "endpoint_id": str(uuid.uuid4()), "name": "bench", "port": ports["plain"], "open_to_public": True,
        "owner_id": str(owner), "routes": [{"route_id": str(uuid.uuid4()), "host": "127.0.0.1",
                                            "port": ports["stub"]}]}]))
    gateway = {"port": ports["gateway"], "redis_url": args.redis, "redis_key_prefix": prefix}
    scripts = {}
    for stream in (False, True):
        scripts[stream] = str(Path(tmp, f"wrk-{stream}.lua"))
        Path(scripts[stream]).write_text(WRK_SCRIPT.format(body=body(stream), key=key))
    skipped: dict[str, str] = {}
    wanted = set(args.only.split(",")) if args.only else {"direct", "nginx", "plain", "gateway", "litellm"}
    with Procs() as procs:
        stub = procs.start([PYTHON, str(LIB / "openai_stub.py"), "--port", str(ports["stub"])]
                           + (["--uvloop"] if uvloop else []), stderr=subprocess.DEVNULL)
        wait_port(ports["stub"], proc=stub)
        Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, upstream=ports["stub"], port=ports["nginx"]))
        nginx = procs.start([which("nginx"), "-c", str(Path(tmp, "nginx.conf")), "-p", tmp],
                            stderr=subprocess.DEVNULL)
        wait_port(ports["nginx"], proc=nginx)
        proxy = procs.start([PYTHON, str(LIB / "proxy_server.py"), "--tables", str(Path(tmp, "tables.json")),
                             "--keys", str(Path(tmp, "keys.json")), "--gateway", json.dumps(gateway)]
                            + (["--uvloop"] if uvloop else []))
        wait_port(ports["gateway"], proc=proxy)
        wait_port(ports["plain"], proc=proxy)
        if "litellm" in wanted and not args.no_litellm:
            why = start_litellm(procs, tmp, ports["stub"], ports["litellm"], key, args.litellm_venv)
            if why:
                skipped["litellm"] = why
                print(f"litellm: {why}", flush=True)
        elif "litellm" in wanted:
            skipped["litellm"] = "not run (--no-litellm)"
        targets = {name: ports[name if name != "direct" else "stub"]
                   for name in ("direct", "nginx", "plain", "gateway", "litellm")
                   if name in wanted and name not in skipped}
        results: dict[tuple[str, bool], tuple[dict[str, float], dict[str, float]]] = {}
        trips: dict[bool, tuple[float, float]] = {}
        for stream in (False, True):
            for name, port in targets.items():
                url = f"http://127.0.0.1:{port}{PATH}"
                wrk(url, args.connections, 2, script=scripts[stream])  # warm-up: pools, caches, page faults
                spy = None
                if args.profile and name == "gateway" and stream == (args.profile_mode == "stream"):
                    spy = subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "-p", str(proxy.pid),
                                            "-d", str(max(1, round(args.seconds) - 2)), "-r", "200", "-f", "raw",
                                            "-o", args.profile], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                load = wrk(url, args.connections, args.seconds, script=scripts[stream])
                if spy is not None:
                    spy.wait(30)
                single = wrk(url, 1, max(3.0, args.seconds / 2), script=scripts[stream])
                results[(name, stream)] = (load, single)
                print(f"  {'stream' if stream else 'json':<6} {name:<8} {load['rps']:>8.0f} rps  "
                      f"c=1 p50 {single['p50']:.3f} ms", flush=True)
            if "gateway" in targets:
                trips[stream] = round_trips(f"http://127.0.0.1:{ports['gateway']}{PATH}", args.redis,
                                            scripts[stream], prefix, 3)
    subprocess.run(redis_cli(args.redis) + ["DEL", f"{prefix}{record.key_id}:z", f"{prefix}{record.key_id}:h"],
                   stdout=subprocess.DEVNULL, check=False)
    shutil.rmtree(tmp, ignore_errors=True)  # configs, logs and a LiteLLM venv (pass --litellm-venv to keep one)
    report(results, trips, skipped, args.connections, uvloop)
    if args.profile:
        from bench._lib.profile import summarise

        print(summarise(args.profile))


def report(results: dict[tuple[str, bool], tuple[dict[str, float], dict[str, float]]],
           trips: dict[bool, tuple[float, float]], skipped: dict[str, str], connections: int, uvloop: bool) -> None:
    import platform

    print(f"\nmachine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
          f"{'uvloop' if uvloop else 'asyncio'}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"| mode | target | rps (c={connections}) | p50 ms | p99 ms | rps (c=1) | p50 ms (c=1) | p99 ms (c=1) "
          f"| errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for (name, stream), (load, single) in results.items():
        print(f"| {'stream' if stream else 'json'} | {name} | {load['rps']:.0f} | {load['p50']:.2f} | "
              f"{load['p99']:.2f} | {single['rps']:.0f} | {single['p50']:.3f} | {single['p99']:.3f} | "
              f"{load['errors'] + single['errors']:.0f} |")
    for name, why in skipped.items():
        print(f"| both | {name} | {why} | | | | | | |")
    print()
    for stream in (False, True):
        mode = "stream" if stream else "json"
        gw, plain = results.get(("gateway", stream)), results.get(("plain", stream))
        if gw and plain:
            ratio = gw[0]["rps"] / plain[0]["rps"]
            added = gw[1]["p50"] - plain[1]["p50"]
            print(f"{mode}: gateway/plain rps = {ratio:.2f} (goal >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'}); "
                  f"added p50 (c=1) = {added:.3f} ms (goal <= 0.3: {'met' if added <= 0.3 else 'MISSED'})")
        if stream in trips:
            per, n = trips[stream]
            print(f"{mode}: Redis round trips per gateway request = {per:.2f} over {n:.0f} requests "
                  f"(goal <= 1: {'met' if per <= 1.0 + 0.02 else 'MISSED'})")
        lite = results.get(("litellm", stream))
        if lite and plain:
            print(f"{mode}: litellm/plain rps = {lite[0]['rps'] / plain[0]['rps']:.2f}; litellm added p50 (c=1) = "
                  f"{lite[1]['p50'] - plain[1]['p50']:.3f} ms")


if __name__ == "__main__":
    main()
