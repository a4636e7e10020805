"""A client's cancel lands before the client goes on (no late cancel hits the next query).

libpq and asyncpg send a CancelRequest on a new connection and wait until it
is closed before they go on; PostgreSQL closes it only after it has signalled
the backend. The proxy must do the same: close the client's cancel connection
only after the server has closed the forwarded one, or a cancel of a
``COPY ... FROM STDIN`` (a client timeout) arrives late and cancels the next
query (57014 on ``SELECT 1``). On loopback a late cancel mostly misses a
``SELECT 1`` (it is over in well under a millisecond), so each round also runs
a 50 ms query that a late cancel would hit; each case repeats a few rounds.
With the cancel connection closed early, the proxied cases failed in most rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.pools.connection import ServerTarget
from pgtenantproxy.server.listener import ProxyServer
from tests.fixtures.clients import asyncpg_kwargs, psycopg_kwargs
from tests.fixtures.clusters import PASSWORDS, psql
from tests.fixtures.hint_router import HintRouter
from tests.fixtures.proxy import ProxyThread, proxy_config

ROUNDS = 5


async def _stalled_rows() -> AsyncIterator[bytes]:
    """A COPY source that sends one row, then hangs (the client's timeout ends it)."""
    yield b"1\tone\n"
    await asyncio.sleep(60)


async def _copy_timeouts_then_select(port: int | None, unified: PgCluster) -> None:
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, port))
    try:
        await conn.execute("CREATE TEMP TABLE t (id int, name text)")
        for _ in range(ROUNDS):
            with pytest.raises(TimeoutError):
                # asyncpg answers the timeout with CopyFail and a CancelRequest.
                await asyncio.wait_for(conn.copy_to_table("t", source=_stalled_rows()), timeout=0.5)
            assert await conn.fetchval("SELECT 1") == 1
            # A query that runs a little longer catches a cancel landing late, too.
            assert await conn.fetchval("SELECT 2 FROM pg_sleep(0.05)") == 2
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
    finally:
        await conn.close()


async def test_asyncpg_copy_timeout_then_select(unified: PgCluster, proxy: ProxyThread) -> None:
    await _copy_timeouts_then_select(proxy.port, unified)


async def test_asyncpg_copy_timeout_then_select_direct(unified: PgCluster) -> None:
    """The control: the same client code directly against PostgreSQL."""
    await _copy_timeouts_then_select(None, unified)


class _GaveUp(Exception):
    """The client's own timeout."""


@pytest.mark.parametrize("direct", [False, True], ids=["proxy", "direct"])
def test_psycopg_cancel_during_copy_then_select(unified: PgCluster, proxy: ProxyThread, direct: bool) -> None:
    """The client-timeout case with psycopg: cancel the open COPY, then end it in error.

    psycopg's cancel is synchronous: it returns once the cancel connection is
    closed, then the COPY block ends with CopyFail (psycopg swallows the server's
    57014 for it and re-raises the block's error). The next queries must not be hit.
    """
    port = None if direct else proxy.port
    with psycopg.connect(**psycopg_kwargs(unified, port), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (id int, name text)")
        cancel = getattr(conn, "cancel_safe", conn.cancel)
        for _ in range(ROUNDS):
            with pytest.raises(_GaveUp):
                with conn.cursor() as cur, cur.copy("COPY t FROM STDIN") as copy:
                    copy.write_row((1, "one"))
                    cancel()
                    raise _GaveUp
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.execute("SELECT 2 FROM pg_sleep(0.05)").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


# --- a query running on a tenant connection (routed relay) ------------------------------------

#: Sleeps on the tenant database only: a re-run on unified would return at once.
TENANT_SLEEP = ("SELECT /* tenant */ current_database(), "
                "pg_sleep(CASE WHEN current_database() = 'tenant_cancel' THEN $1 ELSE 0 END)::text")


Routed = tuple[ProxyThread, HintRouter]


@pytest.fixture(scope="module")
def routed(unified: PgCluster) -> Iterator[Routed]:
    """A routed proxy: SQL with ``/* tenant */`` runs in database ``tenant_cancel``."""
    psql(unified, "DROP DATABASE IF EXISTS tenant_cancel")
    psql(unified, "CREATE DATABASE tenant_cancel OWNER app")
    target = ServerTarget(unified.host, unified.port, "tenant_cancel", "app", PASSWORDS["app"],
                          sslmode="disable", connect_timeout_ms=1000)
    router = HintRouter(target, timeout=60)  # no tenant timeout: only the client's cancel ends the sleep
    thread = ProxyThread(proxy_config(unified))
    thread.server = ProxyServer(thread.config, router=router)
    thread.start()
    try:
        yield thread, router
    finally:
        thread.stop()


async def _prepared_on_tenant(conn: Any) -> Any:
    sleep = await conn.prepare(TENANT_SLEEP)
    # asyncpg runs a statement's first execution in its prepare batch, which stays on
    # unified; from then on it goes to the tenant database.
    await sleep.fetchrow(0)
    assert (await sleep.fetchrow(0))[0] == "tenant_cancel"
    return sleep


async def _tenant_active(conn: Any) -> int:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'tenant_cancel' AND state = 'active'")


async def test_asyncpg_timeout_on_tenant_query(unified: PgCluster, routed: Routed) -> None:
    """asyncpg's timeout cancel of a tenant read reaches the tenant backend; the session goes on."""
    proxy, router = routed
    conn: Any = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
    try:
        sleep = await _prepared_on_tenant(conn)
        for _ in range(ROUNDS):
            router.completions.clear()
            with pytest.raises(TimeoutError):
                await sleep.fetchrow(60, timeout=0.5)  # asyncpg sends a CancelRequest
            assert await conn.fetchval("SELECT /* tenant */ 1") == 1
            assert await conn.fetchval("SELECT 1") == 1
            # The sleep was cancelled on the tenant: it did not run its 60 s to an answer there
            # (the first completion recorded is the cancelled unit's), and nothing runs there now.
            assert router.completions[0] != ("tenant", "ok")
            assert await _tenant_active(conn) == 0
            assert (await sleep.fetchrow(0.05))[0] == "tenant_cancel"
    finally:
        await conn.close()


async def test_cancelled_tenant_read_is_not_rerun(unified: PgCluster, routed: Routed) -> None:
    proxy, router = routed
    conn: Any = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
    try:
        sleep = await _prepared_on_tenant(conn)
        router.completions.clear()
        with pytest.raises(TimeoutError):
            await sleep.fetchrow(60, timeout=0.5)
        assert await conn.fetchval("SELECT 1") == 1
        assert ("unified", "fallback") not in router.completions
    finally:
        await conn.close()
