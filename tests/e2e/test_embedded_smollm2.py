"""End to end through `moorage up` (embedded mode) with the real SmolLM2-135M-Instruct model: a streamed chat
completion through the app proxy with the official `openai` client, then the same through the llamacpp runtime
variant, whose replica exports llama.cpp-style engine metrics."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
from pathlib import Path

import openai
import pytest

from appproxy.scrape import parse_exposition
from tests.e2e.harness import (
    PYTHON,
    REPO,
    Daemons,
    free_port_block,
    http_request,
    moorage,
    moorage_json,
    wait_for,
)
from tests.services import free_port, wait_port

pytestmark = pytest.mark.e2e


PROMPTS = ("Count from one to ten in words.", "Write two sentences about the sea.", "List three fruits.")


def stream_chat(client: openai.OpenAI, model: str) -> list[str]:
    """Stream a chat completion; a 135M model now and then answers a prompt with an immediate end of text, so
    up to three prompts are tried (each one goes through the whole path: proxy, token, streaming)."""
    pieces: list[str] = []
    for prompt in PROMPTS:
        stream = client.chat.completions.create(model=model, stream=True, max_tokens=24, temperature=0,
                                                messages=[{"role": "user", "content": prompt}])
        pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        if len([p for p in pieces if p]) >= 3:
            break
    return pieces


def test_streamed_chat_completion_with_openai_client(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proxy_base = free_port_block(5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    daemons = Daemons(tmp_path)
    daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port),
                         "--console-port", str(free_port()), "--proxy-ports",
                         f"{proxy_base}-{proxy_base + 4}"], env)
    try:
        wait_port("127.0.0.1", port, 60)
        wait_for(lambda: (data_dir / "cluster.json").exists(), 30, "cluster.json", on_timeout=daemons.logs)
        cluster = json.loads((data_dir / "cluster.json").read_text())
        assert cluster["manager_url"] == f"http://127.0.0.1:{port}" and cluster["access_key"].startswith("AKIA")
        assert oct((data_dir / "cluster.json").stat().st_mode & 0o777) == "0o600"

        out = moorage(env, "demo", "--name", "chat", "--wait", "300", timeout=400)
        assert "endpoint URL" in out.stdout
        info = moorage_json(env, "service", "info", "chat")
        assert info["status"] == "HEALTHY"
        token = moorage(env, "service", "token", "chat", "--duration", "10m").stdout.strip()

        client = openai.OpenAI(base_url=info["service_endpoint"] + "/v1", api_key=token, max_retries=0,
                               timeout=120)
        pieces = stream_chat(client, "smollm2")
        assert len([p for p in pieces if p]) >= 3, pieces  # really streamed, chunk by chunk
        assert "".join(pieces).strip(), "the model produced no text"

        # The llamacpp runtime variant: a folder holding only the GGUF, no model-definition.yaml.
        gguf = subprocess.run([PYTHON, str(REPO / "configs/models/smollm2/locate_gguf.py")], capture_output=True,
                              text=True, check=True).stdout.strip()
        moorage(env, "folder", "create", "gguf-only")
        moorage(env, "folder", "upload", "gguf-only", gguf)
        moorage(env, "service", "create", "gguf-only", "1", "--name", "llama-variant", "--runtime-variant",
                "llamacpp", "-r", "cpu=1", "-r", "mem=1g")
        variant = wait_for(lambda: (i := moorage_json(env, "service", "info", "llama-variant"))
                           and i["status"] == "HEALTHY" and i, 300, "the llamacpp variant replica",
                           on_timeout=daemons.logs)
        assert variant["model_definition_path"] is None and variant["runtime_variant"] == "llamacpp"
        variant_token = moorage(env, "service", "token", "llama-variant", "--duration", "10m").stdout.strip()
        variant_client = openai.OpenAI(base_url=variant["service_endpoint"] + "/v1", api_key=variant_token,
                                       max_retries=0, timeout=120)
        pieces = stream_chat(variant_client, "llama-variant")
        assert len([p for p in pieces if p]) >= 3 and "".join(pieces).strip(), pieces

        # The variant's launcher exports llama.cpp-style engine metrics on the replica's own port, what the app
        # proxies scrape for `inference_framework` autoscaling rules.
        route = next(r for r in variant["routes"] if r["port"])
        metrics_url = f"http://{route['host'] or '127.0.0.1'}:{route['port']}/metrics"

        def engine_metrics() -> dict[str, float] | None:
            status, _, body = http_request(metrics_url)
            values = parse_exposition(body.decode()) if status == 200 else {}
            idle = values.get("llamacpp:requests_processing") == 0 and values.get("llamacpp:requests_deferred") == 0
            return values if idle and values.get("llamacpp:request_duration_seconds_count") else None

        values = wait_for(engine_metrics, 10, "the replica's llamacpp metrics", on_timeout=daemons.logs)
        assert values["llamacpp:tokens_predicted_total"] >= len([p for p in pieces if p]), values
        assert values["llamacpp:prompt_tokens_total"] > 0 and values["llamacpp:tokens_predicted_seconds_total"] > 0

        # Two concurrent streams on the one replica: the second waits its turn instead of cutting the first
        # short (llama-cpp-python's default interrupt_requests would end the first stream early).
        def finish_reason(prompt: str) -> str | None:
            reason = None
            for chunk in variant_client.chat.completions.create(
                    model="llama-variant", stream=True, max_tokens=16, temperature=0,
                    messages=[{"role": "user", "content": prompt}]):
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
            return reason

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            reasons = list(pool.map(finish_reason, PROMPTS[:2]))
        assert all(r in ("stop", "length") for r in reasons), reasons

        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=info["service_endpoint"] + "/v1", api_key="not-a-token",
                          max_retries=0).models.list()
    finally:
        daemons.stop_all()
    assert not (data_dir / "cluster.json").exists()
    leftovers = os.popen(f"pgrep -af {data_dir}").read()
    assert "llama_cpp.server" not in leftovers and "llamacpp_server" not in leftovers
