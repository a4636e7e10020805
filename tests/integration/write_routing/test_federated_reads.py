"""Federated reads through a real proxy: reads that need cut-over shops' databases, with real drivers.

Shops 1, 3 and 7 are ``tenant_primary``; their foreign tables are built on
unified by the migration's own :func:`~pgtenantproxy.migration.federation.federate_shop`.
Unified still holds a copy of their rows (as the reverse mirror keeps it): a
marker row only on that copy must never be counted, a marker row only on a
shop's own database must always be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.lifecycle.phases import TENANT_PRIMARY
from pgtenantproxy.migration.federation import federate_shop, unfederate_shop
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE
from tests.integration.write_routing.conftest import PHASES, WriteBed

MOVED = (1, 3, 7)
ONLY_ON_UNIFIED = "federation marker: unified's stale copy"
ONLY_ON_SHOP = "federation marker: the shop's own database"


@pytest.fixture(scope="module")
def federated(write_bed: WriteBed, proxy: ProxyThread) -> Iterator[ProxyThread]:
    async def each(action: Any) -> None:
        svc = await write_bed.bed.service()
        try:
            for shop in MOVED:
                await action(svc, shop)
        finally:
            await svc.close()

    asyncio.run(each(federate_shop))
    assert proxy.runtime is not None
    catalog = proxy.runtime.catalog
    deadline = time.monotonic() + 10
    while not set(MOVED) <= catalog.snapshot.federation.ready:
        assert time.monotonic() < deadline, "the catalog did not see the foreign tables"
        time.sleep(0.05)
    write_bed.on_unified("INSERT INTO customers (shop_id, name) VALUES (7, %s) RETURNING id", ONLY_ON_UNIFIED)
    write_bed.on_tenant(3, "INSERT INTO customers (shop_id, name, id) OVERRIDING SYSTEM VALUE "
                           "VALUES (3, %s, 900000003) RETURNING id", ONLY_ON_SHOP)
    try:
        yield proxy
    finally:
        write_bed.on_unified("DELETE FROM customers WHERE name = %s RETURNING id", ONLY_ON_UNIFIED)
        write_bed.on_tenant(3, "DELETE FROM customers WHERE name = %s RETURNING id", ONLY_ON_SHOP)
        asyncio.run(each(unfederate_shop))  # the package's other modules see the bed as it was


def _expected_counts(write_bed: WriteBed) -> list[tuple[int, int]]:
    """customers per shop as the app should see them: moved shops from their own databases."""
    counts = dict(write_bed.on_unified("SELECT shop_id, count(*) FROM customers WHERE NOT shop_id = ANY(%s) "
                                       "GROUP BY shop_id", list(MOVED)))
    for shop in MOVED:
        counts[shop] = write_bed.on_tenant(shop, "SELECT count(*) FROM customers WHERE shop_id = %s",
                                           shop)[0][0]
    return sorted((s, n) for s, n in counts.items() if n)


def test_cross_shop_aggregate_reads_each_shop_once(write_bed: WriteBed, federated: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(federated), autocommit=True) as conn:
        got = conn.execute("SELECT shop_id, count(*) FROM customers GROUP BY shop_id ORDER BY 1").fetchall()
        names = {r[0] for r in conn.execute("SELECT name FROM customers WHERE name LIKE 'federation m%'")}
    assert got == _expected_counts(write_bed)
    assert names == {ONLY_ON_SHOP}


def test_a_shops_join_with_a_global_table(write_bed: WriteBed, federated: ProxyThread) -> None:
    sql = ("SELECT c.id, c.name, s.name FROM customers c JOIN shops s ON s.id = c.shop_id "
           "WHERE c.shop_id = %s ORDER BY c.id")
    with psycopg.connect(write_bed.proxy_dsn(federated), autocommit=True) as conn:
        got = conn.execute(sql, (3,)).fetchall()
    shop_name = write_bed.on_unified("SELECT name FROM shops WHERE id = 3")[0][0]
    expected = [(i, n, shop_name) for i, n in write_bed.on_tenant(
        3, "SELECT id, name FROM customers WHERE shop_id = 3 ORDER BY id")]
    assert got == expected and any(name == ONLY_ON_SHOP for _i, name, _s in got)


def test_asyncpg_prepared_statement_over_several_shops(write_bed: WriteBed, federated: ProxyThread) -> None:
    """One prepared statement, shop ids bound per call (moved, unified, mixed): each answer is right."""
    async def run() -> list[list[tuple[int, int]]]:
        conn = await asyncpg.connect(_asyncpg_dsn(write_bed, federated))
        try:
            stmt = await conn.prepare("SELECT c.shop_id, count(*) FROM customers c JOIN shops s ON s.id = "
                                      "c.shop_id WHERE c.shop_id = ANY($1::int[]) GROUP BY 1 ORDER BY 1")
            out = []
            for shops in ([1], [2], [1, 2, 3], [7, 3], [1]):
                out.append([tuple(r) for r in await stmt.fetch(shops)])
            return out
        finally:
            await conn.close()

    expected = dict(_expected_counts(write_bed))
    answers = asyncio.run(run())
    for shops, got in zip(([1], [2], [1, 2, 3], [7, 3], [1]), answers, strict=True):
        assert got == sorted((s, expected[s]) for s in shops if s in expected), shops


def test_window_function_and_sorted_page(write_bed: WriteBed, federated: ProxyThread) -> None:
    sql = ("SELECT shop_id, id, row_number() OVER (PARTITION BY shop_id ORDER BY id DESC) FROM customers "
           "WHERE shop_id IN (1, 2, 7) ORDER BY shop_id, id DESC LIMIT 7 OFFSET 2")
    with psycopg.connect(write_bed.proxy_dsn(federated), autocommit=True) as conn:
        got = conn.execute(sql).fetchall()
    rows = write_bed.on_unified("SELECT shop_id, id FROM customers WHERE shop_id = 2")
    for shop in (1, 7):
        rows += write_bed.on_tenant(shop, "SELECT shop_id, id FROM customers WHERE shop_id = %s", shop)
    rows.sort(key=lambda r: (r[0], -r[1]))
    numbered, last, n = [], None, 0
    for shop, cid in rows:
        n = n + 1 if shop == last else 1
        last = shop
        numbered.append((shop, cid, n))
    assert got == numbered[2:9]


def test_repeatable_read_is_refused(write_bed: WriteBed, federated: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(federated)) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="snapshot cannot span databases"):
            conn.execute("SELECT count(*) FROM customers")
        conn.rollback()
        # a read of shops still on unified only needs no other database
        assert conn.execute("SELECT count(*) > 0 FROM customers WHERE shop_id = 2").fetchone() == (True,)


def test_multi_shop_writes_are_refused(write_bed: WriteBed, federated: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(federated), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match=r"own databases? since"):
            conn.execute("UPDATE customers SET name = name WHERE shop_id IN (1, 2)")


def test_fan_out_limit(write_bed: WriteBed, federated: ProxyThread) -> None:
    config = write_bed.bed.config(proxy={"listen": "127.0.0.1:0", "shutdown_timeout_ms": 2000},
                                  routing={"catalog_refresh_ms": 200}, federation={"max_shops_per_query": 2})
    limited = ProxyThread(config, routing=True).start()
    try:
        with psycopg.connect(write_bed.proxy_dsn(limited), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM customers WHERE shop_id IN (1, 3)").fetchone()[0] > 0
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="max_shops_per_query"):
                conn.execute("SELECT count(*) FROM customers")
    finally:
        limited.stop()


def test_a_report_then_a_write_in_one_transaction(write_bed: WriteBed, federated: ProxyThread) -> None:
    """The read runs aside while the transaction waits for its first shop; the write then decides."""
    with psycopg.connect(write_bed.proxy_dsn(federated)) as conn:
        total = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
        cid = conn.execute("SELECT id FROM customers WHERE shop_id = 1 ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("UPDATE customers SET name = name WHERE shop_id = 1 AND id = %s", (cid,))
        conn.commit()
    assert total == sum(n for _s, n in _expected_counts(write_bed))


def test_refusals_are_recorded_for_retirement(write_bed: WriteBed, federated: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(federated), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("UPDATE customers SET name = name WHERE shop_id IN (3, 7) AND id < 0")
    assert federated.runtime is not None
    deadline = time.monotonic() + 10
    while True:
        rows = write_bed.on_unified("SELECT shop_id, sample FROM pgtenantproxy.cutover_conflicts "
                                    "WHERE kind = 'refused'")
        if any(shop == 3 and "UPDATE customers" in sample for shop, sample in rows):
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def _asyncpg_dsn(write_bed: WriteBed, proxy: ProxyThread) -> str:
    return f"postgresql://postgres:{write_bed.bed.unified.password}@127.0.0.1:{proxy.port}/{DATABASE}"


assert set(MOVED) <= {s for s, p in PHASES.items() if p == TENANT_PRIMARY}
