"""Routing on the wire: strategies, the safety rule, drivers, fallback, shadow reads.

Two real tenant servers hold 40 provisioned shops with their rows copied in;
the proxy runs with routing on. Where a query went is read from the proxy's
own decision counters; correctness is checked against unified direct.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.routing import percentage_bucket
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE, TenancyBed
from tests.integration.routing.conftest import SHOPS

COUNT_SQL = "SELECT count(*), coalesce(sum(price), 0) FROM repairs WHERE shop_id = %s"


def _proxy(bed: TenancyBed, **routing: Any) -> ProxyThread:
    config = bed.config(
        proxy={"listen": "127.0.0.1:0", "shutdown_timeout_ms": 2000},
        routing={"catalog_refresh_ms": 200, **routing},
    )
    return ProxyThread(config, routing=True).start()


def _dsn(bed: TenancyBed, port: int) -> str:
    return f"host=127.0.0.1 port={port} user=postgres password={bed.unified.password} dbname={DATABASE}"


def _direct(bed: TenancyBed) -> str:
    return _dsn(bed, bed.unified.port)


def _tenant_count(proxy: ProxyThread) -> int:
    assert proxy.runtime is not None
    stats = proxy.runtime.dispatcher.stats
    return sum(n for (target, _), n in stats.outcomes.items() if target == "tenant")


def _expected(bed: TenancyBed) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(_direct(bed)) as conn:
        return {s: conn.execute(COUNT_SQL, (s,)).fetchone() for s in SHOPS}  # type: ignore[misc]


STRATEGIES = [
    ({"strategy": "unified"}, lambda s: False),
    ({"strategy": "tenant"}, lambda s: True),
    ({"strategy": "percentage", "percentage": 50}, lambda s: percentage_bucket(s) < 50),
    ({"strategy": "shop-list", "shop_ids": list(range(1, 11))}, lambda s: s <= 10),
    ({"strategy": "canary", "canary_shop_ids": [3, 7]}, lambda s: s in (3, 7)),
    ({"strategy": "tenant", "enable_tenant_reads": False}, lambda s: False),
]


@pytest.mark.parametrize(("routing", "selected"), STRATEGIES, ids=lambda v: str(v)[:40])
def test_strategy_routes_2000_queries_of_40_shops(routed_bed: TenancyBed, routing: dict[str, Any], selected: Any) -> None:
    expected = _expected(routed_bed)
    proxy = _proxy(routed_bed, **routing)
    try:
        with psycopg.connect(_dsn(routed_bed, proxy.port), autocommit=True) as conn:
            for _ in range(50):
                for shop in SHOPS:
                    assert conn.execute(COUNT_SQL, (shop,)).fetchone() == expected[shop]
        want = 50 * sum(1 for s in SHOPS if selected(s))
        assert _tenant_count(proxy) == want
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def tenant_proxy(routed_bed: TenancyBed) -> Iterator[ProxyThread]:
    proxy = _proxy(routed_bed, strategy="tenant")
    yield proxy
    proxy.stop()


UNSAFE = [
    "UPDATE repairs SET notes = notes WHERE shop_id = 1 AND false",
    "SELECT id FROM repairs WHERE shop_id = 1 FOR UPDATE",
    "SELECT id FROM repairs WHERE shop_id = 1 FOR SHARE",
    "SELECT nextval('invoice_number_seq') FROM repairs WHERE shop_id = 1 LIMIT 1",
    "SELECT r.id FROM repairs r JOIN shops s ON s.id = r.shop_id WHERE r.shop_id = 1",
    "SELECT id FROM repairs WHERE shop_id = 1 OR shop_id = 2",
    "SELECT id FROM repairs WHERE shop_id IN (1, 2)",
    "SELECT a.id FROM repairs a, repairs b WHERE a.shop_id = 1 AND b.shop_id = 2",
    "WITH d AS (DELETE FROM notifications WHERE shop_id = 1 AND false RETURNING id) SELECT id FROM repairs WHERE shop_id = 1",
    "SELECT id FROM repairs",
    "SELECT pg_advisory_lock(1) FROM repairs WHERE shop_id = 1 LIMIT 0",
    "SELECT id INTO TEMP t_sel FROM repairs WHERE shop_id = 1",
]


@pytest.mark.parametrize("sql", UNSAFE)
def test_unsafe_statements_never_reach_a_tenant(routed_bed: TenancyBed, tenant_proxy: ProxyThread, sql: str) -> None:
    before = _tenant_count(tenant_proxy)
    with psycopg.connect(_dsn(routed_bed, tenant_proxy.port), autocommit=True) as conn:
        conn.execute(sql)
    assert _tenant_count(tenant_proxy) == before


def test_transaction_blocks_stay_on_unified(routed_bed: TenancyBed, tenant_proxy: ProxyThread) -> None:
    before = _tenant_count(tenant_proxy)
    with psycopg.connect(_dsn(routed_bed, tenant_proxy.port)) as conn:  # not autocommit: BEGIN
        conn.execute("SELECT count(*) FROM repairs WHERE shop_id = 1").fetchone()
        conn.execute("SELECT count(*) FROM repairs WHERE shop_id = 2").fetchone()
    assert _tenant_count(tenant_proxy) == before
    with psycopg.connect(_dsn(routed_bed, tenant_proxy.port), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM repairs WHERE shop_id = 1").fetchone()
    assert _tenant_count(tenant_proxy) == before + 1


def test_set_shop_then_other_shops_predicate_goes_to_unified(routed_bed: TenancyBed, tenant_proxy: ProxyThread) -> None:
    with psycopg.connect(_dsn(routed_bed, tenant_proxy.port), autocommit=True) as conn:
        conn.execute("SET pgtenantproxy.shop_id = 5")
        before = _tenant_count(tenant_proxy)
        got = conn.execute(COUNT_SQL, (6,)).fetchone()
        assert _tenant_count(tenant_proxy) == before  # conflict: unified
        with psycopg.connect(_direct(routed_bed)) as direct:
            assert got == direct.execute(COUNT_SQL, (6,)).fetchone()
        conn.execute(COUNT_SQL, (5,)).fetchone()
        assert _tenant_count(tenant_proxy) == before + 1
        conn.execute("SELECT count(*) FROM customers").fetchone()  # the SET names the shop
        assert _tenant_count(tenant_proxy) == before + 2


def test_startup_option_names_the_shop(routed_bed: TenancyBed, tenant_proxy: ProxyThread) -> None:
    dsn = _dsn(routed_bed, tenant_proxy.port) + " options='-c pgtenantproxy.shop_id=7'"
    before = _tenant_count(tenant_proxy)
    with psycopg.connect(dsn, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM customers").fetchone()
    with psycopg.connect(_direct(routed_bed)) as direct:
        assert n == direct.execute("SELECT count(*) FROM customers WHERE shop_id = 7").fetchone()
    assert _tenant_count(tenant_proxy) == before + 1


async def test_asyncpg_prepared_statements_across_tenant_and_unified(
    routed_bed: TenancyBed, tenant_proxy: ProxyThread
) -> None:
    kw = dict(host="127.0.0.1", user="postgres", password=routed_bed.unified.password, database=DATABASE)
    proxied = await asyncpg.connect(port=tenant_proxy.port, **kw)
    direct = await asyncpg.connect(port=routed_bed.unified.port, **kw)
    try:
        by_shop = await proxied.prepare("SELECT id, status::text, price FROM repairs WHERE shop_id = $1 ORDER BY id")
        global_q = await proxied.prepare("SELECT count(*) FROM shops WHERE id <= $1")
        for _ in range(3):
            for shop in (1, 2, 3, 21):
                want = await direct.fetch("SELECT id, status::text, price FROM repairs WHERE shop_id = $1 ORDER BY id", shop)
                assert [tuple(r) for r in await by_shop.fetch(shop)] == [tuple(r) for r in want]
                assert await global_q.fetchval(shop) == shop
        assert _tenant_count(tenant_proxy) > 0
    finally:
        await proxied.close()
        await direct.close()


def test_psycopg_server_side_prepared_and_pipeline(routed_bed: TenancyBed, tenant_proxy: ProxyThread) -> None:
    expected = _expected(routed_bed)
    with psycopg.connect(_dsn(routed_bed, tenant_proxy.port), autocommit=True, prepare_threshold=0) as conn:
        for shop in SHOPS[:10]:
            assert conn.execute(COUNT_SQL, (shop,)).fetchone() == expected[shop]
        with conn.pipeline() as p:
            curs = []
            for shop in SHOPS[:10]:
                curs.append(conn.execute(COUNT_SQL, (shop,)))
                p.sync()
        assert [c.fetchone() for c in curs] == [expected[s] for s in SHOPS[:10]]


def test_pgbench_custom_script_with_strategy_tenant(routed_bed: TenancyBed, tenant_proxy: ProxyThread, tmp_path: Any) -> None:
    script = tmp_path / "shop_reads.sql"
    script.write_text(
        "\\set shop random(1, 40)\n"
        "SELECT count(*) FROM repairs WHERE shop_id = :shop;\n"
        "SELECT c.name, count(r.id) FROM customers c JOIN repairs r ON r.customer_id = c.id AND r.shop_id = c.shop_id"
        " WHERE c.shop_id = :shop GROUP BY c.name ORDER BY 2 DESC LIMIT 3;\n"
    )
    env = routed_bed.unified.env()
    env["PGPORT"] = str(tenant_proxy.port)
    before = _tenant_count(tenant_proxy)
    for mode in ("simple", "extended", "prepared"):
        out = subprocess.run(
            [str(routed_bed.unified.bindir / "pgbench"), "-n", "-M", mode, "-c", "4", "-j", "2", "-t", "50",
             "-f", str(script), DATABASE],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "\nnumber of failed transactions: 0 (" in out.stdout
    assert _tenant_count(tenant_proxy) - before >= 3 * 4 * 50 * 2 * 0.9  # nearly all reads went to tenants


def test_tenant_server_down_means_fallback_without_client_errors(routed_bed: TenancyBed) -> None:
    expected = _expected(routed_bed)
    proxy = _proxy(routed_bed, strategy="tenant", tenant_timeout_ms=2000, fallback_ban_ms=1000)
    t1 = routed_bed.tenants[0]
    try:
        with psycopg.connect(_dsn(routed_bed, proxy.port), autocommit=True) as conn:
            for shop in SHOPS:
                assert conn.execute(COUNT_SQL, (shop,)).fetchone() == expected[shop]
            t1.stop("immediate")
            try:
                for _ in range(2):
                    for shop in SHOPS:
                        assert conn.execute(COUNT_SQL, (shop,)).fetchone() == expected[shop]
            finally:
                t1.start_same_port()
            assert proxy.runtime is not None
            fallbacks = proxy.runtime.dispatcher.stats.outcomes[("unified", "fallback")]
            assert fallbacks > 0
    finally:
        proxy.stop()


def test_shadow_reads_report_a_row_changed_behind_the_proxy(routed_bed: TenancyBed) -> None:
    proxy = _proxy(routed_bed, strategy="tenant", verify_consistency=True, verify_sample_rate=1.0)
    try:
        assert proxy.runtime is not None
        stats = proxy.runtime.dispatcher.stats
        with psycopg.connect(_dsn(routed_bed, proxy.port), autocommit=True) as conn:
            conn.execute("SELECT id, status FROM repairs WHERE shop_id = 9").fetchall()
            _wait(lambda: stats.shadow_compared + stats.shadow_failed >= 1)
            assert stats.shadow_failed == 0
            assert stats.shadow_mismatches == 0
            _change_in_tenant(routed_bed, 9, "UPDATE repairs SET notes = '{\"tampered\": true}' WHERE id = (SELECT min(id) FROM repairs)")
            try:
                conn.execute("SELECT id, notes FROM repairs WHERE shop_id = 9").fetchall()
                _wait(lambda: stats.shadow_compared >= 2)
                assert stats.shadow_mismatches == 1
            finally:
                asyncio.run(_recopy(routed_bed, 9))
    finally:
        proxy.stop()


def _wait(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def _change_in_tenant(bed: TenancyBed, shop: int, sql: str) -> None:
    async def run() -> None:
        svc = await bed.service()
        try:
            creds = await svc.credentials(shop)
            conn = await asyncpg.connect(**creds.connect_kwargs())
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        finally:
            await svc.close()

    asyncio.run(run())


async def _recopy(bed: TenancyBed, shop: int) -> None:
    from tests.fixtures.shopdata import copy_shops

    svc = await bed.service()
    try:
        await copy_shops(svc, [shop])
    finally:
        await svc.close()


def test_reads_activate_and_deactivate_per_shop_from_the_cli(routed_bed: TenancyBed, tmp_path: Any) -> None:
    import sys

    config = tmp_path / "config.toml"
    config.write_text(routed_bed.config_toml())
    proxy = _proxy(routed_bed, strategy="shop-list", shop_ids=[1])

    def cli(*args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "pgtenantproxy", "reads", *args, "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

    def routed_to_tenant(shop: int) -> bool:
        before = _tenant_count(proxy)
        with psycopg.connect(_dsn(routed_bed, proxy.port), autocommit=True) as conn:
            conn.execute(COUNT_SQL, (shop,)).fetchone()
        return _tenant_count(proxy) == before + 1

    try:
        assert routed_to_tenant(1) and not routed_to_tenant(12)
        cli("activate", "--shop", "12")
        _wait(lambda: routed_to_tenant(12), timeout=5)
        cli("deactivate", "--shop", "1")
        _wait(lambda: not routed_to_tenant(1), timeout=5)
        cli("clear", "--shop", "1", "--shop", "12")
        _wait(lambda: routed_to_tenant(1) and not routed_to_tenant(12), timeout=5)
    finally:
        proxy.stop()
