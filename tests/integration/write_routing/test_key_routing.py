"""Routing by key and along foreign keys after cutover, through a real proxy and real drivers.

Shops 1, 3 and 7 are ``tenant_primary`` (their rows copied, nothing mirrored:
a write that wrongly went to unified stays visible there, and unified never
learns of rows created on a shop's database). Each gets an id block for
``repairs.id`` and ``customers.id`` far above unified's ids, recorded where
routing reads it; the foreign keys ``repairs.customer_id -> customers.id`` is
recorded as proven consistent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from pgtenantproxy.lifecycle.keys import FkProof, ForeignKey, record_fk_proof, record_id_blocks
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE
from tests.integration.write_routing.conftest import PRIMARY, WriteBed

BLOCK = 1_000_000


def _block(shop: int) -> int:
    return 100_000_000 + shop * BLOCK


@pytest.fixture(scope="module")
def keyed(write_bed: WriteBed, proxy: ProxyThread) -> Iterator[ProxyThread]:
    for shop in (*PRIMARY, 7):
        first = _block(shop)
        for table in ("repairs", "customers"):
            write_bed.on_tenant(shop, f"SELECT setval('{table}_id_seq', {first}, false)")

    async def record(conn: asyncpg.Connection) -> None:
        for shop in (*PRIMARY, 7):
            first = _block(shop)
            await record_id_blocks(conn, shop, [("public.repairs", "id", first, first + BLOCK - 1),
                                                ("public.customers", "id", first, first + BLOCK - 1)])
        await record_fk_proof(conn, FkProof(ForeignKey("public.repairs", "repairs_customer_id_fkey",
                                                       ("customer_id",), "public.customers", ("id",)), True))

    asyncio.run(write_bed._control(record))
    assert proxy.runtime is not None
    runtime = proxy.runtime
    deadline = asyncio.run(_wait_for(lambda: bool(runtime.catalog.snapshot.keys.foreign_keys)))
    assert deadline, "the catalog did not pick up the key facts"
    yield proxy


async def _wait_for(check: object) -> bool:
    for _ in range(100):
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


def _repair_of(bed: WriteBed, shop: int) -> int:
    return int(bed.on_unified("SELECT min(id) FROM repairs WHERE shop_id = %s", shop)[0][0])


def test_update_and_select_by_id_reach_the_shop_that_owns_the_row(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    rid = _repair_of(write_bed, 1)
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        cur = conn.execute("UPDATE repairs SET notes = %s::jsonb WHERE id = %s", ('{"kr": 1}', rid))
        assert cur.rowcount == 1  # never the silent UPDATE 0 of unified
        marked = ({"kr": 1},)
        assert conn.execute("SELECT notes FROM repairs WHERE id = %s", (rid,)).fetchone() == marked
        assert conn.execute(f"SELECT notes FROM repairs WHERE id = {rid}").fetchone() == marked
    assert write_bed.on_tenant(1, "SELECT notes FROM repairs WHERE id = %s", rid) == [marked]
    assert write_bed.on_unified("SELECT notes FROM repairs WHERE id = %s", rid) != [marked]


def test_rows_created_on_the_shop_database_are_found_by_key(write_bed: WriteBed, keyed: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        insert = "INSERT INTO customers (shop_id, name) VALUES (3, 'kr-new') RETURNING id"
        cid = conn.execute(insert).fetchone()
        assert cid is not None and cid[0] >= _block(3)  # drawn from shop 3's block
        rid = conn.execute("INSERT INTO repairs (shop_id, customer_id) VALUES (3, %s) RETURNING id",
                           (cid[0],)).fetchone()
        assert rid is not None and rid[0] >= _block(3)
        assert rid is not None
        assert conn.execute("UPDATE repairs SET price = 12.5 WHERE id = %s", rid).rowcount == 1
        assert conn.execute("DELETE FROM repairs WHERE id = %s", rid).rowcount == 1
        assert conn.execute("SELECT * FROM repairs WHERE id = %s", rid).fetchall() == []
        # a key that exists nowhere: PostgreSQL's own answer, not an error
        assert conn.execute("UPDATE repairs SET price = 1 WHERE id = %s", (99_999_999_999,)).rowcount == 0


async def test_asyncpg_binary_parameters_and_a_transaction_that_begins_with_an_update_by_id(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    rid = _repair_of(write_bed, 3)
    conn = await asyncpg.connect(host="127.0.0.1", port=keyed.port, user="postgres",
                                 password=write_bed.bed.unified.password, database=DATABASE)
    try:
        async with conn.transaction():  # Drizzle's shape: the first statement names no shop
            assert await conn.execute("UPDATE repairs SET notes = $1::jsonb WHERE id = $2", '{"kr": "tx"}',
                                      rid) == "UPDATE 1"
            cust = await conn.fetchval("SELECT customer_id FROM repairs WHERE id = $1", rid)
            new = await conn.fetchval("INSERT INTO repairs (shop_id, customer_id, notes) VALUES ($1, $2, $3) "
                                      "RETURNING id", 3, cust, '{"kr": "tx"}')

        assert await conn.fetchval("SELECT notes->>'kr' FROM repairs WHERE id = $1", new) == "tx"
        rows = await conn.fetch("SELECT id FROM repairs WHERE id = ANY($1::bigint[]) ORDER BY id", [rid, new])
        assert [r["id"] for r in rows] == sorted([rid, new])
    finally:
        await conn.close()
    assert write_bed.on_tenant(3, "SELECT count(*) FROM repairs WHERE notes->>'kr' = 'tx'") == [(2,)]


def test_joins_along_a_consistent_foreign_key(write_bed: WriteBed, keyed: ProxyThread) -> None:
    write_bed.on_tenant(1, "UPDATE customers SET name = 'fk-tenant-' || id WHERE shop_id = 1 RETURNING id")
    join = ("SELECT c.name FROM repairs r JOIN customers c ON c.id = r.customer_id "
            "WHERE r.shop_id = %s ORDER BY r.id LIMIT 3")
    semi = ("SELECT name FROM customers WHERE id IN (SELECT customer_id FROM repairs WHERE shop_id = %s) "
            "ORDER BY id LIMIT 3")
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        for sql in (join, semi):
            names = [r[0] for r in conn.execute(sql, (1,)).fetchall()]
            assert names and all(n.startswith("fk-tenant-") for n in names), (sql, names)


def test_what_cannot_be_placed_is_refused_never_run_on_unified(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    r1, r3 = _repair_of(write_bed, 1), _repair_of(write_bed, 3)
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        for sql, args in (("SELECT count(*) FROM repairs", None),
                          ("UPDATE repairs SET price = 1 WHERE price = 123456", None),
                          ("UPDATE repairs SET price = 1 WHERE id = ANY(%s)", ([r1, r3],)),
                          ("SELECT id FROM repairs WHERE id IN (%s, %s)", (r1, r3))):
            with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
                conn.execute(sql, args)
            assert "pgtenantproxy" in str(info.value) and "repairs" in str(info.value), sql
        # the session carries on; a key of a shop still on unified runs there
        r2 = _repair_of(write_bed, 2)
        assert conn.execute("UPDATE repairs SET notes = notes WHERE id = %s", (r2,)).rowcount == 1


def test_lastval_answers_from_the_insert_s_connection_or_is_refused(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(keyed)) as conn:  # a transaction: one connection
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-lastval')")
        (last,) = conn.execute("SELECT lastval()").fetchone() or (None,)
        conn.commit()
        assert write_bed.on_tenant(1, "SELECT name FROM customers WHERE id = %s", last) == [("kr-lastval",)]
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-lastval-2')")
        (last,) = conn.execute("SELECT lastval()").fetchone() or (None,)  # on the INSERT's connection
        assert write_bed.on_tenant(1, "SELECT name FROM customers WHERE id = %s", last) == [("kr-lastval-2",)]
        (current,) = conn.execute("SELECT currval('customers_id_seq')").fetchone() or (None,)
        assert current == last  # still that connection: kept until the next statement that needs none
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-lastval-3')")
        time.sleep(1.5)  # the connection goes back to the pool when no statement comes soon after
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("SELECT lastval()")  # never another connection's value
        assert "RETURNING" in (info.value.diag.message_hint or "")
        conn.execute("INSERT INTO shops (id, name, city) VALUES (999, 'kr', 'x') ON CONFLICT DO NOTHING")
        conn.execute("SELECT 1")  # a statement on unified drew last: lastval() is unified's again


def test_set_local_and_savepoint_before_the_first_shop_statement_are_replayed_there(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(keyed)) as conn:  # psycopg sends BEGIN first
        conn.execute("SET LOCAL statement_timeout = '5s'")
        conn.execute("SAVEPOINT a")
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-replay-1')")
        conn.execute("ROLLBACK TO SAVEPOINT a")  # the savepoint exists on shop 1's database: replayed there
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-replay-2')")
        conn.commit()
    assert write_bed.on_tenant(1, "SELECT name FROM customers WHERE name LIKE 'kr-replay-%%'") == [
        ("kr-replay-2",)]
    assert write_bed.on_unified("SELECT name FROM customers WHERE name LIKE 'kr-replay-%%'") == []


def test_a_transaction_that_reads_a_global_table_first_begins_where_its_first_shop_statement_runs(
    write_bed: WriteBed, keyed: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(keyed)) as conn:  # psycopg sends BEGIN first
        assert conn.execute("SELECT name FROM plans ORDER BY id LIMIT 1").fetchone() is not None
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'kr-global-first')")
        conn.commit()
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")  # a failing read before any shop: the transaction fails, as directly
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
    assert write_bed.on_tenant(1, "SELECT name FROM customers WHERE name = 'kr-global-first'") == [
        ("kr-global-first",)]


def test_another_single_column_unique_key_routes_too(write_bed: WriteBed, keyed: ProxyThread) -> None:
    repair = write_bed.on_unified("SELECT min(repair_id) FROM invoices WHERE shop_id = 1")[0][0]
    write_bed.on_tenant(1, "UPDATE invoices SET total = 4242 WHERE repair_id = %s RETURNING id", repair)
    with psycopg.connect(write_bed.proxy_dsn(keyed), autocommit=True) as conn:
        # invoices.repair_id is UNIQUE: its key names shop 1's row, read on shop 1's database
        got = conn.execute("SELECT total FROM invoices WHERE repair_id = %s", (repair,)).fetchone()
    assert got is not None and got[0] == 4242
