"""Routing by key: directory lookup cost, cache hit rate, memory per million keys, end to end.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/key_routing_bench.py           # 1M rows over 100 shops, 3 rounds x 10 s (~4-5 min)
    python bench/key_routing_bench.py --quick   # 200k rows over 20 shops, 1 round x 3 s (< 1 min)
    python bench/key_routing_bench.py --parts 1 # the in-process figures only (no cluster, ~30 s)
    python bench/key_routing_bench.py --py-spy by_id_hot,by_id_all  # + where the proxy's CPU goes

Three parts in one run:

1. **In process** (no sockets, no server): the cost of one
   :meth:`KeyScope.shop_of` call for a cache hit, an id-block hit and a miss
   (PENDING), timed with ``time.perf_counter_ns`` over ``--calls`` calls (a
   fresh scope every 1,000 calls, as each routing decision gets its own; the
   bare loop + call cost is measured alongside); the memory of 1M cached keys
   (``KeyDirectory._store``, the lookup's own path, measured with
   ``tracemalloc``); and the cost of a whole routing decision
   (``Router.route``, scope creation included) for ``UPDATE orders SET n = n
   + 1 WHERE id = $1`` (key cached / in an id block / unknown) against the
   same statement naming its shop.
2. **Lookups on a real cluster** (database ``bench_lookups`` on the unified
   cluster: ``orders(id bigserial primary key, shop_id int, n int)``,
   ``--rows`` rows, shop of id ``i`` = ``1 + (i - 1) % shops``; the last tenth
   of the shops "retired": their keys written to
   ``pgtenantproxy.key_directory`` as the retirement does (one range per run of
   consecutive ids, here one per key: the worst case) and their rows deleted).
   A :class:`KeyDirectory` over a real asyncpg pool resolves batches of 1 and
   16 random keys through ``request()``: P50/P99 of a miss found on unified,
   of a key found only in the key directory, of a key that exists nowhere
   (no shop to confirm on) and of one confirmed absent on 4 shops' databases.
3. **Through the proxy**: unified (database ``bench_shops``, the same table and
   rows) and one tenant server; the shops provisioned by the tenancy control
   plane, their rows copied, every shop forced to ``tenant_primary``, its
   tenant sequence moved into an id block recorded with
   ``record_id_blocks``; one ``python -m pgtenantproxy serve`` with routing on
   (``strategy = "unified"``) and ``[metrics]`` on. pgbench (``-M extended -c
   8 -j 2``) runs custom scripts: select by shop and id (no lookup), select by
   id over a hot set of ``--hot`` ids (cache hits after the warm-up), select by
   id over all ids (mostly lookups), update by id over the hot set and over all
   ids. Per workload: TPS, the proxy's CPU per transaction (``/proc``), P50/P99
   latency (pgbench ``-l``), failed transactions and aborted clients, and the
   key counters scraped from ``/metrics`` before and after each run, and the
   proxy's logged warnings and errors. Then a few single statements through
   psql (a row created on a shop's database, found by its id-block key; a key
   that exists nowhere) and a check of the updates: ``sum(n)`` over the shops'
   databases must be the number of update transactions, unified's ``sum(n)``
   0. ``--py-spy``: one extra, unrecorded run per listed workload, sampled,
   the proxy's on-CPU samples split by category.

Results: markdown tables on stdout, the raw figures as JSON in
``bench/results/key_routing-YYYYMMDD-HHMMSS.json``. Passwords and the
encryption key live in this process's environment and its children's only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgbench_compare import _stop_on_signals
from routing_bench import (
    _COUNT,
    _TPS,
    DATABASE,
    ENV_KEY,
    ENV_T1,
    ENV_UNIFIED,
    config_data,
    percentile,
    provision,
    proxy_sections,
    psql,
    to_toml,
)
from targets import REPO, Service, Target, cpu_seconds, pgbench_path, wait_listening

from pgtenantproxy.config import parse_config
from pgtenantproxy.dispatch.key_directory import KeyDirectory, KeyScope
from pgtenantproxy.dispatch.key_facts import KeyFacts
from pgtenantproxy.embedded import PgCluster, create_cluster, free_port
from pgtenantproxy.lifecycle.keys import record_id_blocks
from pgtenantproxy.lifecycle.phases import TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.protocol.constants import TX_IDLE
from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import BoundParams
from pgtenantproxy.routing.keys import PENDING, keyed_query_shops
from pgtenantproxy.routing.router import BatchItem, Router
from pgtenantproxy.routing.strategy import Strategy
from pgtenantproxy.tenancy.control_schema import ensure_control_schema
from pgtenantproxy.tenancy.service import TenancyService

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = "public.orders"
TENANT_TABLES = frozenset({TABLE})
LOOKUP_DB = "bench_lookups"
BLOCK_BASE, BLOCK = 1_000_000_000, 1_000_000  # shop s draws its new ids from BLOCK_BASE + s * BLOCK
CHUNK = 1000  # shop_of calls per KeyScope (one scope per routing decision in the proxy)
REPS = 5  # in-process timings: interleaved repetitions per case, the median reported
CACHE_SIZE = 100_000  # [routing] key_cache_size default
PGBENCH_ARGS = ("-n", "-M", "extended", "-c", "8", "-j", "2")
BATCHES = (1, 16)


def schema(rows: int, shops: int) -> str:
    return f"""
