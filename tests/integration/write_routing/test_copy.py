"""COPY of tenant_primary shops through a real proxy: psql, psycopg 3, asyncpg and libpq's extended protocol.

Shops 1, 3 and 7 are ``tenant_primary`` (:mod:`.conftest`), shop 2 is not. A COPY
FROM STDIN runs where its first row's shop lives; where the rows landed is read
directly on unified and on the shops' databases (nothing mirrors in this bed).
Every name written here starts with ``copy-`` (other modules share the bed).
"""

from __future__ import annotations

import datetime
import select
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE
from tests.integration.write_routing.conftest import WriteBed

NAMES = "SELECT name FROM customers WHERE shop_id = %s AND name LIKE %s ORDER BY name"


def names(bed: WriteBed, shop: int, pattern: str) -> tuple[list[str], list[str]]:
    """(names on the shop's database, names on unified) matching ``pattern``."""
    tenant = [r[0] for r in bed.on_tenant(shop, NAMES, shop, pattern)]
    unified = [r[0] for r in bed.on_unified(NAMES, shop, pattern)]
    return tenant, unified


def psql(bed: WriteBed, proxy: ProxyThread, command: str, data: str) -> subprocess.CompletedProcess[str]:
    env = bed.bed.unified.env()
    env["PGPORT"] = str(proxy.port)
    args = [str(bed.bed.unified.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", DATABASE,
            "-c", command]
    return subprocess.run(args, env=env, input=data, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def conn(write_bed: WriteBed, proxy: ProxyThread) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as c:
        yield c


def test_psql_copy_text_and_csv_land_on_the_shops_database(write_bed: WriteBed, proxy: ProxyThread) -> None:
    out = psql(write_bed, proxy, r"\copy customers (shop_id, name) from stdin",
               "1\tcopy-psql-a\n1\tcopy-psql-b\\tc\n\\.\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["COPY", "2"]
    csv = '1,"copy-psql-c, with\na newline"\n1,copy-psql-d\n'
    out = psql(write_bed, proxy, r"\copy customers (shop_id, name) from stdin with (format csv)", csv)
    assert out.returncode == 0, out.stderr
    assert names(write_bed, 1, "copy-psql-%") == (
        ["copy-psql-a", "copy-psql-b\tc", "copy-psql-c, with\na newline", "copy-psql-d"], [])


def test_psycopg_copy_in_autocommit_and_in_a_transaction(
    write_bed: WriteBed, proxy: ProxyThread, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with conn.cursor() as cur, cur.copy("COPY customers (shop_id, name) FROM STDIN") as copy:
        for i in range(500):
            copy.write_row((3, f"copy-pg-{i:03d}"))
    assert names(write_bed, 3, "copy-pg-%") == ([f"copy-pg-{i:03d}" for i in range(500)], [])
    with psycopg.connect(write_bed.proxy_dsn(proxy)) as tx:  # psycopg sends BEGIN first: a lazy BEGIN
        with tx.cursor() as cur:
            with cur.copy("COPY customers (shop_id, name) FROM STDIN") as copy:
                copy.write_row((3, "copy-tx-a"))
            cur.execute("INSERT INTO customers (shop_id, name) VALUES (3, 'copy-tx-b')")
            assert names(write_bed, 3, "copy-tx-%") == ([], [])  # not committed yet
            with cur.copy("COPY customers (shop_id, name) FROM STDIN") as copy:
                copy.write_row((3, "copy-tx-c"))
        tx.commit()
    assert names(write_bed, 3, "copy-tx-%") == (["copy-tx-a", "copy-tx-b", "copy-tx-c"], [])


async def test_asyncpg_binary_copy_with_and_without_a_column_list(
    write_bed: WriteBed, proxy: ProxyThread
) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="postgres",
                                 password=write_bed.bed.unified.password, database=DATABASE)
    try:
        result = await conn.copy_records_to_table(
            "customers", records=[(7, f"copy-apg-{i}") for i in range(3)], columns=["shop_id", "name"])
        assert result == "COPY 3"
        when = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
        result = await conn.copy_records_to_table(  # every column, in the table's order (the catalog's)
            "customers", records=[(990_001, 7, "copy-apg-all", None, None, None, when)])
        assert result == "COPY 1"
    finally:
        await conn.close()
    assert names(write_bed, 7, "copy-apg-%") == (
        ["copy-apg-0", "copy-apg-1", "copy-apg-2", "copy-apg-all"], [])


def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """libpq's next result, waited for with select(): a blocking libpq call would hold the GIL the proxy
    (a thread of this process) needs."""
    deadline = time.monotonic() + 20
    while True:
        while pgconn.flush():
            select.select([], [pgconn.socket], [], 1)
        pgconn.consume_input()
        if not pgconn.is_busy():
            return pgconn.get_result()
        assert time.monotonic() < deadline, "no answer from the proxy"
        select.select([pgconn.socket], [], [], 1)


def test_libpq_extended_protocol_copy(write_bed: WriteBed, proxy: ProxyThread,
                                      conn: psycopg.Connection[tuple[object, ...]]) -> None:
    pgconn = conn.pgconn  # non-blocking, as psycopg keeps it
    pgconn.send_query_params(b"COPY customers (shop_id, name) FROM STDIN", None)  # Parse/Bind/Execute/Sync
    started = _result(pgconn)
    assert started is not None and started.status == pq.ExecStatus.COPY_IN
    assert pgconn.put_copy_data(b"1\tcopy-ext-a\n1\tcopy-ext-b\n") == 1
    assert pgconn.put_copy_end() == 1  # CopyDone, then a Sync of libpq's
    done = _result(pgconn)
    assert done is not None and done.status == pq.ExecStatus.COMMAND_OK, done.error_message
    assert done.command_status == b"COPY 2"
    assert _result(pgconn) is None
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert names(write_bed, 1, "copy-ext-%") == (["copy-ext-a", "copy-ext-b"], [])


def test_rows_of_two_shops_fail_the_copy_and_nothing_is_copied(
    write_bed: WriteBed, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
        with conn.cursor() as cur, cur.copy("COPY customers (shop_id, name) FROM STDIN") as copy:
            for i in range(36):
                copy.write_row((1, f"copy-mixed-{i}"))
            copy.write_row((4, "copy-mixed-other"))
            copy.write_row((1, "copy-mixed-after"))
    message = str(info.value)
    assert "row 37 belongs to shop 4, but this COPY runs on shop 1's database; nothing was copied" in message
    with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
        with conn.cursor() as cur, cur.copy("COPY customers (shop_id, name) FROM STDIN") as copy:
            copy.write_row((1, "copy-mixed-x"))
            copy.write_row((None, "copy-mixed-null"))
    assert "row 2 has no shop (its tenant column is NULL)" in str(info.value)
    assert conn.execute("SELECT 1").fetchone() == (1,)  # the session carries on
    for shop in (1, 4):
        assert names(write_bed, shop, "copy-mixed-%") == ([], [])


def test_a_first_row_of_a_shop_not_cut_over_copies_on_unified_as_before(
    write_bed: WriteBed, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with conn.cursor() as cur, cur.copy("COPY customers (shop_id, name) FROM STDIN (FORMAT csv)") as copy:
        copy.write(b"2,copy-uni-a\n2,copy-uni-b\n")
    assert names(write_bed, 2, "copy-uni-%") == ([], ["copy-uni-a", "copy-uni-b"])


def test_copy_to_stdout_of_one_shop_reads_its_database(
    write_bed: WriteBed, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    write_bed.on_tenant(1, "INSERT INTO customers (shop_id, name) VALUES (1, 'copy-out-tenant') RETURNING id")
    write_bed.on_unified("INSERT INTO customers (shop_id, name) VALUES (1, 'copy-out-unified') RETURNING id")
    query = ("COPY (SELECT name FROM customers WHERE shop_id = 1 AND name LIKE 'copy-out-%' ORDER BY name) "
             "TO STDOUT")
    with conn.cursor() as cur, cur.copy(query) as copy:
        got = b"".join(bytes(chunk) for chunk in copy)
    assert got == b"copy-out-tenant\n"
    with conn.cursor() as cur, cur.copy("COPY customers (name) TO STDOUT") as copy:  # every shop: unified
        everyone = b"".join(bytes(chunk) for chunk in copy)
    assert b"copy-out-unified\n" in everyone and b"copy-out-tenant\n" not in everyone
