"""Reading token usage from a replica's answer as it is relayed, and stripping the usage chunk the gateway
asked for on the client's behalf (docs/gateway.md).

A sized (non-streamed) answer carries ``usage`` in its JSON. A streamed one (server-sent events) carries it in a
last chunk with empty ``choices`` when ``stream_options.include_usage`` was set; when the gateway set it (the
client did not), that chunk is removed from what the client receives. Stripping holds back only the bytes of an
event that has not ended yet, never a whole answer; every other byte is relayed as it arrives.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

EVENT_END = re.compile(rb"\r?\n\r?\n")
MAX_PENDING = 1024 * 1024  # one event larger than this is relayed unparsed (and no longer stripped)


def usage_of(payload: Any) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of an OpenAI answer or chunk, when it reports them."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int) or isinstance(prompt, bool):
        return None
    return max(prompt, 0), max(completion or 0, 0)


class UsageTap:
    """Watches one answer; ``usage`` is what the replica reported, if it did."""

    def __init__(self, strip_usage_chunk: bool) -> None:
        self.strip = strip_usage_chunk
        self.usage: tuple[int, int] | None = None
        self.first_byte_at: float | None = None
        self.chunks = 0  # content events seen (a rough completion count when no usage came)
        self._pending = b""
        self._parsing = True

    # -- the Forwarder's hooks (appproxy.forward.ResponseTap) ------------------------------------------------
    def sized(self, body: bytes) -> None:
        self.first_byte_at = time.monotonic()
        if b'"usage"' not in body:
            return
        try:
            self.usage = usage_of(json.loads(body))
        except ValueError:
            pass

    def chunk(self, data: bytes) -> bytes:
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        if not self._parsing:
            return data
        pending = self._pending + data
        if len(pending) > MAX_PENDING:  # not SSE as we know it: relay everything, parse nothing more
            self._parsing, self._pending = False, b""
            return pending
        out: list[bytes] = []
        start = 0
        for match in EVENT_END.finditer(pending):
            event = pending[start:match.end()]
            start = match.end()
            if not self._keep(event):
                continue
            out.append(event)
        self._pending = pending[start:]
        if not self.strip:
            return data  # observed only: every byte goes on at once
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest if self.strip else b""

    # -- one event -------------------------------------------------------------------------------------------
    def _keep(self, event: bytes) -> bool:
        """Parse one SSE event; False when it is the usage chunk to strip."""
        if b'"usage"' not in event:
            if b'"choices"' in event:
                self.chunks += 1
            return True
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            try:
                payload = json.loads(line[5:])
            except ValueError:
                return True
            found = usage_of(payload)
            if found is None:
                continue
            self.usage = found
            if self.strip and payload.get("choices") == []:
                return False
        self.chunks += 1
        return True
