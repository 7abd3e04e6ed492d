"""A fast OpenAI-compatible stub replica for the gateway benchmark (no model: fixed answers).

``python bench/_lib/openai_stub.py --port N [--uvloop]``. Serves ``POST /v1/chat/completions`` (any path, in
fact) over HTTP/1.1 keep-alive with a hand-written asyncio protocol, so that the stub costs far less CPU per
request than the proxies measured in front of it:

* ``"stream": true`` absent → one JSON chat completion with ``usage`` (Content-Length);
* ``"stream": true`` → ``text/event-stream``, chunked: ``CHUNKS`` content events, a usage event (empty
  ``choices``) when the request asked for ``stream_options.include_usage``, then ``data: [DONE]``; each event
  is written on its own, as an engine writes tokens.

Prints READY on stderr when listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

CHUNKS = 8
USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello " * CHUNKS},
                 "finish_reason": "stop"}],
    "usage": USAGE}).encode()
SIZED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(COMPLETION)
         + COMPLETION)
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: object) -> bytes:
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


CONTENT = _event({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                  "choices": [{"index": 0, "delta": {"content": "hello "}, "finish_reason": None}]})
USAGE_EVENT = _event({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                      "choices": [], "usage": USAGE})
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
MAX_HEAD = 64 * 1024


class Stub(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._close()
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        assert self.transport is not None
        compact = body.replace(b" ", b"")
        if b'"stream":true' not in compact:
            self.transport.write(SIZED)
            return
        self.transport.write(STREAM_HEAD)
        for _ in range(CHUNKS):
            self.transport.write(CONTENT)
        if b'"include_usage":true' in compact:
            self.transport.write(USAGE_EVENT)
        self.transport.write(DONE)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", port, backlog=4096)
    print("READY", flush=True, file=sys.stderr)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.port))
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
