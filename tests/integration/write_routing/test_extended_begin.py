"""Lazy BEGIN in the extended protocol: pgbench -M prepared/extended, libpq, psycopg pipelines, asyncpg.

Shops 1, 3 and 7 are ``tenant_primary``; shop 2 is ``mirroring`` (its writes
stay on unified). A transaction that began with an extended-protocol BEGIN
must run where its first statement says: on a cut-over shop's database (no
refusal), or on unified. Where rows landed is read directly on both sides.
"""

from __future__ import annotations

import select
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import pq

from tests.fixtures.proxy import ProxyThread
from tests.fixtures.tenancy import DATABASE
from tests.integration.write_routing.conftest import WriteBed
from tests.integration.write_routing.test_write_routing import decisions, names

SCRIPT = """\\set r random(1, 1000000000)
BEGIN;
UPDATE customers SET name = name
 WHERE shop_id = {shop} AND id = (SELECT min(id) FROM customers WHERE shop_id = {shop});
SELECT count(*) FROM customers WHERE shop_id = {shop};
INSERT INTO customers (shop_id, name) VALUES ({shop}, '{tag}-' || :client_id || '-' || :r);
END;
"""


def pgbench(bed: WriteBed, proxy: ProxyThread, tmp: Path, tag: str, shops: tuple[int, ...],
            *args: str) -> subprocess.CompletedProcess[str]:
    env = bed.bed.unified.env()
    env["PGPORT"] = str(proxy.port)
    scripts: list[str] = []
    for shop in shops:
        path = tmp / f"{tag}-{shop}.sql"
        path.write_text(SCRIPT.format(shop=shop, tag=tag))
        scripts += ["-f", str(path)]
    return subprocess.run([str(bed.bed.unified.bindir / "pgbench"), "-n", *args, *scripts, DATABASE],
                          env=env, capture_output=True, text=True, timeout=180)


def landed(bed: WriteBed, shop: int, tag: str) -> tuple[int, int]:
    tenant, unified = names(bed, shop, f"{tag}-%")
    return len(tenant), len(unified)


@pytest.mark.parametrize("mode", ["prepared", "extended"])
def test_pgbench_extended_protocol_mix_of_shops(write_bed: WriteBed, proxy: ProxyThread, tmp_path: Path,
                                                mode: str) -> None:
    tag = f"pgb{mode[0]}"
    refused = decisions(proxy, "refused")
    out = pgbench(write_bed, proxy, tmp_path, tag, (1, 2, 3), "-M", mode, "-c", "4", "-j", "2", "-t", "30")
    assert out.returncode == 0, out.stderr
    assert "\nnumber of failed transactions: 0 (" in out.stdout, out.stdout
    per_shop = {shop: landed(write_bed, shop, tag) for shop in (1, 2, 3)}
    assert per_shop[1][1] == per_shop[3][1] == 0  # cut-over shops: nothing on unified
    assert per_shop[2][0] == 0  # shop 2 still lives on unified
    assert per_shop[1][0] + per_shop[2][1] + per_shop[3][0] == 120, per_shop
    assert decisions(proxy, "refused") == refused


def test_pgbench_prepared_single_shops(write_bed: WriteBed, proxy: ProxyThread, tmp_path: Path) -> None:
    for shop, tenant_side in ((7, True), (2, False)):
        out = pgbench(write_bed, proxy, tmp_path, f"one{shop}", (shop,), "-M", "prepared", "-c", "2",
                      "-t", "20")
        assert out.returncode == 0, out.stderr
        assert "\nnumber of failed transactions: 0 (" in out.stdout, out.stdout
        assert landed(write_bed, shop, f"one{shop}") == ((40, 0) if tenant_side else (0, 40))


