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
