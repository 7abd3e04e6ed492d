"""Key-value store for configuration, discovery and route tables: etcd in a cluster, memory when embedded.

Both implement :class:`KVStore`. ``watch_prefix`` is the important part: it yields a ``reset`` event with the full
contents of the prefix first, then ``put``/``delete`` events. The etcd implementation survives etcd restarts:
when the watch stream breaks it reconnects with back-off and resumes from the last revision it saw, or, if
that revision was compacted meanwhile, sends a fresh ``reset``. Consumers therefore keep serving the last state
they had while etcd is away and converge when it is back.

With a user and password (``[etcd] user`` / ``password_file``, :meth:`EtcdStore.from_config`), every client logs
in. etcd forgets an auth token when it restarts and after ``--auth-token-ttl`` (300 s) without use; a call
refused for that reason is retried once on a fresh client, which logs in again. :meth:`EtcdStore.check`, run
by each daemon at start, turns a wrong password, a missing login or a role without access to the prefix into
one clear :class:`EtcdAuthError` instead of endless retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from common.config import ConfigError

if TYPE_CHECKING:
    from common.config import EtcdSection

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MOORAGE_PREFIX = "/moorage/"  # every key below lives under it (plus the namespace): what an etcd role must grant
ROUTES_PREFIX = "/moorage/routes/"  # one key per endpoint: the route table the app proxies serve
AGENTS_PREFIX = "/moorage/agents/"  # one leased key per live agent


@dataclasses.dataclass(slots=True)
class WatchEvent:
    type: str  # "reset" | "put" | "delete"
    key: str = ""
    value: str | None = None
    items: dict[str, str] | None = None  # for "reset": the whole prefix


class KVStore(Protocol):
    async def put(self, key: str, value: str) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def get(self, key: str) -> str | None: ...
    async def get_prefix(self, prefix: str) -> dict[str, str]: ...
    def watch_prefix(self, prefix: str) -> AsyncGenerator[WatchEvent, None]: ...
    async def close(self) -> None: ...


class MemoryStore:
    """In-process store with the same interface, for embedded mode (one process, one event loop)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []

    async def put(self, key: str, value: str) -> None:
        if self._data.get(key) == value:
            return
        self._data[key] = value
        self._notify(WatchEvent("put", key, value))

    async def delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self._notify(WatchEvent("delete", key))

    async def get(self, key: str) -> str | None:
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def _notify(self, event: WatchEvent) -> None:
        for prefix, queue in self._watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)

    async def watch_prefix(self, prefix: str) -> AsyncGenerator[WatchEvent, None]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        entry = (prefix, queue)
        self._watchers.append(entry)
        try:
            yield WatchEvent("reset", items=await self.get_prefix(prefix))
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(entry)

    async def close(self) -> None:
        return None


class EtcdAuthError(ConfigError):
    """etcd refused our login or our access to Moorage's keys: a configuration error, fatal at start."""


