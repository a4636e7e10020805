"""psycopg 3 and asyncpg: the workload through the proxy, every shop cut over, equals the direct run."""

from __future__ import annotations

from tests.integration.drivers.harness import Tier, compare_driver, run_asyncpg, run_psycopg


def test_psycopg(tier: Tier) -> None:
    compare_driver(tier, "psycopg", run_psycopg)


def test_asyncpg(tier: Tier) -> None:
    compare_driver(tier, "asyncpg", run_asyncpg)
