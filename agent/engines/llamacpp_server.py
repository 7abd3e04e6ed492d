"""llama-cpp-python's OpenAI-compatible server with a Prometheus ``/metrics`` endpoint (the ``llamacpp`` variant)::

    python3 -m agent.engines.llamacpp_server <llama_cpp.server arguments>

llama-cpp-python's server has no ``/metrics``, so ``inference_framework`` autoscaling rules could not see a
replica's load. This launcher runs ``llama_cpp.server``'s own ``main()`` (its argument parsing, ``--config_file``
/ ``CONFIG_FILE``, ``HOST``/``PORT``, TLS, uvicorn), so every flag keeps working; it only swaps in a
``create_app`` that wraps the unchanged app in :class:`MetricsMiddleware`, and wraps ``llama_cpp.Llama``'s
``generate``/``eval`` to count tokens (the ASGI layer cannot: streamed responses carry no ``usage``).

Metrics, named as llama.cpp's own C++ server (``llama-server --metrics``) names its equivalents:

* ``llamacpp:requests_processing`` / ``llamacpp:requests_deferred`` (gauges): engine requests (every POST:
  completions, chat completions, embeddings, tokenize) in flight, split into the ones being served and the
  ones waiting. llama-cpp-python serves one request at a time (one lock around the model), so processing is
  ``min(in flight, 1)`` and deferred the rest.
* ``llamacpp:prompt_tokens_total`` / ``llamacpp:prompt_seconds_total`` (counters): prompt tokens evaluated
  (a prefix reused from the KV cache is not evaluated, so not counted, as in llama.cpp) and the time spent
  until the first token.
* ``llamacpp:tokens_predicted_total`` / ``llamacpp:tokens_predicted_seconds_total`` (counters): tokens
  generated and the time spent generating them after the first.
* ``llamacpp:prompt_tokens_seconds`` / ``llamacpp:predicted_tokens_seconds`` (gauges): average throughputs
  (tokens/s) since start, from the counters above.
* ``llamacpp:request_duration_seconds`` (histogram; Moorage's addition, llama.cpp has none): engine requests
  from arrival to the end of the response body (a stream's last chunk), waiting included.

It also adds what llama-cpp-python 0.3 lacks: ``stream_options.include_usage`` on streamed chat and text
completions (the gateway asks for it to meter streams, docs/gateway.md). The middleware reads the request body
and marks the request (a context variable); a streamed ``create_chat_completion``/``create_completion`` of a
marked request then ends with OpenAI's usage chunk (``"choices": []``), its counts those of the request's
``generate`` call: the prompt's tokens, and the tokens produced minus an end-of-generation one, as
llama-cpp-python counts them for an answer that is not streamed.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

METRICS_PATH = "/metrics"
PARALLEL = 1  # requests llama-cpp-python serves at once: one lock around the model
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
_PROMPT_PHASE = "_moorage_prompt_phase"  # set on a Llama while generate() evaluates the prompt
_INSTRUMENTED = "_moorage_instrumented"
_USAGE = "_moorage_usage"  # [prompt tokens, completion tokens] of the engine's latest generate() call
_NESTED = "_moorage_streaming_usage"  # set on an engine while a stream with a usage chunk runs
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
MAX_INSPECTED_BODY = 64 * 1024 * 1024  # a larger body is passed on without looking for include_usage
# Set for the duration of a request that asked for stream_options.include_usage (threads of the server's pool
# inherit it: Starlette copies the context into them).
INCLUDE_USAGE: contextvars.ContextVar[bool] = contextvars.ContextVar("moorage_include_usage", default=False)


class EngineMetrics(Collector):
    """The engine's counters and gauges (thread-safe: tokens are counted in the server's worker threads)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.prompt_tokens = 0
        self.prompt_seconds = 0.0
        self.predicted_tokens = 0
        self.predicted_seconds = 0.0
        self.request_duration = Histogram(
            "llamacpp:request_duration_seconds", "Engine request duration, from arrival to the end of the response.",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(self)

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
        self.request_duration.observe(seconds)

    def add_prompt(self, tokens: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.prompt_tokens += tokens
            self.prompt_seconds += seconds

    def add_predicted(self, tokens: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            self.predicted_tokens += tokens
            self.predicted_seconds += seconds

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            in_flight, prompt_tokens, prompt_seconds = self.in_flight, self.prompt_tokens, self.prompt_seconds
            predicted_tokens, predicted_seconds = self.predicted_tokens, self.predicted_seconds
        processing = min(in_flight, PARALLEL)
        yield CounterMetricFamily("llamacpp:prompt_tokens", "Number of prompt tokens processed.",
                                  value=prompt_tokens)
        yield CounterMetricFamily("llamacpp:prompt_seconds", "Prompt process time.", value=prompt_seconds)
        yield CounterMetricFamily("llamacpp:tokens_predicted", "Number of generation tokens processed.",
                                  value=predicted_tokens)
        yield CounterMetricFamily("llamacpp:tokens_predicted_seconds", "Predict process time.",
                                  value=predicted_seconds)
        yield GaugeMetricFamily("llamacpp:prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
                                value=prompt_tokens / prompt_seconds if prompt_seconds > 0 else 0.0)
        yield GaugeMetricFamily("llamacpp:predicted_tokens_seconds", "Average generation throughput in tokens/s.",
                                value=predicted_tokens / predicted_seconds if predicted_seconds > 0 else 0.0)
        yield GaugeMetricFamily("llamacpp:requests_processing", "Number of requests processing.", value=processing)
        yield GaugeMetricFamily("llamacpp:requests_deferred", "Number of requests deferred.",
                                value=in_flight - processing)


class MetricsMiddleware:
    """ASGI middleware: answers ``GET /metrics`` itself and tracks the engine requests (POSTs) of ``app``."""

    def __init__(self, app: ASGIApp, metrics: EngineMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            await self._serve_metrics(scope, send)
        elif scope["method"] != "POST":
            await self.app(scope, receive, send)
        else:
            self.metrics.request_started()
            started = time.perf_counter()
            token = None
            try:
                if scope["path"] in USAGE_PATHS:
                    receive, wants = await _inspect_body(receive)
                    if wants:
                        token = INCLUDE_USAGE.set(True)
                await self.app(scope, receive, send)
            finally:
                if token is not None:
                    INCLUDE_USAGE.reset(token)
                self.metrics.request_finished(time.perf_counter() - started)

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        body = generate_latest(self.metrics.registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _inspect_body(receive: Receive) -> tuple[Receive, bool]:
    """Read the request body (up to MAX_INSPECTED_BODY) to see whether it asks for a streamed usage chunk;
    return a ``receive`` that replays what was read, then carries on."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or size > MAX_INSPECTED_BODY:
            break
    wants = False
    if size <= MAX_INSPECTED_BODY and messages and not messages[-1].get("more_body", False):
        try:
            body = json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request"))
        except ValueError:
            body = None
        options = body.get("stream_options") if isinstance(body, dict) else None
        wants = bool(isinstance(body, dict) and body.get("stream") is True and isinstance(options, dict)
                     and options.get("include_usage") is True)
    replay = iter(messages)

    async def replayed() -> Message:
        for message in replay:
            return message
        return await receive()

    return replayed, wants


def _with_usage(engine: Any, chunks: Iterable[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
    """The stream's chunks, then OpenAI's usage chunk for the generate() call that produced them. While it runs,
    the engine is marked, so that the completion a chat completion streams from adds no chunk of its own."""
    last: dict[str, Any] | None = None
    setattr(engine, _NESTED, True)
    try:
        for chunk in chunks:
            last = chunk
            yield chunk
    finally:
        setattr(engine, _NESTED, False)
    prompt, completion = getattr(engine, _USAGE, None) or (0, 0)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    base: dict[str, Any] = {k: last[k] for k in ("id", "object", "created", "model") if k in last} if last else {}
    yield {**base, "choices": [], "usage": usage}


def _counted(engine: Any, tokens: Generator[int, Any, None], metrics: EngineMetrics) -> Generator[int, Any, None]:
    """Pass ``engine.generate``'s tokens (and what is sent back) through, counting them. The first step
    evaluates the prompt (the wrapped ``eval`` counts its tokens) and samples the first token."""
    sent: Any = None
    prompt = True
    usage = getattr(engine, _USAGE, None)
    is_eog = getattr(engine, "_moorage_is_eog", None)
    try:
        while True:
            setattr(engine, _PROMPT_PHASE, prompt)
            started = time.perf_counter()
            try:
                token = tokens.send(sent)
            except StopIteration:
                return
            finally:
                setattr(engine, _PROMPT_PHASE, False)
                elapsed = time.perf_counter() - started
                if prompt:
                    metrics.add_prompt(seconds=elapsed)
                else:
                    metrics.add_predicted(seconds=elapsed)
            prompt = False
            metrics.add_predicted(tokens=1)
            if usage is not None and not (is_eog is not None and is_eog(token)):
                usage[1] += 1  # an end-of-generation token is not part of the completion (llama-cpp-python)
            sent = yield token
    finally:
        tokens.close()


def instrument_llama(llama_cls: Any, metrics: EngineMetrics) -> None:  # a class; mypy skips llama_cpp
    """Count tokens in ``llama_cls`` (``llama_cpp.Llama``): every completion and chat completion runs through
    its ``generate`` generator, which evaluates the prompt (``eval``) and then yields one token at a time. The
    prompt tokens are those ``eval`` receives before the first token. Once per class."""
    if getattr(llama_cls, _INSTRUMENTED, False):
        return
    original_generate = llama_cls.generate
    original_eval = llama_cls.eval
    originals = {name: getattr(llama_cls, name, None) for name in ("create_chat_completion", "create_completion")}

    @functools.wraps(original_eval)
    def counted_eval(self: Any, tokens: Sequence[int]) -> Any:
        if getattr(self, _PROMPT_PHASE, False):
            metrics.add_prompt(tokens=len(tokens))
        return original_eval(self, tokens)

    @functools.wraps(original_generate)
    def counted_generate(self: Any, *args: Any, **kwargs: Any) -> Generator[int, Any, None]:
        prompt_tokens = args[0] if args else kwargs.get("tokens", ())
        setattr(self, _USAGE, [len(prompt_tokens), 0])
        return _counted(self, original_generate(self, *args, **kwargs), metrics)

    def usage_streaming(original: Any) -> Any:
        @functools.wraps(original)
        def create(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not (kwargs.get("stream") and INCLUDE_USAGE.get()) or getattr(self, _NESTED, False):
                return original(self, *args, **kwargs)
            setattr(self, _NESTED, True)  # in case the original starts the inner stream at once
            try:
                result = original(self, *args, **kwargs)
            finally:
                setattr(self, _NESTED, False)
            return _with_usage(self, result)

        return create

    llama_cls.eval = counted_eval
    llama_cls.generate = counted_generate
    for name, original in originals.items():
        if original is not None:
            setattr(llama_cls, name, usage_streaming(original))
    setattr(llama_cls, _INSTRUMENTED, True)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``llama_cpp.server``'s ``main()`` (arguments from ``argv`` or ``sys.argv``) with the metrics."""
    import llama_cpp
    from prometheus_client import disable_created_metrics

    server_main: Any = importlib.import_module("llama_cpp.server.__main__")  # create_app is replaced below
    create_app = getattr(server_main, "create_app", None)
    if create_app is None or not callable(getattr(server_main, "main", None)):
        raise SystemExit("llama_cpp.server.__main__ has no create_app/main: unsupported llama-cpp-python version")
    disable_created_metrics()  # llama.cpp exposes no *_created samples either
    metrics = EngineMetrics()
    instrument_llama(llama_cpp.Llama, metrics)

    def is_eog(self: Any, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))

    llama_cpp.Llama._moorage_is_eog = is_eog  # an end-of-generation token is not counted as completion

    def create_app_with_metrics(*args: Any, **kwargs: Any) -> MetricsMiddleware:
        return MetricsMiddleware(create_app(*args, **kwargs), metrics)

    server_main.create_app = create_app_with_metrics
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    server_main.main()


if __name__ == "__main__":
    main()
