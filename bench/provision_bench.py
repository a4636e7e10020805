"""Time to provision shops: sequential vs parallel, and what one shop costs, step by step.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/provision_bench.py                  # 100 shops, parallel at 8
    python bench/provision_bench.py --quick          # 20 shops: a smoke run
    python bench/provision_bench.py --shops 200 --concurrency 16

Method: three throwaway clusters on 127.0.0.1 (unified with the test suite's
HandyShop-like schema of 19 tenant tables, and two tenant servers). Provision
N shops one at a time, deprovision them all, then provision the same N shops
``--concurrency`` at a time. Per-shop times are measured by the provisioner;
the per-step breakdown comes from the audit log timestamps of the sequential
run. Results: a markdown table on stdout, raw figures as JSON in
``bench/results/``. Passwords and the encryption key live in this process's
environment only and are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.embedded import PgCluster, create_cluster
from pgtenantproxy.tenancy.provisioning import STEPS, ProvisionOutcome
from pgtenantproxy.tenancy.service import TenancyService

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "tests" / "fixtures" / "tenant_schema.sql"
RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "handyshop"


def start_clusters() -> list[PgCluster]:
    clusters: list[PgCluster] = []
    try:
        for _ in range(3):
            clusters.append(create_cluster())
    except BaseException:
        for c in clusters:
            c.destroy()
        raise
    unified = clusters[0]
    psql = str(unified.bindir / "psql")
    subprocess.run([psql, "-X", "-q", "-c", f"CREATE DATABASE {DATABASE}"], env=unified.env(), check=True)
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE, "-f", str(SCHEMA)],
                   env=unified.env(), check=True, stdout=subprocess.DEVNULL)
    return clusters


def make_config(clusters: list[PgCluster], concurrency: int) -> Config:
    os.environ["BENCH_UNIFIED_PW"] = clusters[0].password
    os.environ["BENCH_TENANT_KEY"] = secrets.token_hex(32)
    servers = []
    for i, cluster in enumerate(clusters[1:], start=1):
        os.environ[f"BENCH_T{i}_PW"] = cluster.password
        servers.append({"name": f"t{i}", "host": cluster.host, "port": cluster.port, "sslmode": "disable",
                        "admin_password_env": f"BENCH_T{i}_PW"})
    return parse_config({
        "unified": {"host": clusters[0].host, "port": clusters[0].port, "database": DATABASE,
                    "sslmode": "disable", "admin_password_env": "BENCH_UNIFIED_PW"},
        "tenancy": {"encryption_key_env": "BENCH_TENANT_KEY", "provision_concurrency": concurrency},
        "tenant_servers": servers,
    })


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(mode: str, concurrency: int, wall: float, outcomes: list[ProvisionOutcome]) -> dict[str, Any]:
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{len(failed)} shops failed, first: shop {failed[0].shop_id}: {failed[0].error}")
    seconds = [o.seconds for o in outcomes]
    return {
        "mode": mode, "shops": len(outcomes), "concurrency": concurrency, "wall_s": wall,
        "shops_per_s": len(outcomes) / wall, "per_shop_p50_s": statistics.median(seconds),
        "per_shop_p95_s": quantile(seconds, 0.95), "per_shop_max_s": max(seconds),
    }


async def step_costs(svc: TenancyService, shop_ids: list[int]) -> dict[str, float]:
    """Median seconds per step, from the audit log of one provisioning per shop."""
    rows = await svc.pool.fetch(
        "SELECT shop_id, step, at FROM pgtenantproxy.migration_log WHERE action = 'provision'"
        " AND status = 'done' AND shop_id = ANY($1::bigint[]) ORDER BY id", shop_ids)
    by_shop: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_shop[r["shop_id"]].append(r)
    costs: dict[str, list[float]] = defaultdict(list)
    for entries in by_shop.values():
        for before, after in itertools.pairwise(entries):
            costs[after["step"]].append((after["at"] - before["at"]).total_seconds())
    return {step: statistics.median(costs[step]) for step in STEPS[1:] if costs[step]}


async def run(config: Config, shops: int, concurrency: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    shop_ids = list(range(1, shops + 1))
    async with await TenancyService.open(config, pool_size=concurrency * 2 + 2) as svc:
        started = time.monotonic()
        sequential = await svc.provision_many(shop_ids, concurrency=1)
        rows = [summarise("sequential", 1, time.monotonic() - started, sequential)]
        steps = await step_costs(svc, shop_ids)
        for shop_id in shop_ids:
            await svc.deprovision(shop_id)
        started = time.monotonic()
        parallel = await svc.provision_many(shop_ids, concurrency=concurrency)
        rows.append(summarise("parallel", concurrency, time.monotonic() - started, parallel))
    return rows, steps


def report(rows: list[dict[str, Any]], steps: dict[str, float], env: dict[str, Any]) -> None:
    print("| mode | shops | concurrency | wall s | shops/s | per-shop P50 s | P95 s | max s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['shops']} | {r['concurrency']} | {r['wall_s']:.1f} "
              f"| {r['shops_per_s']:.2f} | {r['per_shop_p50_s']:.2f} | {r['per_shop_p95_s']:.2f} "
              f"| {r['per_shop_max_s']:.2f} |")
    print(f"\nspeed-up of parallel over sequential: {rows[0]['wall_s'] / rows[1]['wall_s']:.1f}x")
    print("\nper-shop cost by step (median, sequential run):\n")
    print("| step | ms |\n|---|---:|")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds * 1000:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("provision-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"environment": env, "runs": rows, "step_median_s": steps}, indent=2) + "\n")
    print(f"\nraw figures: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="20 shops")
    args = parser.parse_args(argv)
    shops = 20 if args.quick else args.shops
    env = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
           "platform": platform.platform()}
    clusters = start_clusters()
    try:
        rows, steps = asyncio.run(run(make_config(clusters, args.concurrency), shops, args.concurrency))
    finally:
        for cluster in clusters:
            cluster.destroy()
    env["loadavg_end"] = os.getloadavg()
    report(rows, steps, env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