def test_hold_during_pgbench_delays_and_fails_nothing(write_bed: WriteBed, proxy: ProxyThread,
                                                      tmp_path: Path) -> None:
    held = decisions(proxy, "held")
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    run = threading.Thread(target=lambda: result.setdefault("out", pgbench(
        write_bed, proxy, tmp_path, "hold", (7,), "-M", "prepared", "-c", "3", "-j", "1", "-T", "4")))
    run.start()
    try:
        time.sleep(0.5)
        write_bed.fence(7, hold_s=30)
        deadline = time.monotonic() + 20
        while decisions(proxy, "held") == held and run.is_alive():
            assert time.monotonic() < deadline, "no unit was held"
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        write_bed.fence(7, hold_s=None)
    run.join(60)
    out = result["out"]
    assert out.returncode == 0, out.stderr
    assert "\nnumber of failed transactions: 0 (" in out.stdout, out.stdout
    assert decisions(proxy, "held") > held
    done = int(next(line for line in out.stdout.splitlines() if "transactions actually processed" in line)
               .split(":")[1].split("/")[0])
    assert landed(write_bed, 7, "hold") == (done, 0)


# --- libpq, message for message ---------------------------------------------------------------------------

@pytest.fixture
def libpq(write_bed: WriteBed, proxy: ProxyThread) -> Iterator[tuple[pq.abc.PGconn, pq.abc.PGconn]]:
    """(through the proxy, direct to unified): raw libpq connections, both autocommit."""
    via = psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True)
    direct = psycopg.connect(write_bed.unified_dsn, autocommit=True)
    try:
        yield via.pgconn, direct.pgconn
    finally:
        via.close()
        direct.close()


def answer(pgconn: pq.abc.PGconn, result: pq.abc.PGresult | None = None) -> tuple[Any, ...]:
    """What the client sees of one result: status, tag, error, transaction status after it."""
    assert result is not None
    error = result.error_field(pq.DiagnosticField.SQLSTATE)
    return (pq.ExecStatus(result.status).name, result.command_status, error,
            pq.TransactionStatus(pgconn.transaction_status).name)


