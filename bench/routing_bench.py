"""pgbench over 100 shops: direct to unified, through the proxy routing to unified, and to tenants.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/routing_bench.py            # 3 rounds x 10 s per route
    python bench/routing_bench.py --quick    # 1 round x 3 s: a smoke run

Method: two throwaway clusters on 127.0.0.1, unified (database ``bench_shops``,
table ``orders`` with 200 rows for each of shops 1-100) and one tenant server.
The 100 shops are provisioned by the tenancy control plane and their rows
copied into their tenant databases. Two proxies run as
``python -m pgtenantproxy serve`` in their own processes, one with
``[routing] strategy = "unified"`` and one with ``"tenant"``. pgbench runs a
select-only custom script (a random shop per transaction, extended protocol)
against each route; rounds are interleaved, the order rotating from round to
round. TPS is the median over rounds and the ratio to direct the median of the
per-round ratios; latency percentiles come from pgbench's per-transaction log
(``-l``), pooled over all rounds of a route.

Results: a markdown table on stdout, the raw figures as JSON in
``bench/results/``. Passwords and the encryption key live in this process's
environment and its children's only, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgbench_compare import _stop_on_signals
from targets import REPO, Service, Target, pgbench_path, wait_listening

from pgtenantproxy.config import parse_config
from pgtenantproxy.embedded import PgCluster, create_cluster, free_port
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.shopdata import copy_shops
from tests.fixtures.tenancy import _toml_value

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "bench_shops"
SHOPS = list(range(1, 101))
ROWS_PER_SHOP = 200
ENV_UNIFIED, ENV_T1, ENV_KEY = "BENCH_ROUTING_UNIFIED_PW", "BENCH_ROUTING_T1_PW", "BENCH_ROUTING_KEY"
ROUTES = ("direct", "proxy-unified", "proxy-tenant")
SCRIPT = "\\set shop random(1, 100)\nSELECT count(*), sum(amount) FROM orders WHERE shop_id = :shop;\n"
PGBENCH_ARGS = ("-n", "-M", "extended", "-c", "8", "-j", "2")

SCHEMA = f"""
CREATE TABLE orders (id bigserial PRIMARY KEY, shop_id int NOT NULL, amount numeric(10,2),
                     created_at timestamptz DEFAULT now());
CREATE INDEX orders_shop_id ON orders (shop_id);
INSERT INTO orders (shop_id, amount)
SELECT s, round((random() * 500)::numeric, 2)
FROM generate_series(1, {len(SHOPS)}) AS s, generate_series(1, {ROWS_PER_SHOP}) AS i;
"""


@dataclass
class Run:
    route: str
    round: int
    tps: float
    p50_us: float
    p95_us: float
    p99_us: float
    latencies_us: list[int] = field(default_factory=list, repr=False)


def psql(cluster: PgCluster, sql: str, *, dbname: str = "postgres") -> None:
    subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql],
        env=cluster.env(), check=True, stdout=subprocess.DEVNULL,
    )


def config_data(unified: PgCluster, tenant: PgCluster) -> dict[str, Any]:
    """The unified/tenancy/tenant_servers sections (passwords and key by env var name only)."""
    return {
        "unified": {"host": unified.host, "port": unified.port, "database": DATABASE, "sslmode": "disable",
                    "admin_user": "postgres", "admin_password_env": ENV_UNIFIED},
        "tenancy": {"encryption_key_env": ENV_KEY, "shops_query": f"SELECT generate_series(1,{len(SHOPS)})"},
        "tenant_servers": [{"name": "t1", "host": tenant.host, "port": tenant.port, "admin_user": "postgres",
                            "admin_password_env": ENV_T1, "sslmode": "disable"}],
    }


async def provision(data: dict[str, Any]) -> None:
    async with await TenancyService.open(parse_config(data)) as svc:
        outcomes = await svc.provision_many(SHOPS)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            first = failed[0]
            raise RuntimeError(f"{len(failed)} shops failed, first: shop {first.shop_id}: {first.error}")
        await copy_shops(svc, SHOPS)


def setup(unified: PgCluster, tenant: PgCluster) -> dict[str, Any]:
    os.environ[ENV_UNIFIED], os.environ[ENV_T1] = unified.password, tenant.password
    os.environ[ENV_KEY] = secrets.token_hex(32)
    psql(unified, f"CREATE DATABASE {DATABASE}")
    psql(unified, SCHEMA, dbname=DATABASE)
    psql(unified, "VACUUM ANALYZE orders", dbname=DATABASE)
    data = config_data(unified, tenant)
    asyncio.run(provision(data))
    return data


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, table in data.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
            lines.append("")
    return "\n".join(lines)


def start_proxy(data: dict[str, Any], strategy: str) -> Service:
    """``python -m pgtenantproxy serve`` with the given routing strategy, in its own process."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-routing-"))
    port = free_port()
    sections = {
        "proxy": {"listen": f"127.0.0.1:{port}", "shutdown_timeout_ms": 2000},
        **data,
        "routing": {"strategy": strategy},
        "dual_write": {"run_worker": False},
        "metrics": {"enabled": False},
        "admin": {"enabled": False},
        "logging": {"level": "warning"},
    }
    config = workdir / "config.toml"
    config.write_text(to_toml(sections))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    name = f"proxy-{strategy}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    service = Service(proc, workdir, [Target(name, port, DATABASE, pid=proc.pid)])
    try:
        wait_listening(name, port, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


def percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)


