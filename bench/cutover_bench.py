"""Write cutover under load: the write pause per shop, pgbench before vs during, reverse-mirror lag after.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/cutover_bench.py              # ~1 minute
    python bench/cutover_bench.py --clients 2  # a lighter load

Method: the write-mirroring test bed (two throwaway clusters on 127.0.0.1:
unified and one tenant server, shops 1-20 provisioned, pgbench-style tables
tagged with ``shop_id``), reset to "before backfill" as the lifecycle tests
do. One proxy (a :class:`tests.fixtures.app.AppThread`: proxy, forward and
reverse mirror workers, phase keeper, in this process on its own loop) with
the ``tenant`` read strategy; every shop is backfilled and moves to
``reads_on_tenant``. Then pgbench runs ``lifecycle.pgbench`` (TPC-B-like,
``BEGIN ... END``, one shop per transaction) through the proxy with a
per-transaction log; after ``--before`` seconds every shop is cut over
(``cutover_shops(..., percentage=100)``, one shop at a time). Figures:

* write pause per shop (hold to release), P50/P99/max over the 20 shops
  (goal: P99 under 1 s);
* pgbench TPS and latency P50/P99 before the cutovers vs while they run
  (from the per-transaction log, split at the cutover's start and end);
  failed transactions as pgbench reports them;
* reverse-mirror lag after the cutover, same load: the age of the oldest
  pending entry per shop (``reverse_pending``) sampled every 200 ms for
  ``--lag-seconds``, P50/P99 over all samples and the max.

Retirement and restore throughput: ``bench/retire_bench.py``. One run; the
machine may be shared, so read the figures as an order of magnitude.
Results: a markdown table on stdout and JSON in ``bench/results/cutover.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout


from pgtenantproxy.dualwrite.reverse import connect_tenant_admin, reverse_pending
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import cutover_shops
from pgtenantproxy.migration.cutover_report import FenceReport
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.app import AppThread
from tests.integration.dualwrite.bed import DATABASE, SHOPS, MirrorBed, make_bed
from tests.integration.migration.conftest import fresh_start
from tests.integration.migration.test_phases import app_config

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = Path(__file__).resolve().parent.parent / "tests/integration/migration/lifecycle.pgbench"
SETTINGS: dict[str, dict[str, Any]] = {
    "routing": {"strategy": "tenant"},
    "migration": {"fence_timeout_ms": 5000, "ack_timeout_ms": 2000, "keeper_interval_ms": 100},
}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def all_reads_on_tenant(tenancy: TenancyService, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while {r.phase for r in (await read_phases(tenancy.pool)).values()} != {ph.READS_ON_TENANT}:
        if time.monotonic() > deadline:
            raise RuntimeError("the shops did not all reach reads_on_tenant")
        await asyncio.sleep(0.2)


async def pgbench(bed: MirrorBed, port: int, seconds: int, clients: int, log_prefix: Path) -> str:
    args = [str(bed.unified.bindir / "pgbench"), "-n", "-T", str(seconds), "-c", str(clients), "-j", "1",
            "-M", "simple", "-f", str(SCRIPT), "-l", f"--log-prefix={log_prefix}", DATABASE]
    proc = await asyncio.create_subprocess_exec(
        *args, env=bed.pgbench_env(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(log_prefix.parent))
    out, err = await proc.communicate()
    return out.decode() + err.decode()


def read_log(log_prefix: Path) -> list[tuple[float, float]]:
    """(end time in epoch seconds, latency ms) per transaction, from pgbench's per-transaction logs."""
    rows = []
    for path in log_prefix.parent.glob(log_prefix.name + ".*"):
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and f[2].isdigit():  # skipped/failed transactions log a word, not a latency
                rows.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1000))
    return rows


