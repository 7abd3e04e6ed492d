#!/usr/bin/env python3
"""Echo inference server: a TEST FIXTURE for the Moorage control plane (not a model).

An OpenAI-compatible HTTP server, standard library only (it runs in a bare ``python3`` container), whose
"model" ``echo`` answers ``echo: <last user message>``. It lets the control plane's tests exercise replicas,
health checks, load balancing and streaming without a real model.

Endpoints:
  GET  /health               200 {"status": "ok"} (503 once /control/health turned it unhealthy)
  GET  /v1/models            {"object": "list", "data": [{"id": "echo", ...}]}
  POST /v1/chat/completions  chat.completion; with "stream": true, SSE chat.completion.chunk events (one per
                             word, ECHO_CHUNK_DELAY seconds apart, default 0.01) then "data: [DONE]"; "usage" counts
                             words (and a last usage chunk when stream_options.include_usage is set)
  POST /v1/completions       text_completion echoing the prompt (not streamed), with usage
  POST /v1/embeddings        one 4-number embedding per input (word count, length, ...), with usage
  GET  /                     info: replica id, pid, host, port, model, uptime, requests served
  GET  /metrics              Prometheus text: echo_requests_total{method,path,code}, echo_in_flight_requests,
                             echo_stream_cancelled_total (streams the client left before the end), ...
  POST /control/health       {"healthy": false} makes /health answer 503 (true restores it)  [test hook]
  POST /control/exit         {"code": 3} makes the process exit with that code shortly after answering [test hook]

Every response carries ``X-Echo-Replica: <pid>-<random per-process hex>``: the pid alone does not tell replicas
apart, since every sandboxed/containerised replica may run as the same pid in its own pid namespace.
Request bodies are capped at 1 MiB (413); invalid JSON gives 400 with an OpenAI-style error body.

Options: ``--port`` (default $PORT, else 8000), ``--host`` (default $ECHO_HOST, else 127.0.0.1), ``--quiet``.
Environment for tests: ``ECHO_TAG`` (echoed by ``GET /``, to tell revisions apart), ``ECHO_CHUNK_DELAY`` (seconds
between stream chunks), ``ECHO_STARTUP_DELAY`` (sleep
before listening), ``ECHO_FAIL_ON_START`` (print this message to stderr and exit 1 at once).
SIGTERM/SIGINT stop the server cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_ID = "echo"
MAX_BODY_BYTES = 1024 * 1024
DRAIN_LIMIT_BYTES = 16 * MAX_BODY_BYTES
KNOWN_PATHS = ("/", "/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
               "/metrics", "/control/health", "/control/exit")
PID = os.getpid()
INSTANCE_ID = uuid.uuid4().hex[:12]
# pids repeat across sandboxes/containers (each replica of the local runtime is pid 2 in its own pid namespace),
# so the replica id adds a random per-process part.
REPLICA_ID = f"{PID}-{INSTANCE_ID}"
STARTED_AT = time.time()


class RequestError(Exception):
    def __init__(self, status: int, message: str, err_type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.code = code


class State:
    """Process-wide counters and switches, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.in_flight = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.stream_cancels = 0  # streams the client disconnected from before the end (a chat's Stop)
        self.healthy = True
        self.port = 0
        self.host = ""

    def count(self, method: str, path: str, code: int) -> None:
        key = (method, path if path in KNOWN_PATHS else "other", code)
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())


STATE = State()


def chunk_delay() -> float:
    try:
        return max(0.0, float(os.environ.get("ECHO_CHUNK_DELAY", "0.01")))
    except ValueError:
        return 0.01


def count_tokens(text: str) -> int:
    return len(text.split())


def message_text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def parse_chat_request(body: object) -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", code="invalid_messages")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(400, "each message must be an object with a 'role'", code="invalid_messages")
    return body


