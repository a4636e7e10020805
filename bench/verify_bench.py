"""Verification speed: rows compared per second, 20 shops, identical and with damaged tenants.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/verify_bench.py               # 20 shops x 10000 accounts + 10000 history rows
    python bench/verify_bench.py --rows 1000   # a smoke run

Method: the write-mirroring test bed (two throwaway clusters on 127.0.0.1:
unified with 6 tenant tables, one tenant server with shops 1-20 provisioned
by the tenancy control plane). Capture is registered (``dual-write enable``)
and taken off again, so loading writes no outbox entries; unified gets the seed
rows plus ``--rows`` accounts and ``--rows`` history rows per shop, copied into
the tenant databases by binary COPY (the test suite's fixture), every shop put
in ``mirroring``. Then ``verify_shops`` runs over all 20 shops with 1 and with
``[migration] jobs`` shops at a time (default ``verify_chunk_rows``), once on
identical data and once after changing one account row in every tenant
database (each shop then also fetches and diffs that range's row hashes and
re-checks the key). Rows/s counts the unified rows compared (the tenant holds
as many). One run each; the machine may be shared, so read the figures as an
order of magnitude.

Results: a markdown table on stdout and the figures as JSON in
``bench/results/verify.json``. Passwords and the encryption key live in this
process's environment only, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.shopdata import copy_shops
from tests.integration.dualwrite.bed import HERE, SHOPS, MirrorBed, make_bed

RESULTS = Path(__file__).resolve().parent / "results"
LOAD = """
SET session_replication_role = replica;
INSERT INTO accounts (shop_id, branch_id, balance, note, labels)
    SELECT s, s, a, 'bench row ' || a, ARRAY['bench', 'a' || a % 10]
    FROM generate_series(1, 20) s, generate_series(1, {rows}) a ORDER BY a, s;
INSERT INTO history (shop_id, account_id, delta) SELECT shop_id, id, id % 1000 FROM accounts;
ANALYZE;
"""


async def prepare(bed: MirrorBed, rows: int) -> None:
    svc = await DualWriteService.open(bed.config(), run_worker=False)
    try:
        await svc.enable()  # registers the captured tables (what verification compares) ...
        await svc.disable()  # ... and takes the triggers off again: loading queues nothing
    finally:
        await svc.close()
    await bed.psql_file(HERE / "seed.sql")
    conn = await bed.unified_admin()
    try:
        await conn.execute(LOAD.format(rows=rows))
    finally:
        await conn.close()
    async with await TenancyService.open(bed.config()) as tenancy:
        await copy_shops(tenancy, SHOPS)


async def damage(bed: MirrorBed) -> None:
    for shop in SHOPS:
        conn = await bed.shop_admin(shop)
        try:
            await conn.execute("UPDATE accounts SET balance = balance + 1"
                               " WHERE id = (SELECT min(id) + 7 FROM accounts)")
        finally:
            await conn.close()


async def measure(bed: MirrorBed, jobs: int, data: str) -> dict[str, Any]:
    config = bed.config(migration={"jobs": jobs, "verify_rechecks": 1})
    async with await TenancyService.open(config, pool_size=jobs + 2) as tenancy:
        started = time.perf_counter()
        report = await verify_shops(tenancy, None, config=config)
        seconds = time.perf_counter() - started
    return {"data": data, "jobs": jobs, "shops": len(report.shops), "rows": report.rows,
            "seconds": round(seconds, 3), "rows_per_s": round(report.rows / seconds),
            "status": report.status, "chunk_rows": config.migration.verify_chunk_rows}


async def main(rows: int) -> list[dict[str, Any]]:
    bed = await make_bed()
    try:
        await prepare(bed, rows)
        runs = [await measure(bed, jobs, "identical") for jobs in (1, 4)]
        await damage(bed)
        runs += [await measure(bed, jobs, "1 changed row per shop") for jobs in (1, 4)]
        return runs
    finally:
        bed.destroy()


def print_table(runs: list[dict[str, Any]], rows: int) -> None:
    print(f"\nverification, 20 shops, {rows} accounts + {rows} history rows per shop "
          f"({platform.processor() or platform.machine()}, {platform.python_version()})\n")
    print("| data | shops at a time | rows | seconds | rows/s | status |")
    print("|---|---:|---:|---:|---:|---|")
    for r in runs:
        print(f"| {r['data']} | {r['jobs']} | {r['rows']} | {r['seconds']:.2f} | {r['rows_per_s']:,} "
              f"| {r['status']} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000, help="accounts (and history rows) per shop")
    args = parser.parse_args()
    results = asyncio.run(main(args.rows))
    print_table(results, args.rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verify.json").write_text(json.dumps({"rows_per_shop": args.rows, "runs": results}, indent=2))
