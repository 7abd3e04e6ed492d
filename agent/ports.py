"""Host ports for replicas, taken from ``[agent] port_range``.

A port is handed out only if no kernel of ours holds it and it can be bound right now on 127.0.0.1 and
0.0.0.0 (so ports used by other programs, or in TIME_WAIT, are skipped). The search continues after the last
port handed out instead of restarting at the bottom, so a just-released port is not reused at once (an app
proxy may still route to it for a moment).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable


class PortsExhausted(RuntimeError):
    pass


def port_is_bindable(port: int, hosts: Iterable[str] = ("127.0.0.1", "0.0.0.0")) -> bool:
    """True when a TCP socket can bind ``port`` on every host (no SO_REUSEADDR: be conservative)."""
    for host in hosts:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            return False
        finally:
            sock.close()
    return True


class PortAllocator:
    def __init__(self, port_range: tuple[int, int], is_free: Callable[[int], bool] = port_is_bindable):
        low, high = port_range
        if not 0 < low <= high <= 65535:
            raise ValueError(f"invalid port range {port_range}")
        self._low, self._high = low, high
        self._is_free = is_free
        self._held: set[int] = set()
        self._next = low

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def allocate(self) -> int:
        size = self._high - self._low + 1
        for i in range(size):
            port = self._low + (self._next - self._low + i) % size
            if port in self._held or not self._is_free(port):
                continue
            self._held.add(port)
            self._next = self._low + (port - self._low + 1) % size
            return port
        raise PortsExhausted(f"no free port in {self._low}-{self._high}")

    def reserve(self, port: int) -> None:
        """Mark ``port`` as held (e.g. by a replica left over from a previous agent run)."""
        self._held.add(port)

    def release(self, port: int) -> None:
        self._held.discard(port)
