"""Writes of tenant_primary shops on their own database, through a real proxy and real clients.

Shops 1, 3 and 7 are forced to ``tenant_primary`` with their rows copied;
shops 2 and 6 are ``mirroring``; 4 and 5 ``reads_on_tenant`` (cutover holds).
Where a row landed is read directly on unified and on the shop's database.
Nothing mirrors in this bed, so a write that wrongly went to unified stays
visible there.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.lifecycle.phases import TENANT_PRIMARY
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE
from tests.integration.write_routing.conftest import WriteBed

NAMES = "SELECT name FROM customers WHERE shop_id = %s AND name LIKE %s ORDER BY name"


def names(bed: WriteBed, shop: int, pattern: str) -> tuple[list[str], list[str]]:
    """(names on the shop's database, names on unified) matching ``pattern``."""
    tenant = [r[0] for r in bed.on_tenant(shop, NAMES, shop, pattern)]
    unified = [r[0] for r in bed.on_unified(NAMES, shop, pattern)]
    return tenant, unified


def decisions(proxy: ProxyThread, reason: str) -> int:
    assert proxy.runtime is not None
    stats = proxy.runtime.dispatcher.stats
    return proxy.run(lambda: sum(n for (_, r), n in stats.decisions.items() if r == reason))


def test_autocommit_insert_update_delete_land_on_the_tenant(write_bed: WriteBed, proxy: ProxyThread) -> None:
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'ac-a'), (1, 'ac-b')")
        assert names(write_bed, 1, "ac-%") == (["ac-a", "ac-b"], [])
        conn.execute("UPDATE customers SET name = 'ac-c' WHERE shop_id = 1 AND name = 'ac-b'")
        assert names(write_bed, 1, "ac-%") == (["ac-a", "ac-c"], [])
        conn.execute("DELETE FROM customers WHERE shop_id = %s AND name = %s", (1, "ac-a"))
        assert names(write_bed, 1, "ac-%") == (["ac-c"], [])
        # read-your-writes: the shop's reads go to its database whatever the read strategy (unified) says
        assert conn.execute(NAMES, (1, "ac-%")).fetchall() == [("ac-c",)]


def test_psql_transactions_commit_and_rollback_on_the_tenant(write_bed: WriteBed, proxy: ProxyThread) -> None:
    env = write_bed.bed.unified.env()
    env["PGPORT"] = str(proxy.port)
    psql = str(write_bed.bed.unified.bindir / "psql")

    def run(*commands: str) -> subprocess.CompletedProcess[str]:
        args = [psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", DATABASE]
        for command in commands:
            args += ["-c", command]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)

    out = run("BEGIN", "INSERT INTO customers (shop_id, name) VALUES (1, 'psql-a')",
              "UPDATE customers SET name = 'psql-b' WHERE shop_id = 1 AND name = 'psql-a'",
              "INSERT INTO customers (shop_id, name) VALUES (1, 'psql-c')", "COMMIT")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["BEGIN", "INSERT", "0", "1", "UPDATE", "1", "INSERT", "0", "1", "COMMIT"]
    assert names(write_bed, 1, "psql-%") == (["psql-b", "psql-c"], [])
    out = run("BEGIN", "INSERT INTO customers (shop_id, name) VALUES (1, 'psql-r')", "ROLLBACK")
    assert out.returncode == 0, out.stderr
    out = run("START TRANSACTION", "COMMIT")  # answered by the proxy alone
    assert out.stdout.split() == ["START", "TRANSACTION", "COMMIT"], out.stdout
    out = run("BEGIN; DELETE FROM customers WHERE shop_id = 1 AND name = 'psql-c'; COMMIT")
    assert out.returncode == 0, out.stderr
    assert names(write_bed, 1, "psql-%") == (["psql-b"], [])


def test_psycopg_transaction_with_prepared_statements(write_bed: WriteBed, proxy: ProxyThread) -> None:
    insert = "INSERT INTO customers (shop_id, name) VALUES (%s, %s)"
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as conn:  # not autocommit: psycopg sends BEGIN
        for i in range(4):
            conn.execute(insert, (1, f"pg-{i}"), prepare=True)
        got = conn.execute("SELECT count(*) FROM customers WHERE shop_id = %s AND name LIKE %s",
                           (1, "pg-%"), prepare=True).fetchone()
        assert got == (4,)  # inside the transaction: sees its own rows
        assert names(write_bed, 1, "pg-%") == ([], [])  # not committed yet
        conn.commit()
        assert names(write_bed, 1, "pg-%") == ([f"pg-{i}" for i in range(4)], [])
        conn.execute(insert, (1, "pg-rolled-back"), prepare=True)
        conn.rollback()
        conn.execute(insert, (1, "pg-4"), prepare=True)  # re-prepared on whichever connection comes
        conn.commit()
    assert names(write_bed, 1, "pg-%") == ([f"pg-{i}" for i in range(5)], [])


