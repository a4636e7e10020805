"""Values survive the proxy byte for byte: NULLs, unicode, numeric, arrays, jsonb, huge bytea.

Each value set is read direct and through the proxy, in text and in binary
format, by two drivers, and the results must be equal. The 64 MiB bytea goes
both ways (parameter in, result out) and is checked by hash on both ends.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clients import asyncpg_kwargs, psycopg_kwargs
from tests.fixtures.proxy import ProxyThread

BIG = 64 * 1024 * 1024

VALUES_SQL = r"""
SELECT
  NULL::int AS null_int, NULL::text AS null_text, ''::text AS empty,
  'ünïcödé ☃ 🚀 漢字 עברית ' || U&'e\0301' AS unicode, E'tab\tnewline\nquote''backslash\\' AS escapes,
  3.14159265358979323846264338327950288419716939937510582097494459::numeric AS pi,
  (10::numeric ^ 300 + 1) AS huge, 1e-300::numeric AS tiny, 'NaN'::numeric AS nan,
  -0.000000000000000000000000000001::numeric(40,30) AS scaled,
  9223372036854775807::int8 AS max8, (-2147483648)::int4 AS min4, 1.5e308::float8 AS f8,
  'Infinity'::float8 AS inf, ARRAY[[1, NULL], [3, 4]] AS int2d,
  ARRAY['a,b', 'c"d', NULL, '', 'NULL', 'ü'] AS texts, '{}'::int[] AS empty_arr,
  '{"a": [1, 2.50, null, true], "ü": {"n": "\u00e9"}, "big": 12345678901234567890}'::jsonb AS doc,
  '[]'::jsonb AS empty_doc, 'null'::jsonb AS json_null, '"x"'::json AS plain_json,
  '\x00ff00ff'::bytea AS small_bytes, ''::bytea AS no_bytes,
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, '2024-02-29 23:59:59.999999+05:30'::timestamptz AS ts,
  'infinity'::timestamp::text AS ts_inf, '1 year 2 mons 3 days 04:05:06.789'::interval AS iv,
  '2000-01-01'::date AS d, 't'::bool AS yes, '10.1.0.0/16'::cidr AS net, 12.34::money AS cash,
  'abc'::bytea AS abc, B'10101' AS bits, int4range(1, 10) AS r, point(1.5, -2) AS p
"""

ROWS_SQL = (
    "SELECT g, md5(g::text), CASE WHEN g % 3 = 0 THEN NULL ELSE g / 7.0 END FROM generate_series(1, 100000) g"
)


def _psycopg_rows(port: int | None, unified: PgCluster, sql: str, binary: bool) -> list[Any]:
    with psycopg.connect(**psycopg_kwargs(unified, port)) as conn, conn.cursor(binary=binary) as cur:
        return cur.execute(sql).fetchall()


async def _asyncpg_rows(port: int | None, unified: PgCluster, sql: str) -> list[Any]:
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, port))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.mark.parametrize("binary", [False, True])
def test_value_matrix_psycopg(unified: PgCluster, proxy: ProxyThread, binary: bool) -> None:
    direct = _psycopg_rows(None, unified, VALUES_SQL, binary)
    through = _psycopg_rows(proxy.port, unified, VALUES_SQL, binary)
    assert repr(through) == repr(direct)  # repr: Decimal('NaN') != Decimal('NaN')
    row = through[0]
    assert row[0] is None and row[1] is None and row[2] == ""
    assert row[3] == "ünïcödé ☃ 🚀 漢字 עברית e\u0301"


async def test_value_matrix_asyncpg(unified: PgCluster, proxy: ProxyThread) -> None:
    sql = VALUES_SQL.replace("'NaN'::numeric AS nan,", "").replace("12.34::money AS cash,", "")
    direct = await _asyncpg_rows(None, unified, sql)
    through = await _asyncpg_rows(proxy.port, unified, sql)
    assert through == direct


def test_value_round_trip_as_parameters(unified: PgCluster, proxy: ProxyThread) -> None:
    """Values sent as bind parameters come back unchanged, text and binary."""
    from decimal import Decimal

    params = (None, "ünïcödé ☃ 🚀", Decimal("3.14159265358979323846264338327950288419716939937510"),
              [[1, None], [3, 4]], ["a,b", 'c"d', None], b"\x00\x01\xff" * 1000)
    sql = "SELECT %s::int, %s::text, %s::numeric, %s::int[], %s::text[], %s::bytea"
    for binary in (False, True):
        with psycopg.connect(**psycopg_kwargs(unified, proxy.port)) as conn:
            with conn.cursor(binary=binary) as cur:
                row = cur.execute(sql, params, binary=binary).fetchone()
        assert row == params


@pytest.mark.parametrize("binary", [False, True])
def test_hundred_thousand_rows_psycopg(unified: PgCluster, proxy: ProxyThread, binary: bool) -> None:
    direct = _psycopg_rows(None, unified, ROWS_SQL, binary)
    through = _psycopg_rows(proxy.port, unified, ROWS_SQL, binary)
    assert len(through) == 100000
    assert through == direct


async def test_bytea_64mib_asyncpg(unified: PgCluster, proxy: ProxyThread) -> None:
    data = os.urandom(BIG)
    digest = hashlib.sha256(data).hexdigest()
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
    try:
        await conn.execute("CREATE TEMP TABLE big(b bytea)")
        await conn.execute("INSERT INTO big VALUES ($1)", data)
        assert await conn.fetchval("SELECT encode(sha256(b), 'hex') FROM big") == digest
        back = await conn.fetchval("SELECT b FROM big")
        assert len(back) == BIG and hashlib.sha256(back).hexdigest() == digest
        assert await conn.fetchval("SELECT 'after'") == "after"
    finally:
        await conn.close()


def test_bytea_64mib_psycopg_binary(unified: PgCluster, proxy: ProxyThread) -> None:
    data = os.urandom(BIG)
    digest = hashlib.sha256(data).hexdigest()
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port)) as conn, conn.cursor(binary=True) as cur:
        cur.execute("CREATE TEMP TABLE big(b bytea)")
        cur.execute("INSERT INTO big VALUES (%b)", (data,))
        del data
        cur.execute("SELECT encode(sha256(b), 'hex'), b FROM big")
        row = cur.fetchone()
        assert row is not None
        assert row[0] == digest
        assert hashlib.sha256(row[1]).hexdigest() == digest
        # And the text (hex) format: 128 MiB of hex digits on the wire.
        with conn.cursor() as text_cur:
            text_row = text_cur.execute("SELECT b FROM big").fetchone()
        assert text_row is not None and hashlib.sha256(text_row[0]).hexdigest() == digest