def run_pgbench(unified: PgCluster, target: Target, script: Path, duration: int, logdir: Path) -> Run:
    """One pgbench run; latencies (µs, 3rd column) from its per-transaction log files."""
    prefix = logdir / f"{target.name}-{time.monotonic_ns()}"
    cmd = [
        pgbench_path(unified), *PGBENCH_ARGS, "-T", str(duration), "-f", str(script),
        "-l", f"--log-prefix={prefix}", "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres", DATABASE,
    ]
    env = unified.env()  # PGPASSWORD for the child only
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 120, cwd=logdir)
    tps = _TPS.search(result.stdout)
    if result.returncode != 0 or tps is None:
        raise RuntimeError(
            f"pgbench against {target.name} failed ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    latencies: list[int] = []
    for path in logdir.glob(f"{prefix.name}.*"):
        latencies += [int(line.split()[2]) for line in path.read_text().splitlines() if line.strip()]
        path.unlink()
    latencies.sort()
    return Run(target.name, 0, float(tps.group(1)), percentile(latencies, 0.50),
               percentile(latencies, 0.95), percentile(latencies, 0.99), latencies)


def run_rounds(unified: PgCluster, targets: dict[str, Target], rounds: int, duration: int) -> list[Run]:
    logdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-routing-log-"))
    script = logdir / "select_shop.sql"
    script.write_text(SCRIPT)
    runs: list[Run] = []
    try:
        for n in range(rounds):
            for name in ROUTES[n % len(ROUTES):] + ROUTES[: n % len(ROUTES)]:
                run = run_pgbench(unified, targets[name], script, duration, logdir)
                run.round = n
                runs.append(run)
                print(f"  round {n + 1}/{rounds} {name:14} tps={run.tps:9.1f} p50={run.p50_us:7.0f}us "
                      f"p99={run.p99_us:7.0f}us", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return runs


def summary(runs: list[Run]) -> dict[str, dict[str, float]]:
    direct = {r.round: r.tps for r in runs if r.route == "direct"}
    out: dict[str, dict[str, float]] = {}
    for route in ROUTES:
        mine = [r for r in runs if r.route == route]
        pooled = sorted(v for r in mine for v in r.latencies_us)
        out[route] = {
            "median_tps": statistics.median(r.tps for r in mine),
            "ratio_to_direct": statistics.median(r.tps / direct[r.round] for r in mine),
            "p50_us": percentile(pooled, 0.50),
            "p95_us": percentile(pooled, 0.95),
            "p99_us": percentile(pooled, 0.99),
        }
    return out


def report(args: argparse.Namespace, env: dict[str, Any], runs: list[Run]) -> None:
    stats = summary(runs)
    print(f"\n## pgbench select by shop over {len(SHOPS)} shops ({args.rounds} rounds x {args.duration} s, "
          f"{' '.join(PGBENCH_ARGS)}, {env['cpus']} CPUs)\n")
    print("| route | TPS (median) | ratio to direct | P50 | P95 | P99 |")
    print("|---|---:|---:|---:|---:|---:|")
    for route, s in stats.items():
        print(f"| {route} | {s['median_tps']:.0f} | {s['ratio_to_direct']:.3f} | {s['p50_us']:.0f} us "
              f"| {s['p95_us']:.0f} us | {s['p99_us']:.0f} us |")
    env["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("routing-%Y%m%d-%H%M%S.json")
    doc = {
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "pgbench": list(PGBENCH_ARGS),
                     "shops": len(SHOPS), "rows_per_shop": ROWS_PER_SHOP, "script": SCRIPT},
        "environment": env,
        "runs": [{"route": r.route, "round": r.round, "tps": r.tps, "p50_us": r.p50_us, "p95_us": r.p95_us,
                  "p99_us": r.p99_us, "transactions": len(r.latencies_us)} for r in runs],
        "summary": stats,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nload average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}; raw figures: {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per route (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--quick", action="store_true", help="1 round x 3 s, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    clusters: list[PgCluster] = []
    services: list[Service] = []
    try:
        print("starting a unified and a tenant cluster, provisioning 100 shops", file=sys.stderr, flush=True)
        clusters.append(create_cluster(settings={"max_connections": "100", "shared_buffers": "128MB"}))
        clusters.append(create_cluster(settings={"max_connections": "300", "shared_buffers": "128MB"}))
        data = setup(*clusters)
        services += [start_proxy(data, "unified"), start_proxy(data, "tenant")]
        targets = {t.name: t for s in services for t in s.targets}
        targets["direct"] = Target("direct", clusters[0].port, DATABASE)
        runs = run_rounds(clusters[0], targets, args.rounds, args.duration)
    finally:
        for service in services:
            service.stop()
        for cluster in clusters:
            cluster.destroy()
    report(args, env, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
