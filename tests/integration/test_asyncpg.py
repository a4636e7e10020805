"""asyncpg through the proxy: prepared statements, executemany, binary COPY, big results, cancel.

asyncpg speaks only the extended protocol with binary formats, prepares
everything (named statements cached per connection) and cancels on
``timeout=`` with a CancelRequest, so it exercises paths psql does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clients import asyncpg_kwargs
from tests.fixtures.proxy import ProxyThread


async def _both(unified: PgCluster, proxy: ProxyThread, body: Callable[[Any], Awaitable[Any]]) -> Any:
    results = []
    for port in (None, proxy.port):
        conn = await asyncpg.connect(**asyncpg_kwargs(unified, port))
        try:
            results.append(await body(conn))
        finally:
            await conn.close()
    assert results[1] == results[0]
    return results[1]


async def test_prepared_statements_reused(unified: PgCluster, proxy: ProxyThread) -> None:
    async def body(conn: Any) -> Any:
        stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text || '!' AS shout")
        rows = [tuple(await stmt.fetchrow(i, f"n{i}")) for i in range(200)]
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        params = [t.name for t in stmt.get_parameters()]
        # The statement cache: the same SQL text is prepared once and reused.
        for i in range(50):
            assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1
        explicit = await conn.fetch("SELECT name FROM pg_prepared_statements WHERE NOT from_sql")
        return rows, attrs, params, len(explicit) >= 2

    rows, attrs, params, cached = await _both(unified, proxy, body)
    assert rows[7] == (14, "n7!")
    assert attrs == [("doubled", "int4"), ("shout", "text")]
    assert params == ["int4", "text"]
    assert cached


async def test_prepared_statement_error_then_reuse(unified: PgCluster, proxy: ProxyThread) -> None:
    async def body(conn: Any) -> Any:
        stmt = await conn.prepare("SELECT 10 / $1::int")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await stmt.fetchval(0)
        return await stmt.fetchval(5)

    assert await _both(unified, proxy, body) == 2


async def test_executemany(unified: PgCluster, proxy: ProxyThread) -> None:
    async def body(conn: Any) -> Any:
        await conn.execute("CREATE TEMP TABLE em(id int PRIMARY KEY, name text, price numeric)")
        await conn.executemany(
            "INSERT INTO em VALUES ($1, $2, $3)",
            [(i, None if i % 5 == 0 else f"item {i}", i * 0.25) for i in range(2000)],
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany("INSERT INTO em VALUES ($1, $2, $3)", [(5000, "x", 1), (1, "dup", 1)])
        return await conn.fetchrow("SELECT count(*), count(name), sum(price) FROM em")

    row = await _both(unified, proxy, body)
    assert tuple(row)[:2] == (2000, 1600)


async def test_copy_records_to_table(unified: PgCluster, proxy: ProxyThread) -> None:
    async def body(conn: Any) -> Any:
        await conn.execute("CREATE TEMP TABLE cr(id int, name text, blob bytea, tags text[])")
        records = [(i, f"名前 {i}", bytes(range(i % 256)), [str(i), None]) for i in range(10000)]
        result = await conn.copy_records_to_table("cr", records=records)
        out = await conn.fetch("SELECT * FROM cr ORDER BY id")
        return result, [tuple(r) for r in out] == records, len(out)

    result, same, count = await _both(unified, proxy, body)
    assert result == "COPY 10000"
    assert same and count == 10000


async def test_large_result_set(unified: PgCluster, proxy: ProxyThread) -> None:
    sql = "SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, 100000) g"

    async def body(conn: Any) -> Any:
        rows = await conn.fetch(sql)
        streamed = 0
        async with conn.transaction():
            async for _ in conn.cursor(sql + " LIMIT 20000", prefetch=2000):
                streamed += 1
        return [tuple(r) for r in rows], streamed

    rows, streamed = await _both(unified, proxy, body)
    assert len(rows) == 100000 and streamed == 20000
    assert rows[-1][0] == 100000


async def test_timeout_cancels_query(unified: PgCluster, proxy: ProxyThread) -> None:
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
    try:
        pid = conn.get_server_pid()
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
        # asyncpg cancelled it through the proxy and waited for the server to
        # answer; the connection is ready for the next query at once.
        assert await conn.fetchval("SELECT 'usable'") == "usable"
        direct = await asyncpg.connect(**asyncpg_kwargs(unified))
        try:
            state = await direct.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await direct.close()
        assert state == "idle"
    finally:
        await conn.close()


async def test_transactions_and_savepoints(unified: PgCluster, proxy: ProxyThread) -> None:
    async def body(conn: Any) -> Any:
        await conn.execute("CREATE TEMP TABLE tx(v int)")
        async with conn.transaction():
            await conn.execute("INSERT INTO tx VALUES (1)")
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with conn.transaction():  # a savepoint
                    await conn.execute("INSERT INTO tx VALUES (2)")
                    await conn.execute("SELECT 1/0")
            await conn.execute("INSERT INTO tx VALUES (3)")
        with pytest.raises(asyncpg.RaiseError):
            async with conn.transaction():
                await conn.execute("INSERT INTO tx VALUES (4)")
                await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$")
        return [r[0] for r in await conn.fetch("SELECT v FROM tx ORDER BY v")]

    assert await _both(unified, proxy, body) == [1, 3]


async def test_many_concurrent_connections(unified: PgCluster, proxy: ProxyThread) -> None:
    async def one(i: int) -> int:
        conn = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
        try:
            total = 0
            for j in range(20):
                total += await conn.fetchval("SELECT $1::int + $2::int", i, j)
            return int(total)
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [20 * i + 190 for i in range(20)]
