"""What routing costs per statement: analysis uncached and cached, and a whole routing decision.

Usage (from a checkout, with the package installed)::

    python bench/analyser_bench.py            # ~0.2 s of timing per cell, best of 5
    python bench/analyser_bench.py --quick    # a smoke run

Columns, in microseconds per statement (best of the repeats, so background
load on the machine inflates nothing but the spread):

* ``uncached``: ``Analyser.parse`` — libpg_query parse to JSON, ``json.loads``,
  the scope walk, pglast's fingerprint and the comment scan;
* ``cached``: ``Analyser.analyse`` on a text already in the LRU cache (what a
  prepared or repeated statement costs);
* ``route``: ``Router.route`` for a one-statement unit with its Bind values,
  cache warm: lookup, identification, safety rule and strategy together.

Results: a markdown table on stdout. No server is involved.
"""

from __future__ import annotations

import argparse
import platform
import struct
import timeit

import pglast

from pgtenantproxy.routing import Analyser, BatchItem, BoundParams, Router, Strategy

TENANT = frozenset({"orders", "customers", "repairs", "devices_in_repair", "invoices", "invoice_lines"})
ELIGIBLE = frozenset(range(1, 1001))
FIVE = BoundParams((b"5",))
BINARY_FIVE = BoundParams((struct.pack("!i", 5), b"open"), (1, 0))

CORPUS: list[tuple[str, str, BoundParams | None]] = [
    ("point read", "SELECT * FROM orders WHERE shop_id = $1 AND id = 42", FIVE),
    (
        "list, binary param",
        "SELECT id, total FROM orders WHERE shop_id = $1 AND status = $2 ORDER BY id LIMIT 50",
        BINARY_FIVE,
    ),
    ("literal", "SELECT count(*) FROM repairs WHERE shop_id = 5", None),
    (
        "join 2",
        "SELECT o.id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
        "AND c.shop_id = o.shop_id WHERE o.shop_id = $1 AND o.created_at > now() - interval '7 days'",
        FIVE,
    ),
    (
        "join 4 + agg",
        "SELECT c.name, sum(l.amount) FROM invoices i JOIN invoice_lines l ON l.invoice_id = i.id "
        "AND l.shop_id = i.shop_id JOIN customers c ON c.id = i.customer_id AND c.shop_id = i.shop_id "
        "JOIN orders o ON o.id = i.order_id AND o.shop_id = i.shop_id WHERE i.shop_id = $1 "
        "GROUP BY c.name HAVING sum(l.amount) > 100 ORDER BY 2 DESC",
        FIVE,
    ),
    (
        "cte + exists",
        "WITH recent AS (SELECT * FROM repairs WHERE shop_id = $1 AND closed_at IS NULL) "
        "SELECT r.* FROM recent r WHERE EXISTS (SELECT 1 FROM devices_in_repair d "
        "WHERE d.repair_id = r.id AND d.shop_id = r.shop_id)",
        FIVE,
    ),
    (
        "global join",
        "SELECT o.* FROM orders o JOIN device_models m ON m.id = o.model_id WHERE o.shop_id = $1",
        FIVE,
    ),
    (
        "insert",
        "INSERT INTO orders (shop_id, customer_id, total, status) VALUES ($1, 7, 99.5, 'open') RETURNING id",
        FIVE,
    ),
    ("update", "UPDATE repairs SET status = 'done', closed_at = now() WHERE shop_id = $1 AND id = 9", FIVE),
    ("for update", "SELECT * FROM orders WHERE shop_id = $1 AND id = 3 FOR UPDATE", FIVE),
    ("begin", "BEGIN", None),
    ("set", "SET pgtenantproxy.shop_id = 5", None),
    ("comment hint", "/* shop_id=5 */ SELECT * FROM orders WHERE id = 42", None),
]


def per_call_us(fn: object, seconds: float, repeat: int) -> float:
    timer = timeit.Timer(fn)  # type: ignore[arg-type]
    number, _ = timer.autorange()
    number = max(1, int(number * seconds / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings (smoke run)")
    args = parser.parse_args()
    seconds, repeat = (0.02, 2) if args.quick else (0.2, 5)
    analyser = Analyser(cache_size=1000)
    router = Router(analyser, Strategy("tenant"))
    print(f"pglast {pglast.__version__}, Python {platform.python_version()}, {platform.machine()}\n")
    print("| statement | uncached µs | cached µs | route µs | route |")
    print("|---|---:|---:|---:|---|")
    for name, sql, params in CORPUS:
        items = [BatchItem(sql, params)]
        uncached = per_call_us(lambda sql=sql: analyser.parse(sql), seconds, repeat)
        analyser.analyse(sql)
        cached = per_call_us(lambda sql=sql: analyser.analyse(sql), seconds, repeat)

        def decide(items: list[BatchItem] = items) -> object:
            return router.route(items, tx_status=73, tenant_tables=TENANT, eligible=ELIGIBLE)

        routed = per_call_us(decide, seconds, repeat)
        result = router.route(items, tx_status=73, tenant_tables=TENANT, eligible=ELIGIBLE).route
        where = f"{result.target} ({result.reason})"
        print(f"| {name} | {uncached:.1f} | {cached:.2f} | {routed:.1f} | {where} |")
    stats = analyser.stats
    print(f"\ncache: {stats.hits} hits, {stats.misses} misses, {stats.size}/{stats.capacity} entries")


if __name__ == "__main__":
    main()