def build_reply(body: dict) -> tuple[str, list[str], str, int]:
    """(reply text, stream pieces, finish_reason, prompt token count)."""
    messages = body["messages"]
    last_user = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            last_user = message_text(message.get("content"))
            break
    words = f"echo: {last_user}".split(" ")
    finish_reason = "stop"
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        words = words[:limit]
        finish_reason = "length"
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    prompt_tokens = sum(count_tokens(message_text(m.get("content"))) for m in messages)
    return "".join(pieces), pieces, finish_reason, prompt_tokens


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "moorage-echo/1.0"
    quiet = False

    # -- plumbing -------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature from the base class
        if not self.quiet:
            sys.stderr.write(f"[echo pid={PID}] {self.address_string()} {format % args}\n")

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _common_headers(self) -> None:
        self.send_header("X-Echo-Replica", REPLICA_ID)

    def send_json(self, status: int, payload: object, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._common_headers()
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        STATE.count(self.command, self._path(), status)

    def send_error_json(self, error: RequestError, close: bool = False) -> None:
        self.send_json(error.status, {"error": {"message": error.message, "type": error.err_type,
                                                "param": None, "code": error.code}}, close=close)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise RequestError(400, "invalid Content-Length", code="bad_framing") from None
        if length < 0:
            raise RequestError(400, "invalid Content-Length", code="bad_framing")
        if length > MAX_BODY_BYTES:
            if length <= DRAIN_LIMIT_BYTES:  # read the rest so the client sees the 413, not a reset
                remaining = length
                while remaining > 0:
                    got = self.rfile.read(min(65536, remaining))
                    if not got:
                        break
                    remaining -= len(got)
            raise RequestError(413, f"request body larger than {MAX_BODY_BYTES} bytes", code="too_large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise RequestError(400, "invalid chunked encoding", code="bad_framing") from None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(data)
            if len(data) + size > MAX_BODY_BYTES:
                raise RequestError(413, f"request body larger than {MAX_BODY_BYTES} bytes", code="too_large")
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def read_json(self) -> object:
        raw = self.read_body()
        try:
            return json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"invalid JSON body: {exc}", code="invalid_json") from None

    def _dispatch(self, routes: dict) -> None:
        path = self._path()
        handler = routes.get(path)
        with STATE.lock:
            STATE.in_flight += 1
        try:
            if handler is None:
                if path in KNOWN_PATHS:
                    raise RequestError(405, f"method {self.command} not allowed on {path}", code="method")
                raise RequestError(404, f"no route {path}", code="not_found")
            handler()
        except RequestError as exc:
            # after a 413 or a broken body the rest of the request may still be unread: close
            self.send_error_json(exc, close=exc.status == 413 or exc.code == "bad_framing")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with STATE.lock:
                STATE.in_flight -= 1

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch({"/": self.get_info, "/health": self.get_health, "/v1/models": self.get_models,
                        "/metrics": self.get_metrics})

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/v1/chat/completions": self.post_chat, "/v1/completions": self.post_completion,
                        "/v1/embeddings": self.post_embeddings, "/control/health": self.post_control_health,
                        "/control/exit": self.post_control_exit})

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch({})

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch({})

    # -- endpoints ------------------------------------------------------------------------------------------

    def get_info(self) -> None:
        self.send_json(200, {
            "server": "moorage-echo", "model": MODEL_ID, "replica": REPLICA_ID, "pid": PID,
            "instance_id": INSTANCE_ID,
            "host": STATE.host, "port": STATE.port, "env_port": os.environ.get("PORT"),
            "model_name": os.environ.get("BACKEND_MODEL_NAME"), "started_at": STARTED_AT,
            "uptime_s": round(time.time() - STARTED_AT, 3), "requests": STATE.total_requests(),
            "healthy": STATE.healthy, "tag": os.environ.get("ECHO_TAG"),
        })

    def get_health(self) -> None:
        if STATE.healthy:
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(503, {"status": "unhealthy"})

    def get_models(self) -> None:
        self.send_json(200, {"object": "list", "data": [
            {"id": MODEL_ID, "object": "model", "created": int(STARTED_AT), "owned_by": "moorage"}]})

    def get_metrics(self) -> None:
        lines = [
            "# HELP echo_requests_total HTTP requests served, by method, path and status code.",
            "# TYPE echo_requests_total counter",
        ]
        with STATE.lock:
            for (method, path, code), value in sorted(STATE.requests.items()):
                lines.append(f'echo_requests_total{{method="{method}",path="{path}",code="{code}"}} {value}')
            in_flight = STATE.in_flight - 1  # not counting this scrape
            prompt, completion = STATE.prompt_tokens, STATE.completion_tokens
            cancels = STATE.stream_cancels
        lines += [
            "# HELP echo_in_flight_requests Requests being served (excluding this scrape).",
            "# TYPE echo_in_flight_requests gauge",
            f"echo_in_flight_requests {max(0, in_flight)}",
            "# HELP echo_prompt_tokens_total Prompt words seen by chat completions.",
            "# TYPE echo_prompt_tokens_total counter",
            f"echo_prompt_tokens_total {prompt}",
            "# HELP echo_completion_tokens_total Completion words produced.",
            "# TYPE echo_completion_tokens_total counter",
            f"echo_completion_tokens_total {completion}",
            "# HELP echo_stream_cancelled_total Streams the client went away from before their end.",
            "# TYPE echo_stream_cancelled_total counter",
            f"echo_stream_cancelled_total {cancels}",
            "# HELP echo_start_time_seconds Unix time the process started.",
            "# TYPE echo_start_time_seconds gauge",
            f"echo_start_time_seconds {STARTED_AT:.3f}",
        ]
        data = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self._common_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        STATE.count(self.command, "/metrics", 200)

    def post_control_health(self) -> None:
        body = self.read_json()
        if not isinstance(body, dict) or not isinstance(body.get("healthy"), bool):
            raise RequestError(400, "expected {\"healthy\": true|false}")
        STATE.healthy = body["healthy"]
        self.send_json(200, {"healthy": STATE.healthy})

    def post_control_exit(self) -> None:
        body = self.read_json()
        code = body.get("code", 1) if isinstance(body, dict) else 1
        if not isinstance(code, int):
            raise RequestError(400, "expected {\"code\": int}")
        self.send_json(200, {"exiting": code}, close=True)
        self.wfile.flush()
        threading.Timer(0.05, os._exit, args=(code,)).start()

    def post_chat(self) -> None:
        body = parse_chat_request(self.read_json())
        text, pieces, finish_reason, prompt_tokens = build_reply(body)
        model = body.get("model") if isinstance(body.get("model"), str) and body.get("model") else MODEL_ID
        completion_tokens = len(pieces)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        with STATE.lock:
            STATE.prompt_tokens += prompt_tokens
            STATE.completion_tokens += completion_tokens
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            self.stream_chat(completion_id, created, model, pieces, finish_reason,
                             usage if include_usage else None)
            return
        self.send_json(200, {
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": f"echo-{INSTANCE_ID}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": usage,
        })

    def post_completion(self) -> None:
        body = self.read_json()
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), (str, list)):
            raise RequestError(400, "'prompt' must be a string or a list", code="invalid_prompt")
        prompt = body["prompt"] if isinstance(body["prompt"], str) else " ".join(map(str, body["prompt"]))
        text = f"echo: {prompt}"
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(text),
                 "total_tokens": count_tokens(prompt) + count_tokens(text)}
        self.send_json(200, {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion",
                             "created": int(time.time()), "model": body.get("model") or MODEL_ID,
                             "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                             "usage": usage})

    def post_embeddings(self) -> None:
        body = self.read_json()
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise RequestError(400, "'input' must be a string or a list of strings", code="invalid_input")
        tokens = sum(count_tokens(i) for i in inputs)
        self.send_json(200, {"object": "list", "model": body.get("model") or MODEL_ID,
                             "data": [{"object": "embedding", "index": n,
                                       "embedding": [float(count_tokens(i)), float(len(i)), 0.5, -0.5]}
                                      for n, i in enumerate(inputs)],
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def stream_chat(self, completion_id: str, created: int, model: str, pieces: list[str],
                    finish_reason: str, usage: dict | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers()
        self.end_headers()
        self.wfile.flush()

        def event(delta: dict, finish: str | None, extra: dict | None = None, choices: bool = True) -> None:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "system_fingerprint": f"echo-{INSTANCE_ID}",
                       "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                       if choices else []}
            if extra:
                payload.update(extra)
            self._write_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")

        delay = chunk_delay()
        try:
            event({"role": "assistant", "content": ""}, None)
            for piece in pieces:
                if delay:
                    time.sleep(delay)
                event({"content": piece}, None)
        except (BrokenPipeError, ConnectionResetError):
            with STATE.lock:
                STATE.stream_cancels += 1
            raise
        event({}, finish_reason)
        if usage is not None:
            event({}, None, {"usage": usage}, choices=False)
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        STATE.count(self.command, "/v1/chat/completions", 200)


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Echo OpenAI-compatible server (Moorage test fixture).")
    default_port = os.environ.get("PORT", "8000")
    parser.add_argument("--port", type=int, default=int(default_port) if default_port.isdigit() else 8000)
    parser.add_argument("--host", default=os.environ.get("ECHO_HOST", "127.0.0.1"))
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failure = os.environ.get("ECHO_FAIL_ON_START")
    if failure:
        print(f"echo: refusing to start: {failure}", file=sys.stderr, flush=True)
        return 1
    try:
        startup_delay = float(os.environ.get("ECHO_STARTUP_DELAY", "0") or 0)
    except ValueError:
        startup_delay = 0.0
    if startup_delay > 0:
        time.sleep(startup_delay)
    Handler.quiet = args.quiet
    server = EchoServer((args.host, args.port), Handler)
    STATE.host, STATE.port = args.host, server.server_address[1]

    def stop(signum: int, _frame: object) -> None:
        print(f"echo: received signal {signum}, shutting down", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"echo: listening on http://{args.host}:{STATE.port} (pid {PID}, instance {INSTANCE_ID})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("echo: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