CREATE TABLE orders (id bigserial PRIMARY KEY, shop_id int NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO orders (shop_id) SELECT 1 + (i - 1) % {shops} FROM generate_series(1, {rows}) AS i;
CREATE INDEX orders_shop_id ON orders (shop_id);
"""


# -- part 1: in process ---------------------------------------------------------------------------

def _dummy_unified() -> Any:
    raise AssertionError("a cache or id-block hit must not touch unified")


async def _dummy_connect(shop: int) -> asyncpg.Connection:
    raise AssertionError("a cache or id-block hit must not touch a shop's database")


def _facts(shops: int) -> KeyFacts:
    blocks = tuple((BLOCK_BASE + s * BLOCK, BLOCK_BASE + (s + 1) * BLOCK - 1, s) for s in range(1, shops + 1))
    return KeyFacts({TABLE: {"id": "int"}}, frozenset(), {(TABLE, "id"): blocks}, primary={TABLE: "id"})


def _directory(cache_size: int = CACHE_SIZE) -> KeyDirectory:
    return KeyDirectory(unified=_dummy_unified, tenant_connect=_dummy_connect, tenant_column="shop_id",
                        cache_size=cache_size)


def _time_calls(directory: KeyDirectory, facts: KeyFacts, keys: list[str],
                call: Callable[[KeyScope], Callable[[str, str, str], object]]) -> float:
    """ns per call of ``call(scope)(TABLE, "id", key)`` over ``keys``, a fresh scope every CHUNK calls."""
    gc.collect()
    total = 0
    for start in range(0, len(keys), CHUNK):
        fn = call(directory.scope(facts, lookups=True))
        part = keys[start:start + CHUNK]
        t0 = time.perf_counter_ns()
        for key in part:
            fn(TABLE, "id", key)
        total += time.perf_counter_ns() - t0
    return total / len(keys)


def _block_key(rng: random.Random, shops: int) -> int:
    return BLOCK_BASE + rng.randrange(1, shops + 1) * BLOCK + rng.randrange(BLOCK)


def _noop(table: str, column: str, key: str) -> None:
    return None


def shop_of_costs(calls: int, shops: int, rng: random.Random) -> dict[str, Any]:
    """ns per shop_of call: REPS interleaved repetitions of calls / REPS per case, the median kept."""
    facts = _facts(shops)
    directory = _directory()
    for k in range(1, CACHE_SIZE + 1):
        directory._store((TABLE, "id", str(k)), 1 + (k - 1) % shops)
    cases: list[tuple[str, list[str], Callable[[KeyScope], Callable[[str, str, str], object]]]] = [
        ("loop_and_call_ns", [str(rng.randrange(1, CACHE_SIZE + 1)) for _ in range(calls)], lambda _s: _noop),
        ("cache_hit_ns", [str(rng.randrange(1, CACHE_SIZE + 1)) for _ in range(calls)], lambda s: s.shop_of),
        ("id_block_hit_ns", [str(_block_key(rng, shops)) for _ in range(calls)], lambda s: s.shop_of),
        ("miss_pending_ns", [str(rng.randrange(CACHE_SIZE + 1, BLOCK_BASE)) for _ in range(calls)],
         lambda s: s.shop_of),
    ]
    before = (directory.stats.hits, directory.stats.block_hits, directory.stats.misses)
    reps: dict[str, list[float]] = {name: [] for name, _keys, _call in cases}
    step = max(1, calls // REPS)
    for rep in range(REPS):
        for name, keys, call in cases:
            reps[name].append(_time_calls(directory, facts, keys[rep * step:(rep + 1) * step], call))
    out: dict[str, Any] = {name: statistics.median(values) for name, values in reps.items()}
    out["repetitions_ns"] = reps
    stats = directory.stats
    counted = (stats.hits - before[0], stats.block_hits - before[1], stats.misses - before[2])
    # a key repeated within one scope is answered from the scope's memo: counted once per scope
    out["counted"] = {"cache_hit": counted[0], "id_block": counted[1], "miss": counted[2]}
    scope = directory.scope(facts, lookups=True)
    checks = (scope.shop_of(TABLE, "id", "7"), scope.shop_of(TABLE, "id", str(BLOCK_BASE + 3 * BLOCK + 5)),
              scope.shop_of(TABLE, "id", str(BLOCK_BASE - 1)))
    if checks[0] != 7 or checks[1] != 3 or checks[2] is not PENDING:
        raise RuntimeError(f"shop_of answered {checks!r}, expected (7, 3, PENDING)")
    out["calls"] = step * REPS
    out["cache_entries"] = directory.cached
    out["id_blocks"] = shops
    return out


def cache_memory(entries: int) -> dict[str, Any]:
    """Bytes per cached key: 1M (table, key text) -> shop entries through KeyDirectory._store."""
    out: dict[str, Any] = {"entries": entries}
    for name, shop in (("shops_small_ints", lambda k: 1 + k % 100),
                       ("shops_own_ints", lambda k: 100_000 + k % 100)):
        directory = _directory(cache_size=entries + 1)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for k in range(1, entries + 1):
            directory._store((TABLE, "id", str(k)), shop(k))  # str(k): the canonical text a lookup stores
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        if directory.cached != entries:
            raise RuntimeError(f"the cache holds {directory.cached} keys, expected {entries}")
        out[name] = {"bytes": used, "bytes_per_key": used / entries,
                     "mib_per_million": used / entries * 1e6 / 2**20}
        del directory
        gc.collect()
    return out


def route_costs(calls: int, shops: int, rng: random.Random) -> dict[str, Any]:
    """ns per Router.route of one statement (scope creation included, as the dispatcher does);
    REPS interleaved repetitions of calls / REPS per case, the median kept."""
    facts = _facts(shops)
    directory = _directory()
    for k in range(1, CACHE_SIZE + 1):
        directory._store((TABLE, "id", str(k)), 1 + (k - 1) % shops)
    router = Router(Analyser("shop_id"), Strategy("unified"))
    by_id = "UPDATE orders SET n = n + 1 WHERE id = $1"
    by_shop = "UPDATE orders SET n = n + 1 WHERE shop_id = $1 AND id = $2"

    def key_param(keys: list[int]) -> list[BoundParams]:
        return [BoundParams((str(k).encode(),)) for k in keys]

    hot = [rng.randrange(1, CACHE_SIZE + 1) for _ in range(calls)]
    named = [BoundParams((str(1 + (k - 1) % shops).encode(), str(k).encode())) for k in hot]
    cases: list[tuple[str, str, list[BoundParams], bool]] = [
        ("names its shop (shop_id = $1 AND id = $2), no key scope", by_shop, named, False),
        ("names its shop (shop_id = $1 AND id = $2), key scope", by_shop, named, True),
        ("id only, no key scope (no shop cut over: to unified)", by_id, key_param(hot), False),
        ("id only, key cached", by_id, key_param(hot), True),
        ("id only, key in an id block", by_id, key_param([_block_key(rng, shops) for _ in hot]), True),
        ("id only, key unknown (PENDING: the unit is held)", by_id,
         key_param([rng.randrange(CACHE_SIZE + 1, BLOCK_BASE) for _ in hot]), True),
    ]
    route = router.route
    step = max(1, calls // REPS)
    reps: list[list[float]] = [[] for _ in cases]
    for rep in range(REPS):
        for (_label, sql, params, scoped), times in zip(cases, reps, strict=True):
            part = params[rep * step:(rep + 1) * step]
            gc.collect()
            t0 = time.perf_counter_ns()
            for p in part:
                keys = directory.scope(facts, lookups=True) if scoped else None
                route([BatchItem(sql, p)], tx_status=TX_IDLE, tenant_tables=TENANT_TABLES,
                      eligible=_eligible, keys=keys)
            times.append((time.perf_counter_ns() - t0) / len(part))
    out: dict[str, Any] = {"calls": step * REPS, "cases": []}
    for (label, sql, params, scoped), times in zip(cases, reps, strict=True):
        shops_seen: set[int | None] = set()
        for p in params[:50]:  # what the decision found (outside the timing)
            keys = directory.scope(facts, lookups=True) if scoped else None
            routed = route([BatchItem(sql, p)], tx_status=TX_IDLE, tenant_tables=TENANT_TABLES,
                           eligible=_eligible, keys=keys)
            shops_seen.add(routed.identifications[0].shop_id)
        out["cases"].append({"case": label, "ns_per_route": statistics.median(times), "repetitions_ns": times,
                             "identified_shop": "a shop" if shops_seen - {None} else "none",
                             "reason": routed.identifications[0].reason})
    # the key evidence alone (no analysis, identification, decision): keyed_query_shops of the cached case
    stmt = router.analyser.analyse(by_id).statements[0]
    params = key_param(hot[:step])
    gc.collect()
    t0 = time.perf_counter_ns()
    for p in params:
        keyed_query_shops(stmt, p, TENANT_TABLES, directory.scope(facts, lookups=True))
    out["keyed_query_shops_cached_ns"] = (time.perf_counter_ns() - t0) / len(params)
    return out


def _eligible(shop: int) -> bool:
    return True


def part1(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(42)
    print(f"part 1: shop_of x {args.calls} calls per case", file=sys.stderr, flush=True)
    costs = shop_of_costs(args.calls, args.shops, rng)
    print("part 1: cache memory (1M keys, tracemalloc)", file=sys.stderr, flush=True)
    memory = cache_memory(1_000_000)
    print(f"part 1: Router.route x {args.route_calls} per case", file=sys.stderr, flush=True)
    routes = route_costs(args.route_calls, args.shops, rng)
    return {"shop_of": costs, "memory": memory, "route": routes}


# -- part 2: lookups on a real cluster ----------------------------------------------------------

@dataclass
class LookupCase:
    label: str
    keys: Callable[[random.Random, int], list[int]]
    expect: Callable[[int], int | None]
    own: list[int] = field(default_factory=list)
    #: also through a pool whose release skips asyncpg's reset query (interleaved, lookup by lookup)
    compare_no_reset: bool = False


async def _no_reset(conn: asyncpg.Connection) -> None:
    """A pool ``reset`` that sends nothing (asyncpg's default sends a reset query on every release)."""


DIRECTORY_ROWS = """
INSERT INTO pgtenantproxy.key_directory (tbl, keys, shop_id)
SELECT 'public.orders', int8range(min(id), max(id), '[]'), shop_id
FROM (SELECT id, shop_id, id - row_number() OVER (PARTITION BY shop_id ORDER BY id) AS island
      FROM orders WHERE shop_id > $1) AS s
GROUP BY shop_id, island
"""


async def part2(cluster: PgCluster, args: argparse.Namespace) -> dict[str, Any]:
    rows, shops = args.rows, args.shops
    retired_from = shops - max(1, shops // 10) + 1  # shops retired_from..shops are retired
    print(f"part 2: {rows} rows over {shops} shops in {LOOKUP_DB}, shops {retired_from}-{shops} retired",
          file=sys.stderr, flush=True)
    psql(cluster, f"CREATE DATABASE {LOOKUP_DB}")
    psql(cluster, schema(rows, shops), dbname=LOOKUP_DB)
    kwargs = {"host": cluster.host, "port": cluster.port, "user": cluster.superuser,
              "password": cluster.password, "database": LOOKUP_DB}
    async with asyncpg.create_pool(**kwargs, min_size=2, max_size=4) as pool:
        async with pool.acquire() as conn:
            await ensure_control_schema(conn)
            await conn.execute(DIRECTORY_ROWS, retired_from - 1)
            await conn.execute("DELETE FROM orders WHERE shop_id >= $1", retired_from)
            ranges = await conn.fetchval("SELECT count(*) FROM pgtenantproxy.key_directory")
        psql(cluster, "VACUUM ANALYZE orders, pgtenantproxy.key_directory", dbname=LOOKUP_DB)

        def shop_of(k: int) -> int:
            return 1 + (k - 1) % shops

        def live(rng: random.Random, n: int) -> list[int]:
            out: list[int] = []
            while len(out) < n:
                k = rng.randrange(1, rows + 1)
                if shop_of(k) < retired_from:
                    out.append(k)
            return out

        def retired(rng: random.Random, n: int) -> list[int]:
            out: list[int] = []
            while len(out) < n:
                k = rng.randrange(1, rows + 1)
                if shop_of(k) >= retired_from:
                    out.append(k)
            return out

        def nowhere(rng: random.Random, n: int) -> list[int]:
            return [rng.randrange(rows + 1, BLOCK_BASE) for _ in range(n)]

        cases = [
            LookupCase("miss, found on unified's table", live, shop_of, compare_no_reset=True),
            LookupCase("found only in the key directory (retired shops)", retired, shop_of),
            LookupCase("nowhere (no cut-over shop to confirm on)", nowhere, lambda _k: None),
            LookupCase("nowhere, confirmed absent on 4 shops' databases", nowhere, lambda _k: None,
                       own=[1, 2, 3, 4]),
        ]

        async def tenant_connect(shop: int) -> asyncpg.Connection:
            return await asyncpg.connect(**kwargs)  # stand-in for the shop's own database: same rows

        quiet_pool = await asyncpg.create_pool(**kwargs, min_size=2, max_size=4, reset=_no_reset)
        directory = KeyDirectory(unified=pool.acquire, tenant_connect=tenant_connect, tenant_column="shop_id",
                                 timeout=10.0)
        quiet = KeyDirectory(unified=quiet_pool.acquire, tenant_connect=tenant_connect,
                             tenant_column="shop_id", timeout=10.0)
        facts = KeyFacts({TABLE: {"id": "int"}}, primary={TABLE: "id"})
        rng = random.Random(7)
        results: list[dict[str, Any]] = []
        try:
            for case in cases:
                variants = [(case.label, directory)]
                if case.compare_no_reset:
                    variants.append((case.label + "; pool without asyncpg's reset query", quiet))
                for batch in BATCHES:
                    for _ in range(20):  # warm-up: connections, plans, the confirm connections
                        for _label, d in variants:
                            await _one_lookup(d, facts, case, rng, batch)
                    lats: list[list[int]] = [[] for _ in variants]
                    for _ in range(args.lookups):
                        for (_label, d), lat in zip(variants, lats, strict=True):
                            lat.append(await _one_lookup(d, facts, case, rng, batch))
                    for (label, _d), lat in zip(variants, lats, strict=True):
                        lat.sort()
                        results.append({"case": label, "batch": batch, "lookups": len(lat),
                                        "p50_us": percentile(lat, 0.50), "p99_us": percentile(lat, 0.99),
                                        "mean_us": statistics.fmean(lat)})
                        print(f"  {label} x{batch}: p50={results[-1]['p50_us']:.0f}us "
                              f"p99={results[-1]['p99_us']:.0f}us", file=sys.stderr, flush=True)
        finally:
            await directory.close()
            await quiet.close()
            await quiet_pool.close()
    return {"rows": rows, "shops": shops, "retired_shops": shops - retired_from + 1,
            "directory_ranges": ranges, "results": results, "stats": vars(directory.stats)}


async def _one_lookup(directory: KeyDirectory, facts: KeyFacts, case: LookupCase, rng: random.Random,
                      batch: int) -> int:
    """One request() of ``batch`` keys; µs until its future ends. Checks every answer."""
    ints = case.keys(rng, batch)
    keys = [(TABLE, "id", str(k)) for k in ints]
    t0 = time.perf_counter_ns()
    await directory.request(keys, facts, case.own)
    elapsed = (time.perf_counter_ns() - t0) // 1000
    for k, key in zip(ints, keys, strict=True):
        got = directory.answer(key)  # pops "nowhere" (handed out once), so nothing accumulates
        if got != case.expect(k):
            raise RuntimeError(f"{case.label}: key {k} answered {got!r}, expected {case.expect(k)!r}")
    directory._cache.clear()  # every lookup of the next round is a miss again
    return int(elapsed)


# -- part 3: through the proxy ---------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    label: str
    script: str
    updates: bool = False


def workloads(rows: int, shops: int, hot: int) -> list[Workload]:
    return [
        Workload("by_shop_and_id", "select by shop and id (no lookup)",
                 f"\\set id random(1, {rows})\n\\set s 1 + (:id - 1) % {shops}\n"
                 "SELECT id, n FROM orders WHERE shop_id = :s AND id = :id;\n"),
        Workload("by_id_hot", f"select by id, hot set of {hot} ids",
                 f"\\set id random(1, {hot})\nSELECT id, n FROM orders WHERE id = :id;\n"),
        Workload("by_id_all", f"select by id, all {rows} ids",
                 f"\\set id random(1, {rows})\nSELECT id, n FROM orders WHERE id = :id;\n"),
        Workload("update_hot", f"update by id, hot set of {hot} ids",
                 f"\\set id random(1, {hot})\nUPDATE orders SET n = n + 1 WHERE id = :id;\n", True),
        Workload("update_all", f"update by id, all {rows} ids",
                 f"\\set id random(1, {rows})\nUPDATE orders SET n = n + 1 WHERE id = :id;\n", True),
    ]


@dataclass
class Run:
    workload: str
    round: int
    tps: float
    transactions: int
    failed: int
    aborted: int
    p50_us: float
    p99_us: float
    cpu_us_per_tx: float | None
    metrics: dict[str, float]  # deltas of the key counters over the run
    first_error: str = ""
    proxy_log: dict[str, int] = field(default_factory=dict)  # warnings/errors the proxy logged meanwhile
    latencies_us: list[int] = field(default_factory=list, repr=False)


_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_ABORTED = re.compile(r"client \d+ aborted", re.MULTILINE)
_WANTED = ("pgtenantproxy_key_", "pgtenantproxy_routing_decisions_total")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(_WANTED):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in after.items():
        if name.endswith("_entries"):
            out[name] = value  # a gauge: its value at the end
        elif value - before.get(name, 0.0):
            out[name] = value - before.get(name, 0.0)
    return out


def key_metric(metrics: dict[str, float], result: str) -> float:
    return metrics.get(f'pgtenantproxy_key_routing_total{{result="{result}"}}', 0.0)


async def cut_over(data: dict[str, Any], tenant: PgCluster, shops: list[int]) -> None:
    """Every shop in tenant_primary, its sequence in an id block recorded where routing reads it."""
    async with await TenancyService.open(parse_config(data)) as svc, svc.pool.acquire() as control:
        for shop in shops:
            first = BLOCK_BASE + shop * BLOCK
            creds = await svc.credentials(shop)
            conn = await asyncpg.connect(host=creds.host, port=creds.port, user=tenant.superuser,
                                         password=tenant.password, database=creds.database)
            try:
                await conn.execute("SELECT setval('orders_id_seq', $1, false)", first)
                await conn.execute("ANALYZE orders")  # the copy left no statistics: plans as after a backfill
            finally:
                await conn.close()
            await record_id_blocks(control, shop, [(TABLE, "id", first, first + BLOCK - 1)])
            await force_phase(control, shop, TENANT_PRIMARY, reason="key routing bench")


async def updated_sums(data: dict[str, Any], unified: PgCluster, tenant: PgCluster,
                       shops: list[int]) -> tuple[int, int]:
    """(sum(n) over every shop's own database, sum(n) on unified)."""
    total = 0
    async with await TenancyService.open(parse_config(data)) as svc:
        for shop in shops:
            creds = await svc.credentials(shop)
            conn = await asyncpg.connect(host=creds.host, port=creds.port, user=tenant.superuser,
                                         password=tenant.password, database=creds.database)
            try:
                total += int(await conn.fetchval("SELECT coalesce(sum(n), 0) FROM orders"))
            finally:
                await conn.close()
    conn = await asyncpg.connect(**unified.connect_kwargs(database=DATABASE))
    try:
        on_unified = int(await conn.fetchval("SELECT coalesce(sum(n), 0) FROM orders"))
    finally:
        await conn.close()
    return total, on_unified


def start_proxy(data: dict[str, Any]) -> tuple[Service, int, Path]:
    """One routed proxy (strategy "unified") with [metrics] on; returns it with its metrics port."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-keys-"))
    port, metrics_port = free_port(), free_port()
    sections = proxy_sections(data, port, "unified")
    sections["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    config = workdir / "config.toml"
    config.write_text(to_toml(sections))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    service = Service(proc, workdir, [Target("proxy", port, DATABASE, pid=proc.pid)])
    try:
        wait_listening("proxy", port, proc, log, timeout=60)
        deadline = time.monotonic() + 30
        while True:  # the exporter starts after the listener
            try:
                scrape(metrics_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        service.stop()
        raise
    return service, metrics_port, log


_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ")
_NUMBERS = re.compile(r"0x[0-9a-f]+|\d+")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d ")


class ProxyLog:
    """The proxy's warnings and errors since the last look (numbers folded: alike lines count together)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.tracebacks: list[str] = []  # the first of each kind, whole (files and lines, no secrets)
        self._kinds: set[str] = set()

    def news(self) -> dict[str, int]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
            self.offset = f.tell()
        out: dict[str, int] = {}
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                end = next((j for j in range(i + 1, len(lines)) if _STAMP.match(lines[j])), len(lines))
                text = "\n".join(lines[max(0, i - 1):end][:60])
                kind = _NUMBERS.sub("N", "\n".join(lines[i:end]))
                if kind not in self._kinds and len(self.tracebacks) < 8:
                    self._kinds.add(kind)
                    self.tracebacks.append(text)
                continue
            level = _LOG_LEVEL.search(line)
            if level is None or not _STAMP.match(line):
                continue
            key = _NUMBERS.sub("N", line[level.start() + 1:])[:240]
            out[key] = out.get(key, 0) + 1
        return out


def warm_hot_set(unified: PgCluster, port: int, hot: int, shops: int) -> None:
    """Cache the hot set through the proxy's own path: per shop, its hot ids in one ``id IN (...)``
    (keys of one shop: one lookup of up to 500 keys, routed to that shop)."""
    lines = []
    for shop in range(1, shops + 1):
        ids = list(range(shop, hot + 1, shops))
        for start in range(0, len(ids), 500):
            listed = ", ".join(map(str, ids[start:start + 500]))
            lines.append(f"SELECT count(*) FROM orders WHERE id IN ({listed});")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        subprocess.run([str(unified.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                        "-p", str(port), "-U", "postgres", "-d", DATABASE, "-f", f.name],
                       env=unified.env(), check=True, stdout=subprocess.DEVNULL)
    finally:
        os.unlink(f.name)


def run_pgbench(unified: PgCluster, target: Target, metrics_port: int, work: Workload, duration: int,
                logdir: Path, log: ProxyLog) -> Run:
    script = logdir / f"{work.name}.sql"
    script.write_text(work.script)
    prefix = logdir / f"{work.name}-{time.monotonic_ns()}"
    cmd = [pgbench_path(unified), *PGBENCH_ARGS, "-T", str(duration), "-f", str(script), "-l",
           f"--log-prefix={prefix}", "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres", DATABASE]
    before = scrape(metrics_port)
    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    result = subprocess.run(cmd, env=unified.env(), capture_output=True, text=True, timeout=duration + 120,
                            cwd=logdir)
    cpu = cpu_seconds(target.pid) - cpu_before if target.pid else None
    after = scrape(metrics_port)
    out = result.stdout
    tps, count, failed = _TPS.search(out), _COUNT.search(out), _FAILED.search(out)
    aborted = len(_ABORTED.findall(result.stderr))
    if count is None:
        raise RuntimeError(f"pgbench {work.name} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "aborted" in line]
    latencies: list[int] = []
    for path in logdir.glob(f"{prefix.name}.*"):
        latencies += [int(line.split()[2]) for line in path.read_text().splitlines() if line.strip()]
        path.unlink()
    latencies.sort()
    transactions = int(count.group(1))
    per_tx = cpu * 1e6 / transactions if cpu is not None and transactions else None
    return Run(work.name, 0, float(tps.group(1)) if tps else 0.0, transactions,
               int(failed.group(1)) if failed else 0, aborted, percentile(latencies, 0.50),
               percentile(latencies, 0.99), per_tx, _delta(before, after), errors[0][:300] if errors else "",
               log.news(), latencies)


#: Where the proxy's on-CPU samples go: the first category with a marker in a sample's stack.
SPY_CATEGORIES = (
    ("key lookups: the KeyDirectory._lookup task (pool acquire, fetch on unified)",
     ("KeyDirectory._lookup (", "KeyDirectory._resolve (")),
    ("key lookups: the pool's release + reset query (asyncpg, in a shielded task of its own)",
     ("PoolConnectionHolder.release (", "Connection.reset (")),
    ("asyncpg elsewhere (its protocol callbacks, catalog refresh)", ("asyncpg/",)),
    ("routing by key in decisions (routing/keys.py, KeyScope, KeyDirectory.answer/request)",
     ("routing/keys.py", "key_directory.py")),
    ("rest of the routing decision (Dispatcher.decide)", ("Dispatcher.decide (",)),
    ("held units (hold timers, polls, wake-ups)",
     ("._fire (", ".set_timer (", "._poll_hold (", "._start_hold (")),
    ("metrics (recorder, exporter)", ("pgtenantproxy/metrics/", "prometheus_client/", "aiohttp/")),
    ("socket writes (Endpoint.write)", ("Endpoint.write (",)),
)


def _category(stack: str) -> str:
    for name, markers in SPY_CATEGORIES:
        if any(m in stack for m in markers):
            return name
    return "other (relay, protocol, session machine, event loop)"


def profile_run(unified: PgCluster, target: Target, metrics_port: int, work: Workload, duration: int,
                logdir: Path, log: ProxyLog) -> dict[str, Any]:
    """One extra, unrecorded run of ``work`` sampled by ``py-spy record`` (raw collapsed stacks)."""
    out = logdir / f"spy-{work.name}.txt"
    assert target.pid is not None
    spy = subprocess.Popen(["py-spy", "record", "-p", str(target.pid), "-d", str(duration + 1), "-r", "250",
                            "--nonblocking", "-f", "raw", "-o", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached
    run = run_pgbench(unified, target, metrics_port, work, duration, logdir, log)
    spy.wait(60)
    categories: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        name = _category(stack)
        categories[name] = categories.get(name, 0) + n
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + n
    top = sorted(leaves.items(), key=lambda kv: -kv[1])[:12]
    return {"workload": work.name, "tps_while_sampled": run.tps, "samples": total,
            "categories": {k: v / total for k, v in sorted(categories.items(), key=lambda kv: -kv[1])}
            if total else {},
            "top_self": [(leaf, n / total) for leaf, n in top] if total else []}


def probe(unified: PgCluster, port: int, metrics_port: int, sql: str) -> dict[str, Any]:
    """One statement through the proxy with psql: what came back, and which key counters moved."""
    before = scrape(metrics_port)
    result = subprocess.run([str(unified.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1",
                             "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", DATABASE, "-c", sql],
                            env=unified.env(), capture_output=True, text=True, timeout=60, check=False)
    moved = {name.partition("{")[2].rstrip("}") or name: v
             for name, v in _delta(before, scrape(metrics_port)).items()
             if name.startswith(("pgtenantproxy_key_routing_total", "pgtenantproxy_key_lookups"))}
    return {"sql": sql, "ok": result.returncode == 0, "stdout": result.stdout.strip().replace("\n", " / "),
            "stderr": result.stderr.strip().replace("\n", " / ")[:400], "key_counters": moved}


def probes(unified: PgCluster, port: int, metrics_port: int, rows: int) -> list[dict[str, Any]]:
    """A row created on a shop's database (its id from the shop's id block) found by key; a key nowhere."""
    out = [probe(unified, port, metrics_port, "INSERT INTO orders (shop_id) VALUES (7) RETURNING id")]
    new = out[0]["stdout"].split(" / ")[0] if out[0]["ok"] else str(BLOCK_BASE + 7 * BLOCK)
    out.append(probe(unified, port, metrics_port, f"SELECT id, shop_id FROM orders WHERE id = {new}"))
    out.append(probe(unified, port, metrics_port, f"UPDATE orders SET n = n WHERE id = {new}"))
    out.append(probe(unified, port, metrics_port, f"DELETE FROM orders WHERE id = {new}"))
    out.append(probe(unified, port, metrics_port, f"SELECT id FROM orders WHERE id = {rows + 1}"))
    out.append(probe(unified, port, metrics_port, f"UPDATE orders SET n = n WHERE id = {rows + 1}"))
    return out


def part3(unified: PgCluster, tenant: PgCluster, args: argparse.Namespace) -> dict[str, Any]:
    rows, shops = args.rows, args.shops
    shop_ids = list(range(1, shops + 1))
    print(f"part 3: {rows} rows over {shops} shops in {DATABASE}: provisioning, copying, cutting over",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    os.environ[ENV_UNIFIED], os.environ[ENV_T1] = unified.password, tenant.password
    os.environ[ENV_KEY] = secrets.token_hex(32)
    psql(unified, f"CREATE DATABASE {DATABASE}")
    psql(unified, schema(rows, shops), dbname=DATABASE)
    psql(unified, "VACUUM ANALYZE orders", dbname=DATABASE)
    data = config_data(unified, tenant, shops)
    asyncio.run(provision(data, shop_ids))
    asyncio.run(cut_over(data, tenant, shop_ids))
    setup_s = time.monotonic() - t0
    print(f"  set up in {setup_s:.0f} s", file=sys.stderr, flush=True)
    service, metrics_port, log_path = start_proxy(data)
    log = ProxyLog(log_path)
    runs: list[Run] = []
    work = workloads(rows, shops, args.hot)
    logdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-keys-log-"))
    warm_log: dict[str, int] = {}
    try:
        target = service.targets[0]
        t1 = time.monotonic()
        warm_hot_set(unified, target.port, args.hot, shops)
        cached = scrape(metrics_port).get("pgtenantproxy_key_cache_entries", 0.0)
        print(f"  hot set of {args.hot} ids cached in {time.monotonic() - t1:.1f} s "
              f"({cached:.0f} keys cached)", file=sys.stderr, flush=True)
        if args.warmup:  # not recorded: tenant pools opened
            print(f"  warm-up {work[1].name} ({args.warmup} s)", file=sys.stderr, flush=True)
            warm = run_pgbench(unified, target, metrics_port, work[1], args.warmup, logdir, log)
            if warm.aborted or warm.failed:
                print(f"  warm-up: {warm.aborted} aborted clients, {warm.failed} failed: {warm.first_error}",
                      file=sys.stderr, flush=True)
            warm_log = warm.proxy_log
        for n in range(args.rounds):
            if n:  # the hot set back in the cache, should the "all ids" runs have pushed some of it out
                warm_hot_set(unified, target.port, args.hot, shops)
            for w in work[n % len(work):] + work[:n % len(work)]:  # the order rotates from round to round
                run = run_pgbench(unified, target, metrics_port, w, args.duration, logdir, log)
                run.round = n
                runs.append(run)
                cpu = f"{run.cpu_us_per_tx:6.1f}" if run.cpu_us_per_tx is not None else "-"
                print(f"  round {n + 1}/{args.rounds} {w.name:15} tps={run.tps:8.1f} p50={run.p50_us:6.0f}us "
                      f"p99={run.p99_us:6.0f}us cpu={cpu}us/tx failed={run.failed} aborted={run.aborted} "
                      f"hits={key_metric(run.metrics, 'cache_hit'):.0f} "
                      f"misses={key_metric(run.metrics, 'miss'):.0f}", file=sys.stderr, flush=True)
                if run.first_error:
                    print(f"    {run.first_error}", file=sys.stderr, flush=True)
                for line, count in run.proxy_log.items():
                    print(f"    proxy log x{count}: {line}", file=sys.stderr, flush=True)
        final = scrape(metrics_port)
        checks = probes(unified, target.port, metrics_port, rows)
        profiles = []
        if args.py_spy:  # after the recorded rounds: sampling slows the proxy down
            for w in (w for w in work if w.name in args.py_spy):
                print(f"  py-spy: {w.name} ({args.duration} s, not recorded)", file=sys.stderr, flush=True)
                profiles.append(profile_run(unified, target, metrics_port, w, args.duration, logdir, log))
    finally:
        service.stop()
        for path in logdir.glob("*"):
            path.unlink()
        logdir.rmdir()
    on_tenants, on_unified = asyncio.run(updated_sums(data, unified, tenant, shop_ids))
    updates = sum(r.transactions for r in runs if any(w.updates and w.name == r.workload for w in work))
    return {"rows": rows, "shops": shops, "hot": args.hot, "setup_s": setup_s,
            "workloads": [{"name": w.name, "label": w.label, "script": w.script} for w in work],
            "runs": runs, "final_metrics": final, "warmup_proxy_log": warm_log, "profiles": profiles,
            "probes": checks,
            "proxy_tracebacks": log.tracebacks,
            "updates": {"pgbench_update_transactions": updates, "sum_n_on_shop_databases": on_tenants,
                        "sum_n_on_unified": on_unified}}


def summarise(p3: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for w in p3["workloads"]:
        mine: list[Run] = [r for r in p3["runs"] if r.workload == w["name"]]
        if not mine:
            continue
        pooled = sorted(v for r in mine for v in r.latencies_us)
        cpu = [r.cpu_us_per_tx for r in mine if r.cpu_us_per_tx is not None]
        metrics: dict[str, float] = {}
        for r in mine:
            for name, value in r.metrics.items():
                metrics[name] = value if name.endswith("_entries") else metrics.get(name, 0.0) + value
        tx = sum(r.transactions for r in mine)
        logged: dict[str, int] = {}
        for r in mine:
            for line, count in r.proxy_log.items():
                logged[line] = logged.get(line, 0) + count
        hit, miss = key_metric(metrics, "cache_hit"), key_metric(metrics, "miss")
        block = key_metric(metrics, "id_block")
        decisions = {name.partition("{")[2].rstrip("}"): v for name, v in metrics.items()
                     if name.startswith("pgtenantproxy_routing_decisions_total")}
        out.append({
            "workload": w["name"], "label": w["label"], "rounds": len(mine), "transactions": tx,
            "median_tps": statistics.median(r.tps for r in mine),
            "cpu_us_per_tx": statistics.median(cpu) if cpu else None,
            "p50_us": percentile(pooled, 0.50), "p99_us": percentile(pooled, 0.99),
            "failed": sum(r.failed for r in mine), "aborted": sum(r.aborted for r in mine),
            "first_error": next((r.first_error for r in mine if r.first_error), ""),
            "cache_hit": hit, "miss": miss, "id_block": block,
            "nowhere": key_metric(metrics, "nowhere"), "lookup_failed": key_metric(metrics, "failed"),
            "lookups": metrics.get("pgtenantproxy_key_lookups_total", 0.0),
            "cache_entries": metrics.get("pgtenantproxy_key_cache_entries"),
            # what a dashboard shows: hit / (hit + miss); a missed key is answered from the cache
            # again when its held unit is decided anew after the lookup, so it counts one hit too
            "counter_hit_rate": hit / (hit + miss) if hit + miss else None,
            # per statement: the share of transactions whose key was known without a lookup
            "first_look_hit_rate": 1 - miss / tx if (hit or miss) and tx else None,
            "decisions": decisions,
            "proxy_log": logged,
        })
    return out


# -- report ------------------------------------------------------------------------------------------

def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None or value != value else f"{value:{fmt}}{suffix}"


def report(args: argparse.Namespace, env: dict[str, Any], p1: dict[str, Any] | None,
           p2: dict[str, Any] | None, p3: dict[str, Any] | None) -> None:
    doc: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "environment": env}
    if p1 is not None:
        s = p1["shop_of"]
        print(f"\n## KeyScope.shop_of, in process ({s['calls']} calls per case in {REPS} interleaved "
              f"repetitions, median; a fresh scope every {CHUNK}; "
              f"{s['cache_entries']} keys cached, {s['id_blocks']} id blocks)\n")
        print("| case | ns per call | ns net of the loop + call |")
        print("|---|---:|---:|")
        loop = s["loop_and_call_ns"]
        print(f"| bare loop + call (a no-op function) | {loop:.0f} | - |")
        for key, label in (("cache_hit_ns", "cache hit"), ("id_block_hit_ns", "id-block hit"),
                           ("miss_pending_ns", "miss (PENDING, key added to the scope's wanted set)")):
            print(f"| {label} | {s[key]:.0f} | {s[key] - loop:.0f} |")
        m = p1["memory"]
        print(f"\n## Memory of the key cache ({m['entries']:,} entries through KeyDirectory._store, "
              "tracemalloc)\n")
        print("| shop ids | bytes per key | MiB per million keys |")
        print("|---|---:|---:|")
        for key, label in (("shops_small_ints", "1-100 (CPython's shared small ints)"),
                           ("shops_own_ints",
                            "100000-100099 (one int object per entry, as from asyncpg rows)")):
            print(f"| {label} | {m[key]['bytes_per_key']:.0f} | {m[key]['mib_per_million']:.1f} |")
        r = p1["route"]
        base = r["cases"][0]["ns_per_route"]
        print(f"\n## Router.route, in process ({r['calls']} decisions per case in {REPS} interleaved "
              "repetitions, median; key scope created per decision)\n")
        print("| statement | µs per decision | vs naming its shop | identified | reason |")
        print("|---|---:|---:|---|---|")
        for c in r["cases"]:
            print(f"| {c['case']} | {c['ns_per_route'] / 1000:.2f} | {c['ns_per_route'] / base:.2f}x "
                  f"| {c['identified_shop']} | {c['reason']} |")
        kq = r["keyed_query_shops_cached_ns"]
        print(f"| of \"id only, key cached\": keyed_query_shops alone (scope creation included) "
              f"| {kq / 1000:.2f} | {kq / base:.2f}x | | |")
        doc["in_process"] = p1
    if p2 is not None:
        print(f"\n## Key lookups on a real cluster ({p2['rows']:,} rows over {p2['shops']} shops, "
              f"{p2['retired_shops']} retired: {p2['directory_ranges']:,} key_directory ranges; "
              f"KeyDirectory.request(), {args.lookups} lookups per case and batch size)\n")
        print("| case | keys per lookup | P50 | P99 | mean | P50 per key |")
        print("|---|---:|---:|---:|---:|---:|")
        for x in p2["results"]:
            print(f"| {x['case']} | {x['batch']} | {x['p50_us']:.0f} µs | {x['p99_us']:.0f} µs "
                  f"| {x['mean_us']:.0f} µs | {x['p50_us'] / x['batch']:.0f} µs |")
        doc["lookups"] = p2
    if p3 is not None:
        summary = summarise(p3)
        print(f"\n## Through the proxy ({p3['rows']:,} rows over {p3['shops']} shops, all tenant_primary; "
              f"{args.rounds} round(s) x {args.duration} s, pgbench {' '.join(PGBENCH_ARGS)}; "
              f"{env['cpus']} CPUs)\n")
        print("| workload | TPS (median) | proxy CPU per tx | P50 | P99 | failed tx | aborted clients "
              "| lookups per tx | cache hit rate (counters) | hit rate per statement |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for s in summary:
            per_tx = s["lookups"] / s["transactions"] if s["transactions"] else None
            print(f"| {s['label']} | {s['median_tps']:.0f} | {_cell(s['cpu_us_per_tx'], '.0f', ' µs')} "
                  f"| {_cell(s['p50_us'], '.0f', ' µs')} | {_cell(s['p99_us'], '.0f', ' µs')} "
                  f"| {s['failed']} | {s['aborted']} | {_cell(per_tx, '.3f')} "
                  f"| {_cell(s['counter_hit_rate'], '.1%')} "
                  f"| {_cell(s['first_look_hit_rate'], '.1%')} |")
        print("\ncache hit rate (counters): Δhit / (Δhit + Δmiss) of pgtenantproxy_key_routing_total, as a "
              "dashboard would compute it (the decision that gets a lookup's answer counts neither a hit "
              "nor a miss). Hit rate per statement: 1 - Δmiss / transactions (one key per transaction).\n")
        print("| workload | Δ cache_hit | Δ miss | Δ id_block | Δ nowhere | Δ failed | Δ lookups "
              "| cache entries after | routing decisions (target, reason: count) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for s in summary:
            ordered = sorted(s["decisions"].items(), key=lambda kv: -kv[1])
            decisions = "; ".join(f"{k}: {v:.0f}" for k, v in ordered)
            print(f"| {s['workload']} | {s['cache_hit']:.0f} | {s['miss']:.0f} | {s['id_block']:.0f} "
                  f"| {s['nowhere']:.0f} | {s['lookup_failed']:.0f} | {s['lookups']:.0f} "
                  f"| {_cell(s['cache_entries'], '.0f')} | {decisions} |")
        errors = [(s["workload"], s["first_error"]) for s in summary if s["first_error"]]
        for name, error in errors:
            print(f"\n{name}: first error: {error}")
        for s in summary:
            for line, count in s["proxy_log"].items():
                print(f"\n{s['workload']}: the proxy logged {count} x: {line}")
        print("\n### Single statements through the proxy (psql, simple protocol)\n")
        print("| statement | answer | key counters moved |")
        print("|---|---|---|")
        for pr in p3["probes"]:
            answer = pr["stdout"] if pr["ok"] else "ERROR: " + pr["stderr"]
            moved = ", ".join(f"{k} +{v:.0f}" for k, v in pr["key_counters"].items() if v) or "-"
            print(f"| `{pr['sql']}` | {answer} | {moved} |")
        for prof in p3["profiles"]:
            print(f"\n### Where the proxy's CPU goes: {prof['workload']} (py-spy, {prof['samples']} on-CPU "
                  f"samples, {prof['tps_while_sampled']:.0f} TPS while sampled)\n")
            print("| share | category |")
            print("|---:|---|")
            for name, share in prof["categories"].items():
                print(f"| {share:.1%} | {name} |")
            print("\n| share (self) | function |")
            print("|---:|---|")
            for leaf, share in prof["top_self"]:
                print(f"| {share:.1%} | `{leaf}` |")
        for tb in p3["proxy_tracebacks"]:
            print(f"\na traceback the proxy logged:\n\n```\n{tb}\n```")
        u = p3["updates"]
        ok = u["sum_n_on_shop_databases"] == u["pgbench_update_transactions"] and u["sum_n_on_unified"] == 0
        print(f"\nupdates: {u['pgbench_update_transactions']} update transactions; sum(n) on the shops' "
              f"databases {u['sum_n_on_shop_databases']}, on unified {u['sum_n_on_unified']} "
              f"({'every update reached the shop owning the row' if ok else 'MISMATCH'}). "
              f"Set-up (provision, copy, cutover) took {p3['setup_s']:.0f} s.")
        doc["proxy"] = {k: v for k, v in p3.items() if k != "runs"}
        doc["proxy"]["runs"] = [{k: v for k, v in vars(r).items() if k != "latencies_us"} for r in p3["runs"]]
        doc["proxy"]["summary"] = summary
    env["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("key_routing-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nload average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}; raw figures: {path}")
    if env["loadavg_start"][0] > (os.cpu_count() or 1):
        print(f"warning: the load average was {env['loadavg_start'][0]:.1f} on {os.cpu_count()} CPUs "
              "before the benchmark started: other processes competed for the CPUs and the figures are noisy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of orders (default 1,000,000)")
    parser.add_argument("--shops", type=int, default=100, help="shops (default 100)")
    parser.add_argument("--hot", type=int, default=10_000, help="ids of the hot set (default 10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every workload (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unrecorded pgbench on the hot set first: pools opened (default 3)")
    parser.add_argument("--calls", type=int, default=1_000_000, help="shop_of calls per case (default 1M)")
    parser.add_argument("--route-calls", type=int, default=200_000, help="Router.route calls per case")
    parser.add_argument("--lookups", type=int, default=2000,
                        help="lookups per case and batch size (default 2000)")
    parser.add_argument("--parts", default="1,2,3", help="a subset of the parts 1,2,3 (default all)")
    parser.add_argument("--py-spy", default="", metavar="WORKLOADS",
                        help="after the rounds, one extra run of each listed workload (comma-separated, e.g. "
                             "by_id_hot,by_id_all) sampled by py-spy: where the proxy's CPU goes")
    parser.add_argument("--quick", action="store_true",
                        help="200k rows, 20 shops, 1 round x 3 s, 200k calls, 300 lookups: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.shops, args.rounds, args.duration, args.warmup = 200_000, 20, 1, 3, 2
        args.calls, args.route_calls, args.lookups = 200_000, 50_000, 300
    args.parts = {int(p) for p in args.parts.split(",") if p.strip()}
    args.py_spy = {w.strip() for w in args.py_spy.split(",") if w.strip()}
    known = {w.name for w in workloads(2, 2, 1)}
    if not args.py_spy <= known:
        parser.error(f"--py-spy takes workloads among {', '.join(sorted(known))}")
    if not args.parts <= {1, 2, 3}:
        parser.error("--parts takes a subset of 1,2,3")
    if min(args.rows, args.shops, args.rounds, args.duration, args.calls, args.route_calls, args.lookups) < 1:
        parser.error("--rows, --shops, --rounds, --duration, --calls, --route-calls and --lookups "
                     "must be at least 1")
    if not 1 <= args.hot <= args.rows or args.shops < 2 or args.shops > args.rows:
        parser.error("--hot must be within 1..--rows, --shops within 2..--rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    p1 = part1(args) if 1 in args.parts else None
    p2 = p3 = None
    clusters: list[PgCluster] = []
    try:
        if args.parts & {2, 3}:
            print("starting a unified cluster" + (" and a tenant cluster" if 3 in args.parts else ""),
                  file=sys.stderr, flush=True)
            clusters.append(create_cluster(settings={"max_connections": "100", "shared_buffers": "128MB"}))
            env["postgresql"] = subprocess.run([str(clusters[0].bindir / "postgres"), "--version"],
                                               capture_output=True, text=True, check=False).stdout.strip()
        if 2 in args.parts:
            p2 = asyncio.run(part2(clusters[0], args))
        if 3 in args.parts:
            clusters.append(create_cluster(settings={"max_connections": "400", "shared_buffers": "128MB"}))
            p3 = part3(clusters[0], clusters[1], args)
    finally:
        for cluster in clusters:
            cluster.destroy()
    report(args, env, p1, p2, p3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
