"""Shared fixtures: one unified cluster per test session, proxies per test or module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clusters import make_unified
from tests.fixtures.proxy import ProxyThread, proxy_config
from tests.fixtures.tenancy import TenancyBed, make_tenancy_bed


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


@pytest.fixture(scope="session")
def tenancy_bed() -> Iterator[TenancyBed]:
    """Unified (database ``handyshop``) + two tenant servers, shared by the whole session.

    Each test package resets it to a fresh state in its own module fixture.
    """
    bed = make_tenancy_bed()
    try:
        yield bed
    finally:
        bed.destroy()
