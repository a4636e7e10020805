"""pgbench select-by-shop: direct to unified, through the plain relay, the routed unified and tenant routes.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/routing_bench.py              # 3 rounds x 10 s per route and client count, 100 shops
    python bench/routing_bench.py --quick      # 2 rounds x 2 s, 1 s warm-up: a smoke run (~1 min)
    python bench/routing_bench.py --shops 20   # the issue's 20-shop shop-read workload

Method: two throwaway clusters on 127.0.0.1, unified (database ``bench_shops``,
table ``orders`` with 200 rows for each of shops 1-N, N = ``--shops``) and one
tenant server. The shops are provisioned by the tenancy control plane and
their rows copied into their tenant databases. Three proxies run as
``python -m pgtenantproxy serve`` in their own processes: the plain relay
(routing off: no ``[[tenant_servers]]`` in its config, so no routing runtime
and no dispatcher; see ``pgtenantproxy/app.py``), and two with routing on,
``[routing] strategy = "unified"`` and ``"tenant"``. pgbench runs a
select-only custom script (a random shop per transaction, extended protocol)
against each of the four routes, at ``-c 8 -j 2`` and at ``-c 1 -j 1``,
after an unrecorded warm-up run per route (tenant pools opened, caches filled).

Rounds are paired and interleaved: each round runs every route once at -c 8,
then every route once at -c 1, the route order rotating from round to round,
so that the routes see the same machine conditions. Per run, the proxy's CPU
time (utime + stime, fields 14 and 15 of ``/proc/<pid>/stat``, in clock ticks)
is read before and after pgbench and divided by the number of transactions
pgbench reports (one transaction = one unit: one SELECT) -> microseconds of
proxy CPU per unit. Per route: the median TPS, CPU per unit and latency
percentiles (pooled from pgbench's per-transaction log, ``-l``, over all rounds);
ratios (TPS to direct, to the plain relay; CPU routed unified / plain, tenant /
routed unified) and the tenant - unified P50 difference at -c 1 are computed
within each round and summarised by their median over rounds. The issue's
targets are printed next to the figures; nothing is asserted.

Results: markdown tables on stdout, the raw figures as JSON in
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
from targets import REPO, Service, Target, cpu_seconds, pgbench_path, wait_listening

from pgtenantproxy.config import parse_config
from pgtenantproxy.embedded import PgCluster, create_cluster, free_port
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.shopdata import copy_shops
from tests.fixtures.tenancy import toml_value

RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "bench_shops"
ROWS_PER_SHOP = 200
ENV_UNIFIED, ENV_T1, ENV_KEY = "BENCH_ROUTING_UNIFIED_PW", "BENCH_ROUTING_T1_PW", "BENCH_ROUTING_KEY"
ROUTES = ("direct", "proxy-plain", "proxy-unified", "proxy-tenant")
PROXY_ROUTES = ROUTES[1:]
#: route -> ``[routing] strategy`` of its proxy; None: the plain relay (routing off).
STRATEGY: dict[str, str | None] = {"proxy-plain": None, "proxy-unified": "unified", "proxy-tenant": "tenant"}
CLIENTS = (8, 1)  # -c 8 -j 2 (throughput), then -c 1 -j 1 (single-client latency)
PGBENCH_ARGS = ("-n", "-M", "extended")

#: The issue's targets (printed, never asserted).
TARGET_CPU_RATIO = 1.1  # routed unified <= 1.1 x plain; tenant <= 1.1 x routed unified (CPU per unit)
TARGET_TPS_RATIO = 0.9  # each proxy route's TPS relative to the plain relay
TARGET_P50_DIFF_US = 20.0  # tenant P50 <= routed unified P50 + 20 us at -c 1


def pgbench_args(clients: int) -> tuple[str, ...]:
    return (*PGBENCH_ARGS, "-c", str(clients), "-j", str(min(2, clients)))


def script(shops: int) -> str:
    return f"\\set shop random(1, {shops})\nSELECT count(*), sum(amount) FROM orders WHERE shop_id = :shop;\n"


def schema(shops: int) -> str:
    return f"""
CREATE TABLE orders (id bigserial PRIMARY KEY, shop_id int NOT NULL, amount numeric(10,2),
                     created_at timestamptz DEFAULT now());