async def test_asyncpg_transactions_and_prepared_statements(write_bed: WriteBed, proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="postgres",
                                 password=write_bed.bed.unified.password, database=DATABASE)
    try:
        insert = await conn.prepare("INSERT INTO customers (shop_id, name) VALUES ($1, $2)")
        async with conn.transaction():
            for i in range(3):
                await insert.fetch(1, f"apg-{i}")
            count = await conn.prepare("SELECT count(*) FROM customers WHERE shop_id = $1 AND name LIKE $2")
            assert await count.fetchval(1, "apg-%") == 3
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await insert.fetch(1, "apg-rolled-back")
                raise ZeroDivisionError
        # a new statement first: prepared (Parse/Describe/Flush) right after the lazy BEGIN
        async with conn.transaction():
            assert await conn.fetchval("SELECT count(*) FROM customers WHERE shop_id = $1 AND name LIKE $2",
                                       1, "apg-%") == 3
            await insert.fetch(1, "apg-3")  # prepared earlier, on another connection
            await conn.execute("UPDATE customers SET name = 'apg-4' WHERE shop_id = 1 AND name = 'apg-3'")
    finally:
        await conn.close()
    assert names(write_bed, 1, "apg-%") == (["apg-0", "apg-1", "apg-2", "apg-4"], [])


def test_pgbench_scripts_per_shop(write_bed: WriteBed, proxy: ProxyThread, tmp_path: Path) -> None:
    env = write_bed.bed.unified.env()
    env["PGPORT"] = str(proxy.port)
    scripts = []
    for shop in (1, 3):
        script = tmp_path / f"shop{shop}.sql"
        script.write_text(
            "BEGIN;\n"
            f"INSERT INTO customers (shop_id, name)"
            f" VALUES ({shop}, 'bench-' || :client_id || '-' || random());\n"
            f"UPDATE customers SET name = name WHERE shop_id = {shop} AND name LIKE 'bench-' || :client_id || '-%';\n"
            f"SELECT count(*) FROM customers WHERE shop_id = {shop};\n"
            "END;\n"
        )
        scripts += ["-f", str(script)]
    out = subprocess.run(
        [str(write_bed.bed.unified.bindir / "pgbench"), "-n", "-c", "4", "-j", "2", "-t", "25", *scripts,
         DATABASE],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # the overall line (each script has its own "number of failed transactions" line too)
    assert "\nnumber of failed transactions: 0 " in out.stdout, out.stdout
    tenant = [len(names(write_bed, shop, "bench-%")[0]) for shop in (1, 3)]
    unified = [len(names(write_bed, shop, "bench-%")[1]) for shop in (1, 3)]
    assert sum(tenant) == 100 and unified == [0, 0]


def test_global_table_or_other_shop_in_a_tenant_transaction_is_refused(
    write_bed: WriteBed, proxy: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as conn:
        for intruder in ("SELECT s.name FROM shops s JOIN customers c ON c.shop_id = s.id"
                         " WHERE c.shop_id = 1",
                         "INSERT INTO customers (shop_id, name) VALUES (3, 'ref-other')",
                         "SHOW work_mem"):
            conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'ref-a')")
            with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
                conn.execute(intruder)
            assert "shop 1" in str(info.value)
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                conn.execute("SELECT 1")
            conn.rollback()
        # the session carries on: a global read, then the shop's transaction again
        assert conn.execute("SELECT count(*) FROM shops WHERE id = 1").fetchone() == (1,)
        conn.commit()
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'ref-b')")
        conn.commit()
    assert names(write_bed, 1, "ref-%") == (["ref-b"], [])
    assert names(write_bed, 3, "ref-%") == ([], [])


def test_writes_of_a_cut_over_shop_with_unified_statements_are_refused(
    write_bed: WriteBed, proxy: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as conn:
        conn.execute("UPDATE shops SET city = city WHERE id = 999")  # a global write: begins on unified
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'uni-a')")
        assert "inside a transaction that began on the unified database" in str(info.value)
        conn.rollback()
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("INSERT INTO customers (shop_id, name) VALUES (1, 'uni-b'), (2, 'uni-b')")
    assert names(write_bed, 1, "uni-%") == ([], [])
    assert names(write_bed, 2, "uni-%") == ([], [])


def test_global_tables_and_other_shops_stay_on_unified(write_bed: WriteBed, proxy: ProxyThread) -> None:
    before = decisions(proxy, "tenant_primary")
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        conn.execute("UPDATE shops SET city = city || '' WHERE id = 1")
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (2, 'other-a')")
        assert conn.execute("SELECT count(*) FROM shops").fetchone() == write_bed.on_unified(
            "SELECT count(*) FROM shops")[0]
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as conn:
        conn.execute("INSERT INTO customers (shop_id, name) VALUES (2, 'other-b')")
        conn.execute("SELECT name FROM shops WHERE id = 2").fetchone()
        conn.commit()
    assert names(write_bed, 2, "other-%") == ([], ["other-a", "other-b"])
    assert decisions(proxy, "tenant_primary") == before


