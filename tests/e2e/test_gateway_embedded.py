"""The gateway through `moorage up`: the URL printed and in cluster.json, a key from `moorage key create`, an echo
service reached by its name with the official `openai` client (streamed and not), usage as the replica
reported it in `moorage usage`, and `moorage key revoke` refused at once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import PYTHON, REPO, Daemons, free_port_block, moorage, moorage_json, wait_for
from tests.services import free_port, wait_port

pytestmark = pytest.mark.e2e


def test_gateway_in_moorage_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port, gateway = free_port(), free_port()
    proxy_base = free_port_block(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    daemons = Daemons(tmp_path)
    proc = daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port), "--proxy-ports",
                                f"{proxy_base}-{proxy_base + 2}", "--gateway-port", str(gateway)], env)
    try:
        wait_port("127.0.0.1", gateway, 60)
        wait_for(lambda: (data_dir / "cluster.json").exists(), 30, "cluster.json", on_timeout=daemons.logs)
        url = f"http://127.0.0.1:{gateway}/v1"
        assert json.loads((data_dir / "cluster.json").read_text())["gateway_url"] == url
        wait_for(lambda: url in daemons.logs(), 10, "the gateway URL printed", on_timeout=daemons.logs)

        moorage(env, "folder", "create", "echo")
        moorage(env, "folder", "upload", "echo", str(REPO / "configs/models/echo"))
        moorage(env, "service", "create", "echo", "1", "--name", "echo-svc", "-r", "cpu=0.25", "-r", "mem=64m")
        wait_for(lambda: moorage_json(env, "service", "info", "echo-svc")["status"] == "HEALTHY", 120,
                 "echo-svc healthy", on_timeout=daemons.logs)
        created = moorage(env, "key", "create", "e2e", "--models", "echo-svc", "--rpm", "100")
        key = created.stdout.strip()
        assert created.stdout == key + "\n" and key.startswith("sk-")

        with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30) as client:
            assert [m.id for m in client.models.list()] == ["echo-svc"]
            reply = client.chat.completions.create(model="echo-svc",
                                                   messages=[{"role": "user", "content": "hello gateway"}])
            assert reply.choices[0].message.content == "echo: hello gateway" and reply.usage is not None
            streamed = [c for c in client.chat.completions.create(
                model="echo-svc", stream=True, messages=[{"role": "user", "content": "one two three"}])]
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "echo: one two three"
            assert all(c.usage is None for c in streamed)

            def recorded() -> list[dict] | None:
                rows = moorage_json(env, "usage", "--by", "model")
                return rows if rows and rows[0]["requests"] == 2 else None

            rows = wait_for(recorded, 10, "two usage records", on_timeout=daemons.logs)
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 3)
            assert rows == [{"model": "echo-svc", "requests": 2, "prompt_tokens": 2 + 3, "completion_tokens": 3 + 4,
                             "total_tokens": 12, "errors": 0}]

            moorage(env, "key", "revoke", "e2e")
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
    finally:
        daemons.stop_all()
        assert proc.poll() is not None
