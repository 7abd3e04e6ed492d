from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import EtcdServer, postgres_database


def _running_etcd() -> Iterator[EtcdServer]:
    server = EtcdServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    yield from _running_etcd()


@pytest.fixture
def private_etcd() -> Iterator[EtcdServer]:
    """An etcd of the test's own, for tests that stop and restart it (the session one is shared)."""
    yield from _running_etcd()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_forwarders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests that kill a replica's process group themselves (to simulate a crash while no agent watches) leave
    its port forwarder (pasta, which outlives the namespace; agent/runtime/netfwd.py) behind: end those at the
    end of the session, found by the test's temporary dir in their command line."""
    yield
    import os
    import signal

    base = str(tmp_path_factory.getbasetemp())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"pasta") and any(base.encode() in a for a in args):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