def _held_write(dsn: str, sql: str, result: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql)
            result["ok"] = True
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate: Any, timeout: float = 20) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_hold_waits_then_runs_where_the_phase_says(write_bed: WriteBed, proxy: ProxyThread) -> None:
    held_before = decisions(proxy, "held")
    write_bed.fence(4, hold_s=30)
    try:
        _wait_for(lambda: proxy.run(lambda: 4 in proxy.runtime.catalog.snapshot.holding))  # type: ignore[union-attr]
        result: dict[str, Any] = {}
        thread = _held_write(write_bed.proxy_dsn(proxy),
                             "INSERT INTO customers (shop_id, name) VALUES (4, 'hold-a')", result)
        _wait_for(lambda: decisions(proxy, "held") > held_before)
        with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:  # another shop: no wait
            conn.execute("INSERT INTO customers (shop_id, name) VALUES (2, 'hold-other')")
            assert conn.execute("SELECT count(*) FROM customers WHERE shop_id = 4").fetchone() is not None
        assert thread.is_alive() and not result
        write_bed.phase(4, TENANT_PRIMARY)  # the flip happens while the write is held
    finally:
        write_bed.fence(4, hold_s=None)
    thread.join(30)
    assert result == {"ok": True}
    assert names(write_bed, 4, "hold-%") == (["hold-a"], [])
    assert names(write_bed, 2, "hold-%") == ([], ["hold-other"])


def test_hold_longer_than_allowed_is_55P03(write_bed: WriteBed) -> None:
    short = write_bed.proxy(write_hold_timeout_ms=300)
    write_bed.fence(5, hold_s=60)
    try:
        _wait_for(lambda: short.run(lambda: 5 in short.runtime.catalog.snapshot.holding))  # type: ignore[union-attr]
        with psycopg.connect(write_bed.proxy_dsn(short), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.LockNotAvailable) as info:
                conn.execute("INSERT INTO customers (shop_id, name) VALUES (5, 'late-a')")
            assert "shop 5 is being cut over" in str(info.value)
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(write_bed.proxy_dsn(short)) as conn:  # a lazy BEGIN, then the held shop
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute("UPDATE customers SET name = name WHERE shop_id = 5")
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM shops WHERE id = 5").fetchone() == (1,)
    finally:
        write_bed.fence(5, hold_s=None)
        short.stop()
    assert names(write_bed, 5, "late-%") == ([], [])


def test_readiness_recorder_counts_transactions_that_could_not_stay_atomic(
    write_bed: WriteBed, proxy: ProxyThread
) -> None:
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as conn:
        for _ in range(3):  # two shops
            conn.execute("UPDATE customers SET name = name WHERE shop_id = 6 AND id < 0")
            conn.execute("UPDATE customers SET name = name WHERE shop_id = 2 AND id < 0")
            conn.commit()
        conn.execute("UPDATE customers SET name = name WHERE shop_id = 6 AND id < 0")  # a shop + a global
        conn.execute("UPDATE shops SET city = city WHERE id = 6")
        conn.commit()
        # read-only, but after either shop's cutover it could not be placed on one database
        conn.execute("SELECT count(*) FROM customers WHERE shop_id = 6")
        conn.execute("SELECT count(*) FROM shops")
        conn.execute("SELECT count(*) FROM customers WHERE shop_id = 2")
        conn.commit()
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        conn.execute("UPDATE customers SET name = name WHERE shop_id = 6 AND id < 0")  # one shop alone
        conn.execute("SELECT name FROM customers WHERE shop_id = 6 AND id = 1")  # a key of the shop: fine
    runtime = proxy.runtime
    assert runtime is not None
    proxy.call(runtime.dispatcher.conflicts.flush(runtime.tenancy.pool))
    rows = write_bed.on_unified(
        "SELECT shop_id, kind, fingerprint, sample, count FROM pgtenantproxy.cutover_conflicts"
        " WHERE shop_id = 6 OR (shop_id = 2 AND kind = 'cross_shop') ORDER BY shop_id, kind")
    counts = [(r[0], r[1], r[4]) for r in rows]
    assert counts == [(2, "cross_shop", 3), (6, "cross_shop", 3), (6, "global", 1), (6, "unplaced", 1)]
    cross = rows[1]
    assert len(cross[2].split()) == 2 and "shop_id = $" in cross[3]
    assert "UPDATE shops" in rows[2][3]
    assert "FROM shops" in rows[3][3] and "shop_id = $" in rows[3][3]
