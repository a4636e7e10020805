"""Retirement and restore throughput: rows/s and MB/s of archive + delete, and of load + verify.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/retire_bench.py               # 20 shops x 10000 accounts + 10000 history rows
    python bench/retire_bench.py --rows 1000   # a smoke run

Method: the write-mirroring test bed (two throwaway clusters on 127.0.0.1:
unified with 6 tenant tables, one tenant server with shops 1-20). Capture is
registered and taken off again (loading queues nothing), unified gets the seed
rows plus ``--rows`` accounts and ``--rows`` history rows per shop, copied into
the tenant databases by binary COPY, and every shop is put in
``tenant_primary`` (standing in for the cutover). Then:

* retirement of the 20 shops by ``retire_shops`` (one shop after another, as
  the command does), with ``verify_before_retirement = false`` so the figure is
  the archive (binary COPY to files, sha256 re-read) plus the delete in one
  transaction, plus the phase move and the audit rows;
* restore of every shop by ``restore_shop``: checksums, load in one
  transaction, verification against the tenant database, phase move.

MB/s counts the archive files' bytes. One run each; the machine may be shared,
so read the figures as an order of magnitude. Results: a markdown table on
stdout and JSON in ``bench/results/retire.json``. Passwords and the encryption
key live in this process's environment only, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.phases import TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import SHOPS, make_bed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify_bench import prepare  # same data as the verification benchmark

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1024 * 1024


async def measure_retire(config: Config) -> dict[str, Any]:
    async with await TenancyService.open(config, pool_size=config.migration.jobs + 2) as tenancy:
        started = time.perf_counter()
        report = await retire_shops(tenancy, list(SHOPS), config=config)
        seconds = time.perf_counter() - started
    assert report.ok, report.to_json()
    return {"step": "retire (archive + delete)", "shops": len(report.shops), "rows": report.rows,
            "bytes": report.bytes, "seconds": round(seconds, 3), "rows_per_s": round(report.rows / seconds),
            "mb_per_s": round(report.bytes / MB / seconds, 1)}


async def measure_restore(config: Config) -> dict[str, Any]:
    rows = size = 0
    async with await TenancyService.open(config, pool_size=config.migration.jobs + 2) as tenancy:
        started = time.perf_counter()
        for shop in SHOPS:
            result = await restore_shop(tenancy, shop, config=config)
            rows += result.total_rows
            size += result.bytes
        seconds = time.perf_counter() - started
    return {"step": "restore (load + verify)", "shops": len(SHOPS), "rows": rows, "bytes": size,
            "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds),
            "mb_per_s": round(size / MB / seconds, 1)}


async def main(rows: int) -> list[dict[str, Any]]:
    bed = await make_bed()
    try:
        await prepare(bed, rows)
        conn = await bed.unified_admin()
        try:
            for shop in SHOPS:
                await force_phase(conn, shop, TENANT_PRIMARY, reason="benchmark: stands in for the cutover")
        finally:
            await conn.close()
        with tempfile.TemporaryDirectory(prefix="pgtp-retire-bench-") as archive:
            config = bed.config(migration={"archive_dir": archive, "verify_before_retirement": False})
            return [await measure_retire(config), await measure_restore(config)]
    finally:
        bed.destroy()


def print_table(runs: list[dict[str, Any]], rows: int) -> None:
    print(f"\nretirement and restore, 20 shops, {rows} accounts + {rows} history rows per shop "
          f"({platform.processor() or platform.machine()}, {platform.python_version()})\n")
    print("| step | shops | rows | archive MB | seconds | rows/s | MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['step']} | {r['shops']} | {r['rows']} | {r['bytes'] / MB:.1f} | {r['seconds']:.2f} "
              f"| {r['rows_per_s']:,} | {r['mb_per_s']} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10000, help="accounts (and history rows) per shop")
    args = parser.parse_args()
    results = asyncio.run(main(args.rows))
    print_table(results, args.rows)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retire.json").write_text(json.dumps({"rows_per_shop": args.rows, "runs": results}, indent=2))