class EtcdStore:
    """etcd v3 through aetcd, wrapped so that watches resume after etcd restarts."""

    # Tunables (why): a broken stream is noticed within WATCHDOG_INTERVAL; back-off caps at RECONNECT_MAX so a
    # restarted etcd is picked up within a few seconds; OP_TIMEOUT keeps a dead etcd from hanging callers.
    WATCHDOG_INTERVAL = 1.0
    RECONNECT_MIN = 0.2
    RECONNECT_MAX = 2.0
    OP_TIMEOUT = 5.0

    def __init__(self, host: str = "127.0.0.1", port: int = 2379, namespace: str = "", *,
                 user: str | None = None, password: str | None = None) -> None:
        if (user is None) != (password is None):
            raise ValueError("etcd user and password go together")
        self._host = host
        self._port = port
        self._ns = namespace.rstrip("/")
        self._user = user
        self.__password = password  # name-mangled and never part of a message or repr
        self._client = self._new_client()

    @classmethod
    def from_config(cls, section: EtcdSection) -> EtcdStore:
        """A store for an ``[etcd]`` section; reads the password (file) once. Raises ConfigError when the
        password is missing or its file is readable by others."""
        credentials = section.credentials()
        user, password = credentials if credentials else (None, None)
        return cls(section.host or "", section.port, section.namespace, user=user, password=password)

    def __repr__(self) -> str:
        return f"EtcdStore({self._host}:{self._port}, namespace={self._ns!r}, user={self._user!r})"

    def _new_client(self) -> Any:  # an aetcd.Client; aetcd ships no type information
        import aetcd

        return aetcd.Client(host=self._host, port=self._port, username=self._user, password=self.__password,
                            timeout=int(self.OP_TIMEOUT))

    def clone(self) -> EtcdStore:
        """A new store (own client) with the same address, namespace and login, e.g. for a LeaseKeeper's
        factory."""
        return EtcdStore(self._host, self._port, self._ns, user=self._user, password=self.__password)

    async def check(self) -> None:
        """Log in and read Moorage's prefix once, at start. Raises :class:`EtcdAuthError` with the fix when etcd
        refuses the password, wants a login we do not have, has authentication off while we have a user, or
        the user's role does not reach the prefix. An unreachable etcd is only logged: the daemons wait for
        etcd as before."""
        from aetcd import exceptions as etcd_exc

        where = f"etcd at {self._host}:{self._port}"
        prefix = self._ns + MOORAGE_PREFIX
        try:
            await self._call(lambda c: c.get(prefix.encode()))
        except (TimeoutError, etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError) as exc:
            log.warning("%s is not reachable (%s); carrying on, etcd calls are retried", where,
                        type(exc).__name__)
        except etcd_exc.ClientError as exc:
            text = str(exc)
            if "authentication failed" in text:
                raise EtcdAuthError(f"{where} refused the login of user {self._user!r}: wrong user or password "
                                    "(check [etcd] user and password_file)") from None
            if "user name is empty" in text:
                raise EtcdAuthError(f"{where} requires authentication: set [etcd] user and password_file "
                                    "(docs/operations.md, \"etcd\")") from None
            if "authentication is not enabled" in text:
                raise EtcdAuthError(f"{where} has authentication disabled but [etcd] user is set: enable it "
                                    "(etcdctl auth enable) or remove the user") from None
            if "permission denied" in text:
                raise EtcdAuthError(f"{where}: user {self._user!r} may not read {prefix}: grant its role "
                                    f"readwrite on the prefix {prefix}") from None
            log.warning("%s: reading %s at start failed (%s: %s); carrying on, etcd calls are retried", where,
                        prefix, type(exc).__name__, text)

    def _k(self, key: str) -> bytes:
        return (self._ns + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self._ns):]

    async def _call(self, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``op(client)``; on a connection failure, rebuild the client once and retry. (After an etcd
        restart an aetcd client can keep failing with "connection refused" while a fresh one connects.)"""
        from aetcd import exceptions as etcd_exc

        try:
            return await asyncio.wait_for(op(self._client), self.OP_TIMEOUT)
        except (TimeoutError, etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                etcd_exc.UnauthenticatedError):  # "invalid auth token": etcd restarted or the token expired
            old, self._client = self._client, self._new_client()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.close(), 2.0)
            return await asyncio.wait_for(op(self._client), self.OP_TIMEOUT)

    async def put(self, key: str, value: str) -> None:
        await self._call(lambda c: c.put(self._k(key), value.encode()))

    async def delete(self, key: str) -> None:
        await self._call(lambda c: c.delete(self._k(key)))

    async def get(self, key: str) -> str | None:
        result = await self._call(lambda c: c.get(self._k(key)))
        return None if result is None else result.value.decode()

    async def _get_prefix_rev(self, client: Any, prefix: str) -> tuple[dict[str, str], int]:
        result = await asyncio.wait_for(client.get_prefix(self._k(prefix)), self.OP_TIMEOUT)
        items = {self._unk(kv.key): kv.value.decode() for kv in result}
        return items, int(result.header.revision)

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        result = await self._call(lambda c: c.get_prefix(self._k(prefix)))
        return {self._unk(kv.key): kv.value.decode() for kv in result}

    async def put_with_lease(self, key: str, value: str, lease_id: int) -> None:
        await asyncio.wait_for(self._client.put(self._k(key), value.encode(), lease=lease_id), self.OP_TIMEOUT)

    async def put_if_absent(self, key: str, value: str, lease_id: int = 0) -> tuple[bool, str | None, int]:
        """Create ``key`` (bound to ``lease_id`` unless 0) only if it does not exist, in one transaction.

        Returns ``(created, value, lease)``: what the key holds afterwards and the lease it is bound to (0: none).
        """
        k = self._k(key)

        async def txn(c: Any) -> Any:  # (succeeded, responses)
            tx = c.transactions
            return await c.transaction(compare=[tx.create(k) == 0], success=[tx.put(k, value.encode(), lease_id)],
                                       failure=[tx.get(k)])

        created, responses = await self._call(txn)
        if created:
            return True, value, lease_id
        found = responses[0] if responses else []
        if not found:  # defensive: the failure branch reads the very key whose existence failed the compare
            return False, None, 0
        raw, kv = found[0]
        return False, raw.decode(), kv.lease

    async def grant_lease(self, ttl: int) -> int:
        lease = await asyncio.wait_for(self._client.lease(ttl), self.OP_TIMEOUT)
        return int(lease.id)

    async def refresh_lease(self, lease_id: int) -> bool:
        """Refresh; False when the lease no longer exists (expired while etcd or we were away)."""
        result = await asyncio.wait_for(self._client.refresh_lease(lease_id), self.OP_TIMEOUT)
        return bool(getattr(result, "TTL", 1) > 0)

    async def revoke_lease(self, lease_id: int) -> None:
        await asyncio.wait_for(self._client.revoke_lease(lease_id), self.OP_TIMEOUT)

    async def ping(self) -> None:
        await asyncio.wait_for(self._client.status(), self.OP_TIMEOUT)

    async def watch_prefix(self, prefix: str) -> AsyncGenerator[WatchEvent, None]:
        """Yield ``reset`` then changes; reconnect and resume from the last revision on failure."""
        from aetcd import exceptions as etcd_exc

        last_revision: int | None = None
        delay = self.RECONNECT_MIN
        while True:
            client = self._new_client()
            watch = None
            events: asyncio.Queue[Any] = asyncio.Queue()  # aetcd watch events, or the error that ended the stream
            pump: asyncio.Task[None] | None = None
            try:
                if last_revision is None:
                    items, last_revision = await self._get_prefix_rev(client, prefix)
                    yield WatchEvent("reset", items=items)
                try:
                    watch = await asyncio.wait_for(
                        client.watch_prefix(self._k(prefix), start_revision=last_revision + 1), self.OP_TIMEOUT)
                except etcd_exc.RevisionCompactedError:
                    last_revision = None
                    continue
                delay = self.RECONNECT_MIN

                async def _pump(w: Any = watch, q: asyncio.Queue[Any] = events) -> None:
                    try:
                        async for ev in w:
                            await q.put(ev)
                        await q.put(ConnectionError("watch stream ended"))
                    except Exception as exc:  # delivered to the consumer loop below
                        await q.put(exc)

                pump = asyncio.create_task(_pump())
                while True:
                    try:
                        item = await asyncio.wait_for(events.get(), self.WATCHDOG_INTERVAL)
                    except TimeoutError:
                        handler = getattr(client._watcher, "_request_handler", None)
                        if handler is None or handler.done():
                            raise ConnectionError("watch stream is gone") from None
                        await asyncio.wait_for(client.status(), self.OP_TIMEOUT)
                        continue
                    if isinstance(item, etcd_exc.RevisionCompactedError):
                        last_revision = None
                        break
                    if isinstance(item, BaseException):
                        raise item
                    key = self._unk(item.kv.key)
                    last_revision = max(last_revision or 0, item.kv.mod_revision)
                    if item.kind == "PUT":
                        yield WatchEvent("put", key, item.kv.value.decode())
                    else:
                        yield WatchEvent("delete", key)
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                log.warning("etcd watch on %s broken (%s); resuming from revision %s in %.1fs",
                            prefix, type(exc).__name__, last_revision, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.RECONNECT_MAX)
            finally:
                if pump is not None:
                    pump.cancel()
                    with contextlib.suppress(BaseException):
                        await pump
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(client.close(), 2.0)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.close(), 2.0)
