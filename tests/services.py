"""Real backing services for tests: a throwaway PostgreSQL database and an etcd server.

Nothing here skips: if PostgreSQL or etcd is missing the fixture fails loudly. ``make test`` and ``make test-fast``
run ``make system-deps`` first (``.ci/install-system-deps``): it installs etcd when missing and starts a local
PostgreSQL cluster that is installed but down; PostgreSQL itself must be installed and accept ``postgres`` from
127.0.0.1 without a password (or set ``MOORAGE_TEST_PG``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

PG_ADMIN_URL = os.environ.get("MOORAGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _psql(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """Create a fresh database; yield its SQLAlchemy asyncpg URL; drop it afterwards."""
    name = f"moorage_test_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(Exception):
            _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class EtcdServer:
    """A real etcd on loopback with a temporary data dir; can be stopped and restarted on the same ports."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.extra_args = list(extra_args or [])  # e.g. ["--auth-token-ttl", "1"]
        self.binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.path.exists(self.binary):
            raise RuntimeError("etcd is not installed: run `make system-deps` (apt-get install etcd-server)")
        self.data_dir = tempfile.mkdtemp(prefix="moorage-etcd-")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.password = ""  # the "moorage" user's, once a test has enabled authentication

    def start(self) -> None:
        args = [
            self.binary, "--name", "test", "--data-dir", self.data_dir,
            "--listen-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{self.peer_port}",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.client_port)

    def enable_auth(self, root_password: str, users: dict[str, tuple[str, str]]) -> None:
        """Turn on authentication (what ``etcdctl user add``, ``role grant-permission --prefix`` and ``auth
        enable`` do, over etcd's own gRPC API): a ``root`` user, and per entry ``name: (password, prefix)`` a user
        with a role of the same name that may read and write the keys under ``prefix``. From then on clients need
        a user and password."""
        import grpc
        from aetcd import rpc
        from aetcd.rpc import auth_pb2, rpc_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.client_port}") as channel:
            auth = rpc_pb2_grpc.AuthStub(channel)
            auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=root_password), timeout=10)
            auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
            for name, (password, prefix) in users.items():
                end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # the range [prefix, end) is "every key under prefix"
                auth.UserAdd(rpc.AuthUserAddRequest(name=name, password=password), timeout=10)
                auth.RoleAdd(rpc.AuthRoleAddRequest(name=name), timeout=10)
                perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=prefix.encode(),
                                           range_end=end.encode())
                auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name=name, perm=perm), timeout=10)
                auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=name, role=name), timeout=10)
            auth.AuthEnable(rpc.AuthEnableRequest(), timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
