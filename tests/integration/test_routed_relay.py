"""The routed relay's mechanics: units to unified or a tenant database, in order.

Uses :class:`HintRouter` (``/* tenant */`` comments) so these tests are about
ordering, re-preparing, session settings and fallback, not routing policy.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster, free_port
from pgtenantproxy.pools.connection import ServerTarget
from pgtenantproxy.server.listener import ProxyServer
from tests.fixtures.clusters import PASSWORDS, psql
from tests.fixtures.hint_router import HintRouter
from tests.fixtures.proxy import ProxyThread, proxy_config


@pytest.fixture(scope="module")
def two_dbs(unified: PgCluster) -> PgCluster:
    psql(unified, "DROP DATABASE IF EXISTS tenant_one")
    psql(unified, "CREATE DATABASE tenant_one OWNER app")
    for db, where in (("app", "unified"), ("tenant_one", "tenant")):
        psql(
            unified,
            "DROP TABLE IF EXISTS place; CREATE TABLE place (shop_id int, name text, at date);"
            f"INSERT INTO place VALUES (1, '{where}', '2024-03-05')",
            dbname=db, user="app", password=PASSWORDS["app"],
        )
    return unified


def _target(cluster: PgCluster, port: int | None = None) -> ServerTarget:
    return ServerTarget(cluster.host, port or cluster.port, "tenant_one", "app", PASSWORDS["app"],
                        sslmode="disable", connect_timeout_ms=1000)


def _start(cluster: PgCluster, router: HintRouter) -> ProxyThread:
    thread = ProxyThread(proxy_config(cluster))
    thread.server = ProxyServer(thread.config, router=router)
    return thread.start()


@pytest.fixture(scope="module")
def routed(two_dbs: PgCluster) -> Iterator[tuple[ProxyThread, HintRouter]]:
    router = HintRouter(_target(two_dbs))
    proxy = _start(two_dbs, router)
    yield proxy, router
    proxy.stop()


def _dsn(cluster: PgCluster, port: int) -> str:
    return f"host=127.0.0.1 port={port} user=app password={PASSWORDS['app']} dbname=app"


def test_simple_queries_go_where_the_router_says(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, _ = routed
    with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
        names = [conn.execute(q, prepare=False).fetchone()[0] for q in (  # type: ignore[index]
            "SELECT name FROM place", "SELECT /* tenant */ name FROM place", "SELECT name FROM place")]
    assert names == ["unified", "tenant", "unified"]
    # One simple Query is one unit: its statements all run in one place.
    out = psql(two_dbs, "SELECT name FROM place; SELECT /* tenant */ name FROM place",
               dbname="app", user="app", password=PASSWORDS["app"], port=proxy.port)
    assert out.split() == ["tenant", "tenant"]


def test_pipeline_keeps_answer_order_across_servers(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, _ = routed
    queries = [
        "SELECT name FROM place", "SELECT /* tenant */ name FROM place",
        "SELECT /* tenant */ name || '2' FROM place", "SELECT name FROM place",
    ] * 5
    with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
        with conn.pipeline() as pipeline:
            curs = []
            for q in queries:
                curs.append(conn.execute(q))
                pipeline.sync()  # one unit per query
        names = [c.fetchone()[0] for c in curs]  # type: ignore[index]
    assert names == ["unified", "tenant", "tenant2", "unified"] * 5


async def test_named_prepared_statement_used_on_both_sides(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, _ = routed
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="app", password=PASSWORDS["app"], database="app")
    try:
        tenant_stmt = await conn.prepare("SELECT /* tenant */ name FROM place WHERE shop_id = $1")
        unified_stmt = await conn.prepare("SELECT name FROM place WHERE shop_id = $1")
        # asyncpg prepares with Parse/Describe/Flush and runs the first execution in
        # the same batch (no Sync in between): that batch stays on unified.
        assert await tenant_stmt.fetchval(1) == "unified"
        for _ in range(3):
            assert await tenant_stmt.fetchval(1) == "tenant"
            assert await unified_stmt.fetchval(1) == "unified"
        # Prepared on unified, executed on the tenant: re-prepared there on demand.
        other = await conn.prepare("SELECT /* tenant */ name || '!' FROM place WHERE shop_id = $1")
        await other.fetchval(1)
        assert await other.fetchval(1) == "tenant!"
    finally:
        await conn.close()


def test_session_settings_follow_to_the_tenant(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, _ = routed
    with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        got = conn.execute("SELECT /* tenant */ at::text, current_setting('DateStyle') FROM place").fetchone()
        assert got == ("05/03/2024", "SQL, DMY")


def test_query_errors_from_the_tenant_reach_the_client(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, _ = routed
    with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT /* tenant */ 1/0 FROM place")
        assert conn.execute("SELECT /* tenant */ name FROM place").fetchone() == ("tenant",)


def test_broken_tenant_falls_back_to_unified(two_dbs: PgCluster) -> None:
    router = HintRouter(_target(two_dbs, port=free_port()))
    proxy = _start(two_dbs, router)
    try:
        with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
            assert conn.execute("SELECT /* tenant */ name FROM place").fetchone() == ("unified",)
        assert ("unified", "fallback") in router.completions
    finally:
        proxy.stop()


def test_missing_table_on_tenant_falls_back(two_dbs: PgCluster, routed: tuple[ProxyThread, HintRouter]) -> None:
    proxy, router = routed
    psql(two_dbs, "CREATE TABLE IF NOT EXISTS only_unified (x int); INSERT INTO only_unified VALUES (42)",
         dbname="app", user="app", password=PASSWORDS["app"])
    with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
        assert conn.execute("SELECT /* tenant */ x FROM only_unified").fetchone() == (42,)
    assert ("unified", "fallback") in router.completions


async def test_shadow_reader_compares_both_sides(two_dbs: PgCluster) -> None:
    import asyncio

    from pgtenantproxy.config import PoolsSection
    from pgtenantproxy.dispatch.shadow import ShadowReader, ShadowResult
    from pgtenantproxy.pools.pool import PoolManager
    from pgtenantproxy.protocol.batch import BatchAssembler
    from pgtenantproxy.protocol.framing import Message
    from pgtenantproxy.protocol.messages import Query
    from pgtenantproxy.protocol.records import ClientMessage
    from pgtenantproxy.session.statements import PreparedStatements

    async def provide(shop: int, refresh: bool) -> ServerTarget:
        db = "tenant_one" if shop == 1 else "app"
        return ServerTarget(two_dbs.host, two_dbs.port, db, "app", PASSWORDS["app"], sslmode="disable")

    manager = PoolManager(PoolsSection(), provide)
    results: list[ShadowResult] = []
    shadow = ShadowReader(
        tenant_pool=manager.pool, unified_pool=lambda: manager.pool(0),
        sample_rate=1.0, timeout=5, on_result=results.append,
    )

    def unit(sql: str):  # type: ignore[no-untyped-def]
        raw = Query(sql).build()
        return BatchAssembler().feed(ClientMessage.of(Message(raw[0], raw[5:])))[0]

    for sql in ("SELECT shop_id, at FROM place", "SELECT name FROM place"):
        shadow.submit(unit(sql), PreparedStatements(), {}, shop_id=1, ordered=False,
                      tables=("place",), fingerprint="fp")
        while shadow._tasks:
            await asyncio.sleep(0.01)
    assert [r.matches for r in results] == [True, False]  # same rows, then 'tenant' vs 'unified'
    assert all(r.compared for r in results)
    await manager.close()


def test_without_fallback_a_broken_tenant_is_a_clear_error(two_dbs: PgCluster) -> None:
    router = HintRouter(_target(two_dbs, port=free_port()))
    router.fallback_enabled = False
    proxy = _start(two_dbs, router)
    try:
        with psycopg.connect(_dsn(two_dbs, proxy.port), autocommit=True) as conn:
            with pytest.raises(psycopg.OperationalError) as info:
                conn.execute("SELECT /* tenant */ name FROM place")
            assert info.value.sqlstate == "08006"
            assert conn.execute("SELECT name FROM place").fetchone() == ("unified",)  # session carries on
    finally:
        proxy.stop()