CREATE INDEX orders_shop_id ON orders (shop_id);
INSERT INTO orders (shop_id, amount)
SELECT s, round((random() * 500)::numeric, 2)
FROM generate_series(1, {shops}) AS s, generate_series(1, {ROWS_PER_SHOP}) AS i;
"""


@dataclass
class Run:
    route: str
    clients: int
    round: int
    tps: float
    transactions: int
    p50_us: float
    p95_us: float
    p99_us: float
    cpu_us_per_unit: float | None = None  # the proxy's CPU time per transaction (None: direct)
    latencies_us: list[int] = field(default_factory=list, repr=False)


def psql(cluster: PgCluster, sql: str, *, dbname: str = "postgres") -> None:
    subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-c", sql],
        env=cluster.env(), check=True, stdout=subprocess.DEVNULL,
    )


def config_data(unified: PgCluster, tenant: PgCluster, shops: int) -> dict[str, Any]:
    """The unified/tenancy/tenant_servers sections (passwords and key by env var name only)."""
    return {
        "unified": {"host": unified.host, "port": unified.port, "database": DATABASE, "sslmode": "disable",
                    "admin_user": "postgres", "admin_password_env": ENV_UNIFIED},
        "tenancy": {"encryption_key_env": ENV_KEY, "shops_query": f"SELECT generate_series(1,{shops})"},
        "tenant_servers": [{"name": "t1", "host": tenant.host, "port": tenant.port, "admin_user": "postgres",
                            "admin_password_env": ENV_T1, "sslmode": "disable"}],
    }


async def provision(data: dict[str, Any], shops: list[int]) -> None:
    async with await TenancyService.open(parse_config(data)) as svc:
        outcomes = await svc.provision_many(shops)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            first = failed[0]
            raise RuntimeError(f"{len(failed)} shops failed, first: shop {first.shop_id}: {first.error}")
        await copy_shops(svc, shops)


def setup(unified: PgCluster, tenant: PgCluster, shops: int) -> dict[str, Any]:
    os.environ[ENV_UNIFIED], os.environ[ENV_T1] = unified.password, tenant.password
    os.environ[ENV_KEY] = secrets.token_hex(32)
    psql(unified, f"CREATE DATABASE {DATABASE}")
    psql(unified, schema(shops), dbname=DATABASE)
    psql(unified, "VACUUM ANALYZE orders", dbname=DATABASE)
    data = config_data(unified, tenant, shops)
    asyncio.run(provision(data, list(range(1, shops + 1))))
    return data


def to_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, table in data.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
            lines.append("")
    return "\n".join(lines)


def proxy_sections(data: dict[str, Any], port: int, strategy: str | None) -> dict[str, Any]:
    """The proxy's config: routing on with ``strategy``, or the plain relay (``strategy`` None).

    Routing is on exactly when ``[[tenant_servers]]`` are listed (``ProxyApp._start``): the plain
    relay gets the same ``[unified]`` server and none of ``[tenancy]``, ``[[tenant_servers]]``,
    ``[routing]``, so it runs without routing runtime, dispatcher or write mirroring.
    """
    common = {
        "dual_write": {"run_worker": False},
        "metrics": {"enabled": False},
        "admin": {"enabled": False},
        "logging": {"level": "warning"},
    }
    proxy = {"proxy": {"listen": f"127.0.0.1:{port}", "shutdown_timeout_ms": 2000}}
    if strategy is None:
        return {**proxy, "unified": data["unified"], **common}
    return {**proxy, **data, "routing": {"strategy": strategy}, **common}


def start_proxy(data: dict[str, Any], route: str) -> Service:
    """``python -m pgtenantproxy serve`` for one route, in its own process."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-routing-"))
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(to_toml(proxy_sections(data, port, STRATEGY[route])))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    service = Service(proc, workdir, [Target(route, port, DATABASE, pid=proc.pid)])
    try:
        wait_listening(route, port, proc, log)
    except BaseException:
        service.stop()
        raise
    return service


def percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_COUNT = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def run_pgbench(
    unified: PgCluster, target: Target, script_file: Path, clients: int, duration: int, logdir: Path
) -> Run:
    """One pgbench run: TPS, the proxy's CPU per transaction, latencies (µs) from the per-transaction log."""
    prefix = logdir / f"{target.name}-{time.monotonic_ns()}"
    cmd = [
        pgbench_path(unified), *pgbench_args(clients), "-T", str(duration), "-f", str(script_file),
        "-l", f"--log-prefix={prefix}", "-h", "127.0.0.1", "-p", str(target.port), "-U", "postgres", DATABASE,
    ]
    env = unified.env()  # PGPASSWORD for the child only
    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 120, cwd=logdir)
    cpu = cpu_seconds(target.pid) - cpu_before if target.pid else None
    tps, count = _TPS.search(result.stdout), _COUNT.search(result.stdout)
    if result.returncode != 0 or tps is None or count is None:
        raise RuntimeError(
            f"pgbench against {target.name} failed ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    transactions = int(count.group(1))
    latencies: list[int] = []
    for path in logdir.glob(f"{prefix.name}.*"):
        latencies += [int(line.split()[2]) for line in path.read_text().splitlines() if line.strip()]
        path.unlink()
    latencies.sort()
    per_unit = cpu * 1e6 / transactions if cpu is not None and transactions else None
    return Run(target.name, clients, 0, float(tps.group(1)), transactions, percentile(latencies, 0.50),
               percentile(latencies, 0.95), percentile(latencies, 0.99), per_unit, latencies)


def run_rounds(unified: PgCluster, targets: dict[str, Target], args: argparse.Namespace) -> list[Run]:
    logdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-routing-log-"))
    script_file = logdir / "select_shop.sql"
    script_file.write_text(script(args.shops))
    runs: list[Run] = []
    try:
        if args.warmup:  # not recorded: fills the tenant pools, caches and the analyser's cache first
            for name in ROUTES:
                print(f"  warm-up {name} ({args.warmup} s)", file=sys.stderr, flush=True)
                run_pgbench(unified, targets[name], script_file, 8, args.warmup, logdir)
        for n in range(args.rounds):
            order = ROUTES[n % len(ROUTES):] + ROUTES[: n % len(ROUTES)]
            for clients in CLIENTS:
                for name in order:
                    run = run_pgbench(unified, targets[name], script_file, clients, args.duration, logdir)
                    run.round = n
                    runs.append(run)
                    cpu = f" cpu={run.cpu_us_per_unit:6.1f}us/unit" if run.cpu_us_per_unit is not None else ""
                    print(f"  round {n + 1}/{args.rounds} -c {clients} {name:14} tps={run.tps:9.1f} "
                          f"p50={run.p50_us:6.0f}us p99={run.p99_us:6.0f}us{cpu}",
                          file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    return runs


def _by_round(runs: list[Run], route: str, clients: int) -> dict[int, Run]:
    return {r.round: r for r in runs if r.route == route and r.clients == clients}


def paired(runs: list[Run], a: str, b: str, clients: int, value: str, *, diff: bool = False) -> float:
    """Median over rounds of value(a) / value(b) (or value(a) - value(b)) within the same round."""
    ra, rb = _by_round(runs, a, clients), _by_round(runs, b, clients)
    pairs = [(getattr(ra[n], value), getattr(rb[n], value)) for n in ra if n in rb]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return float("nan")
    return float(statistics.median(x - y if diff else x / y for x, y in pairs))


def summary(runs: list[Run]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per client count ("c8", "c1"), per route: medians, pooled percentiles, paired ratios."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for clients in CLIENTS:
        per_route: dict[str, dict[str, float | None]] = {}
        for route in ROUTES:
            mine = list(_by_round(runs, route, clients).values())
            if not mine:
                continue
            pooled = sorted(v for r in mine for v in r.latencies_us)
            cpu = [r.cpu_us_per_unit for r in mine if r.cpu_us_per_unit is not None]
            per_route[route] = {
                "median_tps": statistics.median(r.tps for r in mine),
                "ratio_to_direct": paired(runs, route, "direct", clients, "tps"),
                "ratio_to_plain": paired(runs, route, "proxy-plain", clients, "tps"),
                "p50_us": percentile(pooled, 0.50),
                "p95_us": percentile(pooled, 0.95),
                "p99_us": percentile(pooled, 0.99),
                "cpu_us_per_unit": statistics.median(cpu) if cpu else None,
            }
        out[f"c{clients}"] = per_route
    return out


def comparisons(runs: list[Run]) -> list[tuple[str, str, float, str, bool]]:
    """The issue's figures, paired within rounds: (key, label, measured, target text, met)."""
    cpu_unified = paired(runs, "proxy-unified", "proxy-plain", 8, "cpu_us_per_unit")
    cpu_tenant = paired(runs, "proxy-tenant", "proxy-unified", 8, "cpu_us_per_unit")
    tps_unified = paired(runs, "proxy-unified", "proxy-plain", 8, "tps")
    tps_tenant = paired(runs, "proxy-tenant", "proxy-plain", 8, "tps")
    tps_tenant_unified = paired(runs, "proxy-tenant", "proxy-unified", 8, "tps")
    p50_diff = paired(runs, "proxy-tenant", "proxy-unified", 1, "p50_us", diff=True)
    cpu_t, tps_t, p50_t = TARGET_CPU_RATIO, TARGET_TPS_RATIO, TARGET_P50_DIFF_US
    return [
        ("cpu_unified_over_plain", "proxy CPU per unit: routed unified / plain relay (-c 8)",
         cpu_unified, f"<= {cpu_t}", cpu_unified <= cpu_t),
        ("cpu_tenant_over_unified", "proxy CPU per unit: tenant / routed unified (-c 8)",
         cpu_tenant, f"<= {cpu_t}", cpu_tenant <= cpu_t),
        ("tps_unified_over_plain", "TPS: routed unified / plain relay (-c 8)",
         tps_unified, f">= {tps_t}", tps_unified >= tps_t),
        ("tps_tenant_over_plain", "TPS: tenant / plain relay (-c 8)",
         tps_tenant, f">= {tps_t}", tps_tenant >= tps_t),
        ("tps_tenant_over_unified", "TPS: tenant / routed unified (-c 8)",
         tps_tenant_unified, f">= {tps_t}", tps_tenant_unified >= tps_t),
        ("p50_tenant_minus_unified_c1_us", "P50 at -c 1: tenant - routed unified (us)",
         p50_diff, f"<= +{p50_t:.0f}", p50_diff <= p50_t),
    ]


def _cell(value: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if value is None or value != value else f"{value:{fmt}}{suffix}"


def report(args: argparse.Namespace, env: dict[str, Any], runs: list[Run]) -> None:
    stats = summary(runs)
    checks = comparisons(runs)
    c8, c1 = stats["c8"], stats["c1"]
    print(f"\n## pgbench select by shop over {args.shops} shops ({args.rounds} rounds x {args.duration} s, "
          f"{' '.join(pgbench_args(8))} and -c 1 -j 1, {env['cpus']} CPUs)\n")
    print("| route | TPS (median) | ratio to direct | ratio to plain relay | P50 | P95 | P99 "
          "| proxy CPU per unit | P50 at -c 1 | P99 at -c 1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for route in ROUTES:
        s, one = c8[route], c1.get(route, {})
        print(f"| {route} | {s['median_tps']:.0f} | {_cell(s['ratio_to_direct'], '.3f')} "
              f"| {_cell(s['ratio_to_plain'], '.3f')} | {_cell(s['p50_us'], '.0f', ' us')} "
              f"| {_cell(s['p95_us'], '.0f', ' us')} | {_cell(s['p99_us'], '.0f', ' us')} "
              f"| {_cell(s['cpu_us_per_unit'], '.1f', ' us')} | {_cell(one.get('p50_us'), '.0f', ' us')} "
              f"| {_cell(one.get('p99_us'), '.0f', ' us')} |")
    print("\nproxy CPU per unit: utime + stime of the proxy process over the run / transactions "
          "(one SELECT each), median over rounds. Ratios: median over rounds of the ratio within a round.\n")
    print("| figure (paired within rounds) | measured | target (issue) | met |")
    print("|---|---:|---:|---|")
    for _key, label, value, target, met in checks:
        fmt = "+.0f" if "P50" in label else ".3f"
        print(f"| {label} | {_cell(value, fmt)} | {target} | {'yes' if met else 'no'} |")
    env["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("routing-%Y%m%d-%H%M%S.json")
    doc = {
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                     "pgbench": {f"c{c}": list(pgbench_args(c)) for c in CLIENTS},
                     "shops": args.shops, "rows_per_shop": ROWS_PER_SHOP, "script": script(args.shops)},
        "environment": env,
        "runs": [{"route": r.route, "clients": r.clients, "round": r.round, "tps": r.tps,
                  "transactions": r.transactions, "cpu_us_per_unit": r.cpu_us_per_unit,
                  "p50_us": r.p50_us, "p95_us": r.p95_us, "p99_us": r.p99_us} for r in runs],
        "summary": stats,
        "targets": {key: {"measured": value, "target": target, "met": met}
                    for key, _label, value, target, met in checks},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nload average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}; raw figures: {path}")
    busy = env["loadavg_start"][0]
    if busy > (os.cpu_count() or 1):
        print(f"warning: the load average was {busy:.1f} on {os.cpu_count()} CPUs before the benchmark "
              "started: other processes competed for the CPUs and the figures are noisy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--shops", type=int, default=100, help="shops provisioned and queried (default 100)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of unrecorded pgbench per route before the rounds (default 2, 0: none)")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 2 s, 1 s warm-up, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 2, 2, 1
    if args.shops < 1 or args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--shops, --rounds and --duration must be at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    clusters: list[PgCluster] = []
    services: list[Service] = []
    try:
        print(f"starting a unified and a tenant cluster, provisioning {args.shops} shops",
              file=sys.stderr, flush=True)
        clusters.append(create_cluster(settings={"max_connections": "100", "shared_buffers": "128MB"}))
        clusters.append(create_cluster(settings={"max_connections": "300", "shared_buffers": "128MB"}))
        data = setup(clusters[0], clusters[1], args.shops)
        env["postgresql"] = subprocess.run(
            [str(clusters[0].bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        services += [start_proxy(data, route) for route in PROXY_ROUTES]
        targets = {t.name: t for s in services for t in s.targets}
        targets["direct"] = Target("direct", clusters[0].port, DATABASE)
        runs = run_rounds(clusters[0], targets, args)
    finally:
        for service in services:
            service.stop()
        for cluster in clusters:
            cluster.destroy()
    report(args, env, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
