"""The gateway through `moorage up`: the URL printed and in cluster.json, a key from `moorage key create`, an echo
service reached by its name and an alias with the official `openai` client (streamed and not), usage (and its cost
at a price set with `moorage price set`) as the replica reported it in `moorage usage`, and `moorage key revoke`
refused at once."""

from __future__ import annotations

import json
import os
import sqlite3
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
        moorage(env, "service", "create", "echo", "1", "--name", "echo-svc", "-r", "cpu=0.25", "-r", "mem=64m",
                "--alias", "gpt-e2e")
        moorage(env, "price", "set", "echo-svc", "--input", "1000", "--output", "2000")
        wait_for(lambda: moorage_json(env, "service", "info", "echo-svc")["status"] == "HEALTHY", 120,
                 "echo-svc healthy", on_timeout=daemons.logs)
        created = moorage(env, "key", "create", "e2e", "--models", "echo-svc", "--rpm", "100")
        key = created.stdout.strip()
        assert created.stdout == key + "\n" and key.startswith("sk-")

        with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30) as client:
            assert [m.id for m in client.models.list()] == ["echo-svc", "gpt-e2e"]
            reply = client.chat.completions.create(model="gpt-e2e",  # by alias: recorded under the service's name
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
                             "total_tokens": 12, "errors": 0, "cost": (5 * 1000 + 7 * 2000) / 1e6, "unpriced": 0}]

            moorage(env, "key", "revoke", "e2e")
            with pytest.raises(openai.AuthenticationError):
                client.models.list()
    finally:
        daemons.stop_all()
        assert proc.poll() is not None


def test_smollm2_streams_through_the_gateway_and_its_usage_is_recorded(tmp_path: Path) -> None:
    """The real SmolLM2-135M replica (`moorage demo`) by its service name with the official client, streamed and
    not: the usage recorded is exactly what the replica reported (on a stream, the usage chunk the launcher adds
    for ``stream_options.include_usage``, asked for by the client, then by the gateway alone and stripped)."""
    data_dir = tmp_path / "data"
    port, gateway = free_port(), free_port()
    proxy_base = free_port_block(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    daemons = Daemons(tmp_path)
    daemons.start("up", [PYTHON, "-m", "manager.cli.main", "up", "--port", str(port), "--proxy-ports",
                         f"{proxy_base}-{proxy_base + 2}", "--gateway-port", str(gateway)], env)
    try:
        wait_port("127.0.0.1", port, 60)
        wait_for(lambda: (data_dir / "cluster.json").exists(), 30, "cluster.json", on_timeout=daemons.logs)
        moorage(env, "demo", "--name", "chat", "--wait", "300", timeout=400)
        key = moorage(env, "key", "create", "smol", "--tpm", "100000").stdout.strip()

        def usage_rows(requests: int) -> list[dict] | None:
            rows = moorage_json(env, "usage", "--by", "model")
            return rows if rows and rows[0]["requests"] == requests else None

        with openai.OpenAI(base_url=f"http://127.0.0.1:{gateway}/v1", api_key=key, max_retries=0,
                           timeout=120) as client:
            assert [m.id for m in client.models.list()] == ["chat"]
            reply = client.chat.completions.create(model="chat", max_tokens=16, temperature=0,
                                                   messages=[{"role": "user", "content": "List three fruits."}])
            assert reply.usage is not None and reply.usage.completion_tokens > 0
            (row,) = wait_for(lambda: usage_rows(1), 10, "the reply's usage record", on_timeout=daemons.logs)
            assert (row["model"], row["prompt_tokens"], row["completion_tokens"]) == (
                "chat", reply.usage.prompt_tokens, reply.usage.completion_tokens)
            chunks = list(client.chat.completions.create(
                model="chat", stream=True, max_tokens=16, temperature=0, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "Count from one to ten in words."}]))
            pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
            assert len([p for p in pieces if p]) >= 3, pieces  # really streamed
            reported = chunks[-1].usage
            assert reported is not None and reported.completion_tokens > 0 and not chunks[-1].choices
            (row,) = wait_for(lambda: usage_rows(2), 10, "the stream's usage record", on_timeout=daemons.logs)
            assert (row["prompt_tokens"], row["completion_tokens"]) == (
                reply.usage.prompt_tokens + reported.prompt_tokens,
                reply.usage.completion_tokens + reported.completion_tokens)
            # not asked by the client: the gateway asks, records it, and strips the chunk
            chunks = list(client.chat.completions.create(
                model="chat", stream=True, max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "Count from one to ten in words."}]))
            assert chunks and all(c.usage is None and c.choices for c in chunks)
            (row,) = wait_for(lambda: usage_rows(3), 10, "the third usage record", on_timeout=daemons.logs)
            assert 0 < row["completion_tokens"] - reply.usage.completion_tokens - reported.completion_tokens <= 8
        with sqlite3.connect(data_dir / "moorage.db") as db:
            estimated = [bool(e) for (e,) in db.execute("SELECT estimated FROM usage_records ORDER BY at")]
        assert estimated == [False, False, False]
    finally:
        daemons.stop_all()