def _result(pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """get_result() without blocking in libpq (that would hold the GIL: the in-process proxy too)."""
    while pgconn.is_busy():
        select.select([pgconn.socket], [], [], 10)
        pgconn.consume_input()
    return pgconn.get_result()


def call(pgconn: pq.abc.PGconn, send: str, *args: Any) -> pq.abc.PGresult:
    """One libpq ``send_*`` call (Sync included) and its one result, like ``exec_*`` without blocking."""
    getattr(pgconn, send)(*args)
    result = _result(pgconn)
    assert result is not None
    while _result(pgconn) is not None:
        pass
    return result


def q(pgconn: pq.abc.PGconn, sql: bytes) -> pq.abc.PGresult:
    return call(pgconn, "send_query_params", sql, None)


def prep(pgconn: pq.abc.PGconn, name: bytes, sql: bytes) -> pq.abc.PGresult:
    return call(pgconn, "send_prepare", name, sql)


def run(pgconn: pq.abc.PGconn, name: bytes, params: list[bytes] | None = None) -> pq.abc.PGresult:
    return call(pgconn, "send_query_prepared", name, params)


def desc(pgconn: pq.abc.PGconn, name: bytes) -> pq.abc.PGresult:
    return call(pgconn, "send_describe_prepared", name)


def pipelined(pgconn: pq.abc.PGconn, *steps: tuple[str, bytes, bytes]) -> list[tuple[Any, ...]]:
    """Send steps ("prepare", name, sql) / ("exec", name, b"") / ("params", b"", sql) and one Sync."""
    pgconn.enter_pipeline_mode()
    for kind, name, sql in steps:
        if kind == "prepare":
            pgconn.send_prepare(name, sql)
        elif kind == "exec":
            pgconn.send_query_prepared(name, None)
        else:
            pgconn.send_query_params(sql, None)
    pgconn.pipeline_sync()
    out: list[tuple[Any, ...]] = []
    while True:
        result = _result(pgconn)
        if result is None:
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        out.append(answer(pgconn, result))
    pgconn.exit_pipeline_mode()
    return out


def both(libpq: tuple[pq.abc.PGconn, pq.abc.PGconn], fn: Any) -> list[Any]:
    via, direct = libpq
    got, want = fn(via), fn(direct)
    assert got == want
    return list(got)


def insert(shop: int, name: str) -> bytes:
    return f"INSERT INTO customers (shop_id, name) VALUES ({shop}, '{name}')".encode()


def test_extended_begin_answers_like_the_server(libpq: tuple[pq.abc.PGconn, pq.abc.PGconn],
                                                write_bed: WriteBed, proxy: ProxyThread) -> None:
    begins = decisions(proxy, "deferred_begin")
    ends = decisions(proxy, "deferred_end")
    # unnamed (pgbench -M extended), then a named statement prepared apart (pgbench -M prepared)
    both(libpq, lambda c: [answer(c, q(c, b"BEGIN")), answer(c, q(c, b"COMMIT"))])
    both(libpq, lambda c: [answer(c, prep(c, b"b1", b"START TRANSACTION ISOLATION LEVEL REPEATABLE READ")),
                           answer(c, desc(c, b"b1")),
                           answer(c, run(c, b"b1")), answer(c, q(c, b"END")),
                           answer(c, run(c, b"b1")), answer(c, q(c, b"ROLLBACK"))])
    # Parse of a named BEGIN, Bind, Execute in one unit; COMMIT the same way
    both(libpq, lambda c: pipelined(c, ("prepare", b"b2", b"BEGIN"), ("exec", b"b2", b""))
         + pipelined(c, ("prepare", b"c2", b"COMMIT"), ("exec", b"c2", b"")))
    assert decisions(proxy, "deferred_begin") == begins + 4  # the direct server cannot tell
    assert decisions(proxy, "deferred_end") == ends + 4


def test_extended_begin_then_writes_of_a_cut_over_shop(libpq: tuple[pq.abc.PGconn, pq.abc.PGconn],
                                                       write_bed: WriteBed) -> None:
    via, _ = libpq
    assert answer(via, prep(via, b"beg", b"BEGIN"))[0] == "COMMAND_OK"
    for name in ("xa-1", "xa-2"):
        assert answer(via, run(via, b"beg"))[1:] == (b"BEGIN", None, "INTRANS")
        assert answer(via, q(via, insert(1, name)))[1:] == (b"INSERT 0 1", None, "INTRANS")
        assert answer(via, q(via, insert(1, name + "b")))[1] == b"INSERT 0 1"
        assert answer(via, q(via, b"COMMIT"))[1:] == (b"COMMIT", None, "IDLE")
    assert answer(via, run(via, b"beg"))[1] == b"BEGIN"
    assert answer(via, q(via, insert(1, "xa-rb")))[1] == b"INSERT 0 1"
    assert answer(via, q(via, b"ROLLBACK"))[1:] == (b"ROLLBACK", None, "IDLE")
    assert names(write_bed, 1, "xa-%") == (["xa-1", "xa-1b", "xa-2", "xa-2b"], [])


UPDATE_JD = b"UPDATE customers SET name = 'jd-b' WHERE shop_id = 3 AND name = 'jd-a'"


def test_begin_and_first_statement_in_one_unit(libpq: tuple[pq.abc.PGconn, pq.abc.PGconn],
                                               write_bed: WriteBed) -> None:
    via, _ = libpq
    got = pipelined(via, ("params", b"", b"BEGIN"), ("params", b"", insert(3, "jd-a")),
                    ("params", b"", UPDATE_JD))
    assert [g[1] for g in got] == [b"BEGIN", b"INSERT 0 1", b"UPDATE 1"]
    assert pq.TransactionStatus(via.transaction_status).name == "INTRANS"
    assert names(write_bed, 3, "jd-%") == ([], [])  # not committed yet
    assert pipelined(via, ("params", b"", b"COMMIT"))[0][1:3] == (b"COMMIT", None)
    assert pq.TransactionStatus(via.transaction_status).name == "IDLE"
    assert names(write_bed, 3, "jd-%") == (["jd-b"], [])
    # all of it in one unit, on shop 2 (unified)
    got = pipelined(via, ("prepare", b"jb", b"BEGIN"), ("exec", b"jb", b""),
                    ("params", b"", insert(2, "jd-u")),
                    ("params", b"", b"COMMIT"))
    assert [g[1] for g in got] == [b"", b"BEGIN", b"INSERT 0 1", b"COMMIT"]
    assert names(write_bed, 2, "jd-%") == ([], ["jd-u"])


def test_statements_parsed_elsewhere_reach_unified(libpq: tuple[pq.abc.PGconn, pq.abc.PGconn],
                                                   write_bed: WriteBed) -> None:
    via, _ = libpq
    # a named BEGIN parsed inside the locally answered unit, its transaction run on shop 1's database
    got = pipelined(via, ("prepare", b"nb", b"BEGIN"), ("exec", b"nb", b""))
    assert [a[1] for a in got] == [b"", b"BEGIN"]
    assert answer(via, q(via, insert(1, "pu-a")))[1] == b"INSERT 0 1"
    # a statement prepared inside that (pinned) transaction: only shop 1's connection saw the Parse
    count = b"SELECT count(*) FROM customers WHERE shop_id = $1"
    assert answer(via, prep(via, b"cnt", count))[0] == "COMMAND_OK"
    assert answer(via, q(via, b"COMMIT"))[1] == b"COMMIT"
    # a transaction on unified binds both names there
    assert answer(via, q(via, b"BEGIN"))[1] == b"BEGIN"
    assert answer(via, q(via, b"SELECT count(*) FROM shops"))[0] == "TUPLES_OK"
    shop2 = run(via, b"cnt", [b"2"])
    assert answer(via, shop2)[:3] == ("TUPLES_OK", b"SELECT 1", None)
    assert int(shop2.get_value(0, 0) or b"-1") == write_bed.on_unified(
        "SELECT count(*) FROM customers WHERE shop_id = 2")[0][0]
    nested = run(via, b"nb")  # BEGIN inside a transaction: a warning, as direct
    assert answer(via, nested)[:3] == ("COMMAND_OK", b"BEGIN", None)
    assert answer(via, q(via, b"COMMIT"))[1:] == (b"COMMIT", None, "IDLE")
    assert names(write_bed, 1, "pu-%") == (["pu-a"], [])


def test_psycopg_prepared_in_transaction_blocks(write_bed: WriteBed, proxy: ProxyThread) -> None:
    sql = "INSERT INTO customers (shop_id, name) VALUES (%s, %s)"
    with psycopg.connect(write_bed.proxy_dsn(proxy), autocommit=True) as conn:
        for shop in (1, 2, 1):
            with conn.transaction():
                for i in range(3):
                    conn.execute(sql, (shop, f"ppt-{shop}-{i}"), prepare=True)
        with conn.pipeline(), conn.transaction():  # BEGIN in the extended protocol, with the statements
            conn.execute(sql, (3, "ppt-3-p"), prepare=True)
            conn.execute(sql, (3, "ppt-3-q"))
    assert sorted(names(write_bed, 1, "ppt-1-%")[0]) == sorted([f"ppt-1-{i}" for i in range(3)] * 2)
    assert names(write_bed, 2, "ppt-%") == ([], [f"ppt-2-{i}" for i in range(3)])
    assert names(write_bed, 3, "ppt-%") == (["ppt-3-p", "ppt-3-q"], [])


async def test_asyncpg_transactions_on_both_sides(write_bed: WriteBed, proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=proxy.port, user="postgres",
                                 password=write_bed.bed.unified.password, database=DATABASE)
    try:
        insert_stmt = await conn.prepare("INSERT INTO customers (shop_id, name) VALUES ($1, $2)")
        for shop in (2, 1, 2):
            async with conn.transaction():
                await insert_stmt.fetch(shop, f"apt-{shop}-1")
                await conn.execute("UPDATE customers SET name = name || 'x' WHERE shop_id = $1"
                                   " AND name LIKE 'apt-%'", shop)
    finally:
        await conn.close()
    assert names(write_bed, 1, "apt-%") == (["apt-1-1x"], [])
    assert names(write_bed, 2, "apt-%") == ([], ["apt-2-1x", "apt-2-1xx"])
