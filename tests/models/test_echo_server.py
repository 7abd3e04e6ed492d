"""The echo test-fixture server (``configs/models/echo/echo_server.py``), run as a real subprocess on a free
port and driven with the official ``openai`` client and plain HTTP."""

from __future__ import annotations

import ast
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

SERVER = Path(__file__).resolve().parents[2] / "configs" / "models" / "echo" / "echo_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class EchoProcess:
    def __init__(self, port: int, proc: subprocess.Popen):
        self.port = port
        self.proc = proc
        self.base_url = f"http://127.0.0.1:{port}"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="x", max_retries=0, timeout=10)


def start_echo(env_extra: dict[str, str] | None = None, args: list[str] | None = None,
               wait: bool = True) -> EchoProcess:
    port = free_port()
    env = {**os.environ, "ECHO_CHUNK_DELAY": "0.05", **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port), *(args or [])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    echo = EchoProcess(port, proc)
    if wait:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"echo server exited early: {proc.stderr.read()}")
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("echo server did not become healthy")
            time.sleep(0.05)
    return echo


def stop(echo: EchoProcess) -> None:
    if echo.proc.poll() is None:
        echo.proc.kill()
    echo.proc.communicate(timeout=10)


@pytest.fixture
def echo():
    server = start_echo(args=["--quiet"])
    try:
        yield server
    finally:
        stop(server)


def test_stdlib_only():
    tree = ast.parse(SERVER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_health_info_and_replica_header(echo):
    status, headers, body = request(echo.port, "GET", "/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    replica = headers["x-echo-replica"]
    assert replica.startswith(f"{echo.proc.pid}-") and len(replica) > len(str(echo.proc.pid)) + 8
    status, headers, body = request(echo.port, "GET", "/")
    info = json.loads(body)
    assert info["pid"] == echo.proc.pid and info["port"] == echo.port and info["model"] == "echo"
    assert info["replica"] == replica == headers["x-echo-replica"]


def test_two_processes_have_distinct_replica_ids():
    servers = [start_echo(args=["--quiet"]) for _ in range(2)]
    try:
        ids = {request(s.port, "GET", "/health")[1]["x-echo-replica"] for s in servers}
        assert len(ids) == 2
    finally:
        for server in servers:
            stop(server)


def test_models_list_with_openai_client(echo):
    models = echo.client().models.list()
    assert [m.id for m in models.data] == ["echo"]


def test_chat_completion(echo):
    completion = echo.client().chat.completions.create(
        model="echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                  {"role": "assistant", "content": "echo: first"}, {"role": "user", "content": "hello big world"}],
    )
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello big world"
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == 4
    assert completion.usage.prompt_tokens == 2 + 1 + 2 + 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 4


def test_chat_completion_content_parts_and_max_tokens(echo):
    completion = echo.client().chat.completions.create(
        model="echo", max_tokens=2,
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
    )
    assert completion.choices[0].message.content == "echo: one"
    assert completion.choices[0].finish_reason == "length"


def test_streaming_yields_chunks_as_they_are_produced(echo):
    words = "the quick brown fox jumps over the lazy dog".split()
    stream = echo.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": " ".join(words)}], stream=True,
        stream_options={"include_usage": True},
    )
    pieces, arrivals, finish, usage = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        arrivals.append(time.monotonic())
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "echo: " + " ".join(words)
    assert len(pieces) == len(words) + 1  # one chunk per word
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(words) + 1
    # 0.05 s between chunks: the client saw them spread out, not in one buffered burst
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_streaming_raw_sse_format(echo):
    body = json.dumps({"model": "echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]})
    status, headers, raw = request(echo.port, "POST", "/v1/chat/completions", body.encode(),
                                   {"Content-Type": "application/json"})
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.decode().split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: "):])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_invalid_json_is_400(echo):
    status, headers, body = request(echo.port, "POST", "/v1/chat/completions", b"{not json",
                                    {"Content-Type": "application/json"})
    assert status == 400
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and "invalid JSON" in error["message"]
    with pytest.raises(openai.BadRequestError):
        echo.client().chat.completions.create(model="echo", messages=[])


def test_oversized_body_is_413(echo):
    status, _, body = request(echo.port, "POST", "/v1/chat/completions", b"x" * (1024 * 1024 + 1),
                              {"Content-Type": "application/json"})
    assert status == 413
    assert "larger than" in json.loads(body)["error"]["message"]
    assert request(echo.port, "GET", "/health")[0] == 200  # still serving


def test_unknown_path_and_method(echo):
    assert request(echo.port, "GET", "/nope")[0] == 404
    assert request(echo.port, "GET", "/v1/chat/completions")[0] == 405


def test_metrics_count_requests(echo):
    request(echo.port, "GET", "/health")
    status, headers, body = request(echo.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "# TYPE echo_requests_total counter" in text
    line = next(x for x in text.splitlines() if x.startswith('echo_requests_total{method="GET",path="/health"'))
    assert float(line.rsplit(" ", 1)[1]) >= 2


def test_metrics_count_streams_the_client_left(echo):
    """A client that goes away mid-stream (a chat page's Stop) is counted: the console's Stop test reads it."""
    def cancelled() -> int:
        text = request(echo.port, "GET", "/metrics")[2].decode()
        return int(float(next(x for x in text.splitlines()
                              if x.startswith("echo_stream_cancelled_total ")).split()[1]))

    assert cancelled() == 0
    words = " ".join(f"w{i}" for i in range(100))  # 100 words at 0.05 s: 5 s
    body = json.dumps({"messages": [{"role": "user", "content": words}], "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", echo.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"200" in sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
    deadline = time.monotonic() + 3
    while cancelled() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == 1


def test_control_health_toggle(echo):
    assert request(echo.port, "POST", "/control/health", b'{"healthy": false}')[0] == 200
    assert request(echo.port, "GET", "/health")[0] == 503
    assert request(echo.port, "POST", "/control/health", b'{"healthy": true}')[0] == 200
    assert request(echo.port, "GET", "/health")[0] == 200


def test_binds_loopback_by_default(echo):
    assert json.loads(request(echo.port, "GET", "/")[2])["host"] == "127.0.0.1"


def test_sigterm_exits_cleanly():
    server = start_echo()
    try:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=5) == 0
        assert "shutting down" in server.proc.stderr.read()
    finally:
        stop(server)


def test_port_from_env_and_fail_on_start():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--quiet"], env={**os.environ, "PORT": str(port)},
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    failed = subprocess.run([sys.executable, str(SERVER)], env={**os.environ, "ECHO_FAIL_ON_START": "no GPU"},
                            capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1 and "no GPU" in failed.stderr