def window(rows: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    lat = [ms for at, ms in rows if start <= at < end]
    seconds = max(end - start, 1e-6)
    return {"seconds": round(seconds, 2), "transactions": len(lat), "tps": round(len(lat) / seconds, 1),
            "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2)}


async def sample_lag(tenancy: TenancyService, seconds: float) -> list[float]:
    conns = [await connect_tenant_admin(tenancy.registry, tenancy.servers, s) for s in SHOPS]
    ages: list[float] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for shop, conn in zip(SHOPS, conns, strict=True):
                pending = await reverse_pending(conn, shop)
                ages.append(pending.oldest_age_s * 1000 if pending.entries else 0.0)
            await asyncio.sleep(0.2)
    finally:
        for conn in conns:
            await conn.close()
    return ages


async def run(bed: MirrorBed, proxy: AppThread, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    migration = {**SETTINGS["migration"], "archive_dir": str(work)}
    config = bed.config(routing=SETTINGS["routing"], migration=migration)
    async with await TenancyService.open(config, pool_size=8) as tenancy:
        assert (await backfill_shops(tenancy, None, wait=True)).ok
        await all_reads_on_tenant(tenancy, 60)
        total = args.before + args.cutover_budget + args.lag_seconds
        prefix = work / "pgbench_log"
        load = asyncio.create_task(pgbench(bed, proxy.port, total, args.clients, prefix))
        started = time.time()
        await asyncio.sleep(args.before)
        t0 = time.time()
        report: FenceReport = await cutover_shops(tenancy, None, percentage=100, actor="bench")
        t1 = time.time()
        ages = await sample_lag(tenancy, args.lag_seconds)
        out = await load
    rows = read_log(prefix)
    failed = next((line for line in out.splitlines() if "number of failed transactions" in line), "?")
    return {"report": report.as_dict(), "shops": len(report.shops), "ok": report.ok,
            "before": window(rows, started + 1.0, t0), "during": window(rows, t0, t1),
            "after": window(rows, t1, t1 + args.lag_seconds),
            "failed": failed.split(":", 1)[-1].strip(), "lag_ms": {
                "samples": len(ages), "p50": round(pct(ages, 0.5), 1), "p99": round(pct(ages, 0.99), 1),
                "max": round(max(ages, default=0.0), 1)}}


def print_table(r: dict[str, Any], clients: int) -> None:
    pause = r["report"]["pause_ms"]
    print(f"\nwrite cutover of {r['shops']} shops under pgbench load through the proxy "
          f"(lifecycle.pgbench, -c {clients} -M simple); all done: {r['ok']}\n")
    print("| figure | value |")
    print("|---|---:|")
    print(f"| write pause per shop P50 / P99 / max | {pause['p50']} / {pause['p99']} / "
          f"{pause['max']:.1f} ms |")
    for name in ("before", "during", "after"):
        w = r[name]
        print(f"| pgbench {name} the cutovers ({w['seconds']} s) TPS, latency P50 / P99 | {w['tps']} tps, "
              f"{w['p50_ms']} / {w['p99_ms']} ms |")
    print(f"| failed transactions (pgbench) | {r['failed']} |")
    lag = r["lag_ms"]
    print(f"| reverse-mirror lag after the cutover (oldest pending entry, {lag['samples']} samples) "
          f"P50 / P99 / max | {lag['p50']} / {lag['p99']} / {lag['max']} ms |")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    bed = await make_bed()
    try:
        await fresh_start(bed)
        with tempfile.TemporaryDirectory(prefix="pgtp-cutover-bench-") as tmp, \
                AppThread(app_config(bed, **SETTINGS), mirror=True) as proxy:
            return await run(bed, proxy, args, Path(tmp))
    finally:
        bed.destroy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--before", type=int, default=8, help="seconds of load before the cutovers")
    parser.add_argument("--cutover-budget", type=int, default=20, help="seconds of load planned for them")
    parser.add_argument("--lag-seconds", type=int, default=5, help="seconds of reverse-lag sampling")
    ns = parser.parse_args()
    result = asyncio.run(main(ns))
    print_table(result, ns.clients)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cutover.json").write_text(json.dumps(result, indent=2, default=str))
