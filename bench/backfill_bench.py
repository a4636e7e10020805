"""Backfill throughput against ``pg_dump --data-only | psql``, and what a backfill costs the application.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/backfill_bench.py                    # 300k extra rows, 4 jobs: about a minute
    python bench/backfill_bench.py --rows 3000000     # a bigger run (several minutes)
    python bench/backfill_bench.py --jobs 8 --load-rate 200 --load-seconds 20

Method: two throwaway clusters on 127.0.0.1: unified with the write-mirroring
test schema (6 tenant tables of 20 shops: serial and identity ids, a generated
column, arrays, uuids, FK cascades), ``--rows`` extra ``history`` rows spread
over the shops, write capture on; one tenant server with the 20 shop databases
provisioned by the tenancy control plane. The proxy runs as ``pgtenantproxy
serve`` in its own process, in front of unified.

1. **Latency before**: a light pgbench load through the proxy (the
   TPC-B-like script of the tests, ``--load-rate`` tx/s, ``--load-seconds``),
   P50/P99 from pgbench's per-transaction log.
2. **Backfill**: the same load again, and after one second ``backfill --all``
   (this process, ``--jobs`` shops at once, no throttle) copies every shop into
   its tenant database; rows/s and MB/s of binary COPY data, and the load's
   latency over the transactions that completed while the backfill ran.
3. **pg_dump**: ``pg_dump --data-only --disable-triggers`` of the same tables
   (every shop's rows: the same data, plus what the load added meanwhile)
   piped into ``psql`` on a fresh database of the tenant server with the same
   tables (its schema is dumped from a shop database); rows/s and MB/s of the
   dump stream.

Prints a table (markdown). Passwords and the encryption key live in this
process's environment only and are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from targets import REPO, Service, Target, pgbench_path, wait_listening

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.embedded import PgCluster, create_cluster, free_port
from pgtenantproxy.lifecycle.phases import PROVISIONED
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.tenancy.service import TenancyService

FILES = REPO / "tests" / "integration" / "dualwrite"
DATABASE = "shopdb"
APP_USER = "app_user"
SHOPS = list(range(1, 21))
TABLES = ("branches", "tellers", "accounts", "history", "account_tags", "categories")
ENV = {"unified": "BENCH_BACKFILL_UNIFIED_PW", "t1": "BENCH_BACKFILL_T1_PW", "key": "BENCH_BACKFILL_KEY"}


@dataclass
class Copy:
    method: str
    rows: int
    nbytes: int
    seconds: float

    def line(self) -> str:
        return (f"| {self.method} | {self.rows:,} | {self.nbytes / 1e6:.1f} | {self.seconds:.2f} | "
                f"{self.rows / self.seconds:,.0f} | {self.nbytes / 1e6 / self.seconds:.1f} |")


@dataclass
class Latency:
    phase: str
    transactions: int
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        return f"| {self.phase} | {self.transactions} | {self.p50_ms:.2f} | {self.p99_ms:.2f} |"


class Bench:
    def __init__(self, unified: PgCluster, tenant: PgCluster) -> None:
        self.unified = unified
        self.tenant = tenant
        self.app_password = secrets.token_urlsafe(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-backfill-"))
        os.environ.update({ENV["unified"]: unified.password, ENV["t1"]: tenant.password,
                           ENV["key"]: secrets.token_hex(32)})

    def sections(self) -> dict[str, Any]:
        return {
            "unified": {"host": self.unified.host, "port": self.unified.port, "database": DATABASE,
                        "sslmode": "disable", "admin_user": self.unified.superuser,
                        "admin_password_env": ENV["unified"]},
            "tenancy": {"encryption_key_env": ENV["key"], "shops_query": "SELECT generate_series(1, 20)"},
            "tenant_servers": [{"name": "t1", "host": self.tenant.host, "port": self.tenant.port,
                                "admin_user": self.tenant.superuser, "admin_password_env": ENV["t1"],
                                "sslmode": "disable"}],
        }

    def config(self) -> Config:
        return parse_config(self.sections(), environ={})

    def psql(
        self, cluster: PgCluster, dbname: str, *, file: Path | None = None, sql: str | None = None
    ) -> None:
        args = [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname]
        args += ["-f", str(file)] if file else ["-c", sql or ""]
        result = subprocess.run(args, env=cluster.env(), capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(result.stderr[-2000:])


TENANT_KEYS = {"branches": "id", "tellers": "id", "accounts": "id", "history": "id",
               "account_tags": "account_id, tag", "categories": "id"}


async def setup(rows: int, *, tenant_index: bool) -> Bench:
    unified = create_cluster()
    try:
        tenant = create_cluster()
    except BaseException:
        unified.destroy()
        raise
    bench = Bench(unified, tenant)
    bench.psql(unified, "postgres", sql=f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{bench.app_password}'")
    bench.psql(unified, "postgres", sql=f"CREATE DATABASE {DATABASE}")
    bench.psql(unified, DATABASE, file=FILES / "schema.sql")
    async with await TenancyService.open(bench.config()) as tenancy:
        outcomes = await tenancy.provision_many(SHOPS, concurrency=4)
    if not all(o.ok for o in outcomes):
        raise RuntimeError(f"provisioning failed: {[o.error for o in outcomes if not o.ok]}")
    async with await DualWriteService.open(bench.config(), run_worker=False) as svc:
        await svc.enable()
    bench.psql(unified, DATABASE, file=FILES / "seed.sql")
    conn = await asyncpg.connect(**unified.connect_kwargs(database=DATABASE))
    try:  # bulk rows around the triggers (capture and the application's), then every shop provisioned
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO history (shop_id, account_id, teller_id, delta)"
            " SELECT s, (s - 1) * 50 + 1 + g % 50, (s - 1) * 5 + 1, g % 1000"
            " FROM generate_series(1, $1) g, LATERAL (SELECT 1 + g % 20 AS s) x", rows,
        )
        if tenant_index:  # how multi-tenant schemas are indexed: a shop's rows in key order
            for table, key in TENANT_KEYS.items():
                await conn.execute(f"CREATE INDEX ON {table} (shop_id, {key})")
        await conn.execute("ANALYZE")
        for shop in SHOPS:
            await force_phase(conn, shop, PROVISIONED, reason="bench")
    finally:
        await conn.close()
    return bench


def start_proxy(bench: Bench) -> tuple[Service, Target]:
    port = free_port()
    data = {"proxy": {"listen": f"127.0.0.1:{port}", "shutdown_timeout_ms": 2000}, **bench.sections(),
            "dual_write": {"run_worker": False}, "metrics": {"enabled": False},
            "admin": {"enabled": False}, "logging": {"level": "warning"}}
    config = bench.workdir / "proxy.toml"
    config.write_text(_toml(data))
    log = bench.workdir / "proxy.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    service = Service(proc, Path(tempfile.mkdtemp(prefix="pgtp-bench-proxy-")), [])
    wait_listening("proxy", port, proc, log)
    return service, Target("proxy", port, DATABASE, proc.pid)


def _toml(data: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v) if isinstance(v, int | float) else '"' + str(v).replace('"', '\\"') + '"'

    lines: list[str] = []
    for name, table in data.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


class Load:
    """pgbench through the proxy at a fixed rate; latencies from its per-transaction log."""

    def __init__(self, bench: Bench, target: Target, *, rate: int, seconds: int) -> None:
        self.bench = bench
        self.target = target
        self.rate = rate
        self.seconds = seconds
        self.prefix = bench.workdir / f"load-{time.monotonic_ns()}"

    async def run(self) -> None:
        env = self.bench.unified.env(user=APP_USER, password=self.bench.app_password)
        env["PGPORT"] = str(self.target.port)
        proc = await asyncio.create_subprocess_exec(
            pgbench_path(self.bench.unified), "-n", "-M", "prepared", "-c", "2", "-j", "1",
            "-R", str(self.rate),
            "-T", str(self.seconds), "-f", str(FILES / "tpcb.pgbench"), "-l", f"--log-prefix={self.prefix}",
            DATABASE, env=env, cwd=self.bench.workdir, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"pgbench failed: {(out + err).decode()[-2000:]}")

    def latency(self, phase: str, window: tuple[float, float] | None = None) -> Latency:
        """P50/P99 of the transactions that completed within ``window`` (epoch seconds; None: all)."""
        values: list[float] = []
        for path in self.bench.workdir.glob(f"{self.prefix.name}.*"):
            for line in path.read_text().split("\n"):
                f = line.split()
                if len(f) < 6:
                    continue
                done = int(f[4]) + int(f[5]) / 1e6
                if window is None or window[0] <= done <= window[1]:
                    values.append(int(f[2]) / 1000)
        values.sort()

        def pct(q: float) -> float:
            return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

        return Latency(phase, len(values), pct(0.50), pct(0.99))


async def backfill_under_load(bench: Bench, target: Target, args: argparse.Namespace) -> tuple[Copy, Latency]:
    load = Load(bench, target, rate=args.load_rate, seconds=args.load_seconds)
    loading = asyncio.get_running_loop().create_task(load.run())
    await asyncio.sleep(1.0)
    async with await TenancyService.open(bench.config(), pool_size=2 * args.jobs + 2) as tenancy:
        began = time.time()
        report = await backfill_shops(tenancy, None, jobs=args.jobs, throttle=0)
        ended = time.time()
    await loading
    if not report.ok:
        raise RuntimeError(f"backfill failed: {report.to_json()[:2000]}")
    return (Copy(f"backfill under load ({args.jobs} jobs)", report.rows, report.bytes, ended - began),
            load.latency("during backfill", (began, ended)))


async def backfill_quiet(bench: Bench, args: argparse.Namespace) -> Copy:
    """Every shop back to ``provisioned`` and copied again with nothing else running (as pg_dump was)."""
    conn = await asyncpg.connect(**bench.unified.connect_kwargs(database=DATABASE))
    try:
        for shop in SHOPS:
            await force_phase(conn, shop, PROVISIONED, reason="bench: copy again")
    finally:
        await conn.close()
    async with await TenancyService.open(bench.config(), pool_size=2 * args.jobs + 2) as tenancy:
        began = time.time()
        report = await backfill_shops(tenancy, None, jobs=args.jobs, throttle=0)
        ended = time.time()
    if not report.ok:
        raise RuntimeError(f"backfill failed: {report.to_json()[:2000]}")
    return Copy(f"backfill, no load ({args.jobs} jobs)", report.rows, report.bytes, ended - began)


def pg_dump_copy(bench: Bench) -> Copy:
    """``pg_dump --data-only`` of the tenant tables piped into ``psql`` on a fresh tenant-server database."""
    bench.psql(bench.tenant, "postgres", sql="CREATE DATABASE dumpcopy")
    schema = subprocess.run(
        [str(bench.tenant.bindir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", "shop_1_db"],
        env=bench.tenant.env(), capture_output=True, check=True,
    ).stdout
    subprocess.run([str(bench.tenant.bindir / "psql"), "-X", "-q", "-d", "dumpcopy"], input=schema,
                   env=bench.tenant.env(), capture_output=True, check=True)
    unpin = "".join(f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS pgtenantproxy_tenant_pin;" for t in TABLES)
    bench.psql(bench.tenant, "dumpcopy", sql=unpin)  # a shop database only takes its own shop's rows
    tables = [a for t in TABLES for a in ("-t", f"public.{t}")]
    began = time.monotonic()
    dump = subprocess.Popen([str(bench.unified.bindir / "pg_dump"), "--data-only", "--disable-triggers",
                             *tables, DATABASE], env=bench.unified.env(), stdout=subprocess.PIPE)
    load = subprocess.Popen([str(bench.tenant.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                             "-d", "dumpcopy"], env=bench.tenant.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    assert dump.stdout is not None and load.stdin is not None
    size = [0]

    def relay() -> None:
        assert dump.stdout is not None and load.stdin is not None
        try:
            while chunk := dump.stdout.read(1 << 20):
                size[0] += len(chunk)
                load.stdin.write(chunk)
            load.stdin.close()
        except BrokenPipeError:
            dump.kill()

    thread = threading.Thread(target=relay)
    thread.start()
    thread.join()
    if dump.wait() or load.wait():
        raise RuntimeError("pg_dump | psql failed")
    seconds = time.monotonic() - began
    counts = subprocess.run(
        [str(bench.tenant.bindir / "psql"), "-X", "-At", "-d", "dumpcopy", "-c",
         " + ".join(f"(SELECT count(*) FROM {t})" for t in TABLES).join(("SELECT ", ""))],
        env=bench.tenant.env(), capture_output=True, text=True, check=True,
    ).stdout
    return Copy("pg_dump --data-only | psql", int(counts.strip()), size[0], seconds)


async def run(args: argparse.Namespace) -> str:
    started = time.monotonic()
    print(f"setting up (20 shops, {args.rows:,} extra rows)...", file=sys.stderr, flush=True)
    bench = await setup(args.rows, tenant_index=not args.no_tenant_index)
    proxy: Service | None = None
    try:
        proxy, target = start_proxy(bench)
        before = Load(bench, target, rate=args.load_rate, seconds=args.load_seconds)
        print(f"load before the backfill ({time.monotonic() - started:.0f}s)...", file=sys.stderr, flush=True)
        await before.run()
        print("backfill under load...", file=sys.stderr, flush=True)
        backfill, during = await backfill_under_load(bench, target, args)
        print("pg_dump | psql...", file=sys.stderr, flush=True)
        dump = await asyncio.to_thread(pg_dump_copy, bench)
        print("backfill again, without load...", file=sys.stderr, flush=True)
        quiet = await backfill_quiet(bench, args)
        print(f"done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        return report(args, [backfill, quiet, dump], [before.latency("before backfill"), during])
    finally:
        if proxy is not None:
            proxy.stop()
        for cluster in (bench.unified, bench.tenant):
            cluster.destroy()


def report(args: argparse.Namespace, copies: list[Copy], latencies: list[Latency]) -> str:
    index = "no tenant index" if args.no_tenant_index else "tables indexed on (shop_id, key)"
    lines = [f"Backfill of 20 shops ({args.rows:,} extra history rows, {index}), {os.cpu_count()} CPUs", "",
             "| method | rows | MB | seconds | rows/s | MB/s |", "|---|---:|---:|---:|---:|---:|",
             *(c.line() for c in copies), "",
             f"Load through the proxy: pgbench TPC-B-like, 2 clients, {args.load_rate} tx/s", "",
             "| phase | transactions | P50 ms | P99 ms |", "|---|---:|---:|---:|",
             *(lat.line() for lat in latencies)]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=300_000, help="extra history rows over the 20 shops")
    parser.add_argument("--no-tenant-index", action="store_true",
                        help="no index on (shop_id, key): every shop scans the tables whole")
    parser.add_argument("--jobs", type=int, default=4, help="shops backfilled at once")
    parser.add_argument("--load-rate", type=int, default=100, help="pgbench transactions per second")
    parser.add_argument("--load-seconds", type=int, default=10, help="seconds of load before and during")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    print(asyncio.run(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
