"""Key directory: rows written, bytes on disk per million keys, and lookup time, for interleaved shops.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/key_directory_bench.py                  # 1M keys, 20 shops, runs of 1 and of 100 keys
    python bench/key_directory_bench.py --keys 100000    # a smoke run
    python bench/key_directory_bench.py --runs 1,10,1000 --shops 50

Method: a throwaway cluster (:func:`pgtenantproxy.embedded.create_cluster`, on
127.0.0.1, removed at the end) with the control schema and one tenant table
``items (id bigint PRIMARY KEY, shop_id integer)`` holding ``--keys`` keys
``1..N``. Shops interleave in runs: the k-th run of ``--run`` consecutive keys
belongs to shop ``1 + hash(k) mod shops`` (two neighbouring runs may belong to
the same shop and merge). Runs of 1 are the worst case (every row its own
island, as when every shop writes all the time); longer runs are shops writing
in bursts. Then every shop is retired as retirement does it, one after the
other: in one transaction, its directory rows
(:func:`pgtenantproxy.migration.key_directory.write_key_directory`: the islands
over the whole table, bounded by the ranges of the shops retired before), then
its rows deleted. Measured:

* directory rows written, and the time of one shop's directory write (the cost
  retirement adds to its transaction), median and maximum over the shops;
* ``pg_total_relation_size('pgtenantproxy.key_directory')`` (heap, GiST and
  btree indexes) after ``VACUUM ANALYZE``, per million keys;
* ``--lookups`` lookups of random keys, one prepared statement on one
  connection, ``SELECT shop_id FROM pgtenantproxy.key_directory WHERE tbl = $1
  AND keys @> $2::int8``: P50 and P99 of the round trip; every answer is checked
  against the key's shop.

One run per configuration, on whatever machine runs it: read the figures as an
order of magnitude. Results: a markdown table on stdout and JSON in
``bench/results/key_directory.json``. The cluster's password stays in this
process's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.embedded import PgCluster, create_cluster
from pgtenantproxy.migration.key_directory import write_key_directory
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.control_schema import ensure_control_schema

RESULTS = Path(__file__).resolve().parent / "results"
ITEMS = TableInfo(
    label="public.items", name=QualifiedName("public", "items"), tenant_column="shop_id",
    columns=(ColumnInfo("id", "bigint"), ColumnInfo("shop_id", "integer")), pk=(ColumnInfo("id", "bigint"),),
)
LOOKUP = "SELECT shop_id FROM pgtenantproxy.key_directory WHERE tbl = $1 AND keys @> $2::int8"


async def fill(conn: asyncpg.Connection, keys: int, run: int, shops: int) -> None:
    await conn.execute("DROP TABLE IF EXISTS items, truth")
    await conn.execute("TRUNCATE pgtenantproxy.key_directory")
    await conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, shop_id integer NOT NULL)")
    await conn.execute(
        "INSERT INTO items SELECT g, 1 + abs(hashint8((g - 1) / $2)) % $3"
        " FROM generate_series(1, $1::bigint) g",
        keys, run, shops)
    await conn.execute("CREATE TABLE truth AS SELECT * FROM items")
    await conn.execute("VACUUM ANALYZE items")


async def retire_all(conn: asyncpg.Connection, shops: int) -> list[float]:
    """Each shop in turn: its directory rows, then its rows deleted, in one transaction; seconds per write."""
    seconds: list[float] = []
    for shop in range(1, shops + 1):
        async with conn.transaction(isolation="repeatable_read"):
            started = time.perf_counter()
            await write_key_directory(conn, [ITEMS], shop)
            seconds.append(time.perf_counter() - started)
            await conn.execute("DELETE FROM items WHERE shop_id = $1", shop)
    return seconds


async def lookups(conn: asyncpg.Connection, keys: int, count: int) -> tuple[list[float], int]:
    """Latencies (s) of ``count`` lookups of random keys, and how many answers were wrong."""
    rng = random.Random(1)
    sample = [rng.randint(1, keys) for _ in range(count)]
    truth = {int(r["id"]): int(r["shop_id"]) for r in await conn.fetch(
        "SELECT id, shop_id FROM truth WHERE id = ANY($1::int8[])", sample)}
    stmt = await conn.prepare(LOOKUP)
    for key in sample[:200]:  # warm the cache and the plan
        await stmt.fetch(ITEMS.label, key)
    times: list[float] = []
    wrong = 0
    for key in sample:
        started = time.perf_counter()
        rows = await stmt.fetch(ITEMS.label, key)
        times.append(time.perf_counter() - started)
        wrong += [r["shop_id"] for r in rows] != [truth[key]]
    return times, wrong


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(cluster: PgCluster, keys: int, run: int, shops: int, count: int) -> dict[str, Any]:
    conn = await asyncpg.connect(**cluster.connect_kwargs(database="bench"))
    try:
        await fill(conn, keys, run, shops)
        writes = await retire_all(conn, shops)
        await conn.execute("VACUUM ANALYZE pgtenantproxy.key_directory")
        rows = int(await conn.fetchval("SELECT count(*) FROM pgtenantproxy.key_directory"))
        size = int(await conn.fetchval("SELECT pg_total_relation_size('pgtenantproxy.key_directory')"))
        heap = int(await conn.fetchval("SELECT pg_relation_size('pgtenantproxy.key_directory')"))
        times, wrong = await lookups(conn, keys, count)
    finally:
        await conn.close()
    per_million = keys / 1_000_000
    return {
        "keys": keys, "run": run, "shops": shops, "directory_rows": rows,
        "rows_per_million_keys": round(rows / per_million),
        "bytes_total": size, "bytes_heap": heap, "mb_per_million_keys": round(size / per_million / 2**20, 1),
        "write_s_median": round(statistics.median(writes), 3), "write_s_max": round(max(writes), 3),
        "lookups": count, "lookup_p50_us": round(pct(times, 0.5) * 1e6, 1),
        "lookup_p99_us": round(pct(times, 0.99) * 1e6, 1), "wrong_answers": wrong,
    }


async def main(keys: int, runs: list[int], shops: int, count: int) -> list[dict[str, Any]]:
    cluster = await asyncio.to_thread(create_cluster, settings={"shared_buffers": "256MB"})
    try:
        admin = await asyncpg.connect(**cluster.connect_kwargs())
        try:
            await admin.execute("CREATE DATABASE bench")
        finally:
            await admin.close()
        conn = await asyncpg.connect(**cluster.connect_kwargs(database="bench"))
        try:
            await ensure_control_schema(conn)
        finally:
            await conn.close()
        return [await measure(cluster, keys, run, shops, count) for run in runs]
    finally:
        cluster.destroy()


def print_table(results: list[dict[str, Any]]) -> None:
    first = results[0]
    print(f"\nkey directory, {first['keys']:,} keys, {first['shops']} shops retired one after the other "
          f"({platform.processor() or platform.machine()}, Python {platform.python_version()})\n")
    print("| keys per run | directory rows | rows per 1M keys | MB per 1M keys "
          "| write per shop (median / max) | lookup P50 | lookup P99 | wrong |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | {r['directory_rows']:,} | {r['rows_per_million_keys']:,} "
              f"| {r['mb_per_million_keys']} | {r['write_s_median']:.2f} s / {r['write_s_max']:.2f} s "
              f"| {r['lookup_p50_us']:.0f} µs | {r['lookup_p99_us']:.0f} µs | {r['wrong_answers']} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the table (default 1M)")
    parser.add_argument("--runs", default="1,100",
                        help="consecutive keys per run of one shop, comma-separated")
    parser.add_argument("--shops", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=10_000)
    args = parser.parse_args()
    found = asyncio.run(main(args.keys, [int(r) for r in args.runs.split(",")], args.shops, args.lookups))
    print_table(found)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "key_directory.json").write_text(json.dumps({"runs": found}, indent=2))
