"""Console benchmarks (docs/console.md): bytes transferred by the first load of the console, and the time until
the Model Serving list is interactive with 1,000 services. Starts its own `moorage up` in a temporary data dir
and drives Debian's Chromium through Playwright; not part of `make test`.

    .venv/bin/python bench/console/run.py [--services 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from manager.cli.client import Client  # noqa: E402
from manager.cli.connection import Connection  # noqa: E402
from tests.e2e.harness import free_port_block  # noqa: E402
from tests.services import free_port, wait_port  # noqa: E402

CHROMIUM = "/usr/lib/chromium/chromium"


def _more_files() -> None:
    """One listening socket per endpoint port: raise the child's open-files limit to the hard limit."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="moorage-console-bench-"))
    # port mode gives every endpoint its own proxy port: a block as large as the service count
    port, console_port, proxy = free_port(), free_port(), free_port_block(args.services + 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(tmp / "data")
    log = open(tmp / "up.log", "wb")  # noqa: SIM115 - closed at exit
    proc = subprocess.Popen([sys.executable, "-m", "manager.cli.main", "up", "--port", str(port), "--console-port",
                             str(console_port), "--proxy-ports", f"{proxy}-{proxy + args.services + 3}"],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_more_files)
    try:
        wait_port("127.0.0.1", console_port, 60)
        cluster = tmp / "data" / "cluster.json"
        while not cluster.exists():
            time.sleep(0.1)
        info = json.loads(cluster.read_text())
        client = Client(Connection(info["manager_url"], info["access_key"], info["secret_key"]))
        client.post("/folders", {"name": "echo"})
        subprocess.run([sys.executable, "-m", "manager.cli.main", "folder", "upload", "echo",
                        str(REPO / "configs/models/echo")], env=env, cwd=REPO, check=True, capture_output=True)
        started = time.perf_counter()
        for i in range(args.services):
            client.post("/services", {"name": f"bench-{i:05d}", "replicas": 0, "config": {
                "model": "echo", "resources": {"cpu": "0.1", "mem": "64m"}}})
        print(f"created {args.services} services (0 replicas) in {time.perf_counter() - started:.1f} s")
        url = f"http://127.0.0.1:{console_port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            sizes: dict[str, int] = {}
            page.on("response", lambda r: sizes.__setitem__(r.url, len(r.body())) if r.status < 300 else None)
            page.goto(url + "/")
            page.get_by_label("Access key").wait_for()
            page.wait_for_load_state("networkidle")
            print(f"first load (login page, uncompressed): {sum(sizes.values()) / 1024:.1f} KB in {len(sizes)} "
                  f"files (goal < 300 KB)")
            page.get_by_label("Access key").fill(info["access_key"])
            page.get_by_label("Secret key").fill(info["secret_key"])
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("heading", name="Model Serving").wait_for()
            timings = []
            for _ in range(5):
                t0 = time.perf_counter()
                page.reload()
                page.locator("tr[data-service]").first.wait_for()
                page.get_by_role("button", name="Next").wait_for(state="visible")
                timings.append((time.perf_counter() - t0) * 1000)
            timings.sort()
            print(f"list page with {args.services} services, reload to first rows: median {timings[2]:.0f} ms, "
                  f"max {timings[-1]:.0f} ms")
            t0 = time.perf_counter()
            page.get_by_role("button", name="Next").click()
            page.get_by_text("Page 2 of").wait_for()
            page.locator("tr[data-service='bench-00020']").wait_for()
            print(f"next page: {(time.perf_counter() - t0) * 1000:.0f} ms")
            t0 = time.perf_counter()
            page.get_by_label("Search by name").fill("bench-0099")
            page.locator("tr[data-service='bench-00999']").wait_for()
            print(f"search: {(time.perf_counter() - t0) * 1000:.0f} ms")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
