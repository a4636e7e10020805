"""Shared fixtures: one unified cluster per test session, proxies per test or module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clusters import make_unified
from tests.fixtures.proxy import ProxyThread, proxy_config


@pytest.fixture(scope="session")
def unified() -> Iterator[PgCluster]:
    """The unified PostgreSQL server (throwaway, session-wide)."""
    cluster = make_unified()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def proxy(unified: PgCluster) -> Iterator[ProxyThread]:
    """A proxy in front of the unified server, shared by a test module."""
    with ProxyThread(proxy_config(unified)) as p:
        yield p
