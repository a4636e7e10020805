"""Write mirroring: what capture costs the application, how far behind the mirror runs, how fast it drains.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/mirror_bench.py            # 3 rounds x 10 s, lag at 200 tps for 20 s, 10 s backlog
    python bench/mirror_bench.py --quick    # 1 round x 4 s: a smoke run

Method: two throwaway clusters on 127.0.0.1 (unified with the write-mirroring
test schema: 6 tenant tables of 20 shops with serial and identity ids,
``now()``/``gen_random_uuid()`` defaults, FK cascades and an application
trigger; one tenant server with the 20 shop databases provisioned by the
tenancy control plane). The workload is the TPC-B-like pgbench script of the
tests (per transaction: 3 updates, 1 insert plus the trigger's update, and now
and then an insert or delete of an account, a tag or a category), run
straight against unified.

1. **Lag** at a steady rate (``pgbench -R``), the mirror worker running in this
   process: the latency of every synced key, from capture (the entry's
   ``captured_at``) to the target's commit, exactly (P50, P99, max), plus the
   lag the status poller reported (what the router sees).
2. **Throughput**: capture on, no worker, pgbench at full speed builds a
   backlog; then the worker drains it: entries and rows per second.
3. **Capture overhead**: pgbench at full speed with capture off, capture on
   (no worker: the cost on unified's writers alone), and capture on with the
   worker running (the whole of dual-write on this machine), in rotating order
   each round, medians over rounds.

The clusters run with ``fsync = off`` and ``synchronous_commit = off`` (as the
test suite's): the workload is CPU-bound, the worst case for a relative
overhead. ``--durable`` turns both on, as production runs, where commits wait
for the disk and the same CPU cost weighs less. The machine may be shared
(other processes compete for the CPUs), so besides wall-clock TPS the runs
report the CPU seconds each party spent per transaction (from ``/proc``),
which other processes' load disturbs far less.

Results: a markdown table on stdout, the raw figures as JSON in
``bench/results/``. Passwords and the encryption key live in this process's
environment only and are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

import asyncpg

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.embedded import PgCluster, create_cluster
from pgtenantproxy.lifecycle.phases import MIRRORING
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.tenancy.service import TenancyService

REPO = Path(__file__).resolve().parent.parent
FILES = REPO / "tests" / "integration" / "dualwrite"
RESULTS = Path(__file__).resolve().parent / "results"
DATABASE = "shopdb"
APP_USER = "app_user"
SHOPS = list(range(1, 21))
TABLES = {"branches": "id", "tellers": "id", "accounts": "id", "history": "id",
          "account_tags": "account_id, tag", "categories": "id"}
ENV = {"unified": "PGTP_BENCH_UNIFIED_PASSWORD", "t1": "PGTP_BENCH_T1_PASSWORD",
       "key": "PGTP_BENCH_TENANT_KEY"}


@dataclass
class Run:
    """One pgbench run: wall-clock TPS, and the CPU seconds each party spent on it."""

    tps: float
    transactions: int
    unified_cpu: float  # the unified server (backends, and its background processes)
    client_cpu: float  # pgbench
    worker_cpu: float  # this process (the mirror worker, when it runs here)
    tenant_cpu: float  # the tenant server

    @property
    def writer_cpu_per_tx_ms(self) -> float:
        """What one transaction costs the writing side (unified + client), in CPU milliseconds."""
        return 1000 * (self.unified_cpu + self.client_cpu) / max(1, self.transactions)

    @property
    def unified_cpu_per_tx_ms(self) -> float:
        return 1000 * self.unified_cpu / max(1, self.transactions)

    @property
    def total_cpu_per_tx_ms(self) -> float:
        total = self.unified_cpu + self.client_cpu + self.worker_cpu + self.tenant_cpu
        return 1000 * total / max(1, self.transactions)


def cluster_cpu(cluster: PgCluster) -> float:
    """CPU seconds used by a cluster so far: postmaster, reaped children, live children (Linux /proc)."""
    try:
        pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        tick = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(child[1]) == pid:
                total += int(child[11]) + int(child[12])
        return total / tick
    except (OSError, ValueError):
        return float("nan")


def own_cpu() -> tuple[float, float]:
    """(this process, its finished children) CPU seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class Bed:
    def __init__(self, unified: PgCluster, tenant: PgCluster) -> None:
        self.unified = unified
        self.tenant = tenant
        self.app_password = secrets.token_urlsafe(16)
        os.environ.update({ENV["unified"]: unified.password, ENV["t1"]: tenant.password,
                           ENV["key"]: secrets.token_hex(32)})

    def config(self) -> Config:
        return parse_config({
            "unified": {"host": self.unified.host, "port": self.unified.port, "database": DATABASE,
                        "sslmode": "disable", "admin_user": self.unified.superuser,
                        "admin_password_env": ENV["unified"]},
            "tenancy": {"encryption_key_env": ENV["key"], "shops_query": "SELECT generate_series(1, 20)"},
            "tenant_servers": [{"name": "t1", "host": self.tenant.host, "port": self.tenant.port,
                                "admin_user": self.tenant.superuser, "admin_password_env": ENV["t1"],
                                "sslmode": "disable"}],
        }, environ={})

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.unified.connect_kwargs(database=DATABASE))

    async def psql(self, path: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            str(self.unified.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE,
            "-f", str(path),
            env=self.unified.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{path.name}: {err.decode()}")

    async def pgbench(self, seconds: float, *, clients: int, rate: int | None = None) -> Run:
        """Run the TPC-B-like script; TPS and CPU spent."""
        args = [str(self.unified.bindir / "pgbench"), "-n", "-T", str(int(seconds)), "-c", str(clients),
                "-j", str(min(clients, 2)), "-M", "prepared", "-f", str(FILES / "tpcb.pgbench")]
        if rate:
            args += ["-R", str(rate)]
        env = self.unified.env(user=APP_USER, password=self.app_password)
        unified_before, tenant_before, (me_before, kids_before) = (
            cluster_cpu(self.unified), cluster_cpu(self.tenant), own_cpu()
        )
        proc = await asyncio.create_subprocess_exec(*args, DATABASE, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        await asyncio.sleep(0.3)  # let the postmaster reap the backends, so their CPU is counted
        me_after, kids_after = own_cpu()
        text = out.decode()
        if proc.returncode:
            raise RuntimeError(f"pgbench failed: {err.decode()[-2000:]}")
        tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
        done = re.search(r"number of transactions actually processed: ([0-9]+)", text)
        if tps is None or done is None:
            raise RuntimeError(f"unexpected pgbench output: {text[-1000:]}")
        return Run(float(tps.group(1)), int(done.group(1)), cluster_cpu(self.unified) - unified_before,
                   kids_after - kids_before, me_after - me_before, cluster_cpu(self.tenant) - tenant_before)


DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


async def setup(*, durable: bool = False) -> Bed:
    settings = DURABLE if durable else None
    unified = create_cluster(settings=settings)
    try:
        tenant = create_cluster(settings=settings)
    except BaseException:
        unified.destroy()
        raise
    bed = Bed(unified, tenant)
    conn = await asyncpg.connect(**unified.connect_kwargs())
    try:
        await conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{bed.app_password}'")
        await conn.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await conn.close()
    await bed.psql(FILES / "schema.sql")
    async with await TenancyService.open(bed.config()) as tenancy:
        outcomes = await tenancy.provision_many(SHOPS, concurrency=4)
    if not all(o.ok for o in outcomes):
        raise RuntimeError(f"provisioning failed: {[o.error for o in outcomes if not o.ok]}")
    conn = await asyncpg.connect(**unified.connect_kwargs(database=DATABASE))
    try:  # the worker mirrors only shops whose tenant holds a complete copy: empty on both sides
        for shop in SHOPS:
            await force_phase(conn, shop, MIRRORING, reason="mirror bench: empty on both sides")
    finally:
        await conn.close()
    async with await DualWriteService.open(bed.config(), run_worker=True) as svc:
        await svc.enable()
        await bed.psql(FILES / "seed.sql")
        await svc.start()
        if not await svc.wait_drained(timeout_s=120):
            raise RuntimeError("the seed rows were not mirrored")
    return bed


async def identical(bed: Bed) -> bool:
    unified = await bed.admin()
    try:
        for shop in SHOPS:
            tenant = await asyncpg.connect(**bed.tenant.connect_kwargs(database=f"shop_{shop}_db"))
            try:
                for table, key in TABLES.items():
                    sql = f"SELECT to_jsonb(t)::text FROM {table} t WHERE shop_id = $1 ORDER BY {key}"
                    want = [r[0] for r in await unified.fetch(sql, shop)]
                    if want != [r[0] for r in await tenant.fetch(sql, shop)]:
                        return False
            finally:
                await tenant.close()
    finally:
        await unified.close()
    return True


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure_lag(bed: Bed, *, rate: int, seconds: float, clients: int) -> dict[str, Any]:
    async with await DualWriteService.open(bed.config(), run_worker=True) as svc:
        svc.stats.samples = []
        await svc.start()
        polled: list[float] = []

        async def watch() -> None:
            while True:
                polled.append(max(svc.status.lag_ms(s) for s in SHOPS))
                await asyncio.sleep(0.1)

        watcher = asyncio.get_running_loop().create_task(watch())
        run = await bed.pgbench(seconds, clients=clients, rate=rate)
        watcher.cancel()
        await svc.wait_drained(timeout_s=60)
        samples = [s * 1000 for s in svc.stats.samples]
        return {
            "rate_tps": rate, "achieved_tps": run.tps, "keys_synced": len(samples),
            "lag_p50_ms": percentile(samples, 0.5), "lag_p99_ms": percentile(samples, 0.99),
            "lag_max_ms": max(samples, default=0.0),
            "status_lag_p50_ms": percentile(polled, 0.5), "status_lag_p99_ms": percentile(polled, 0.99),
            "identical": await identical(bed),
        }


async def measure_throughput(bed: Bed, *, seconds: float, clients: int) -> dict[str, Any]:
    run = await bed.pgbench(seconds, clients=clients)  # capture on, no worker: a backlog
    admin = await bed.admin()
    try:
        entries = int(await admin.fetchval("SELECT count(*) FROM pgtenantproxy.outbox"))
        keys = int(await admin.fetchval("SELECT count(DISTINCT (tbl, pk)) FROM pgtenantproxy.outbox"))
    finally:
        await admin.close()
    async with await DualWriteService.open(bed.config(), run_worker=True) as svc:
        started = time.monotonic()
        cpu_before = own_cpu()[0]
        await svc.start()
        await svc.wait_drained(timeout_s=600, poll_s=0.02)
        elapsed = time.monotonic() - started
        worker_cpu = own_cpu()[0] - cpu_before
        rows = svc.stats.rows_upserted + svc.stats.rows_deleted
    return {
        "backlog_tps": run.tps, "worker_cpu_s": worker_cpu, "entries": entries, "distinct_keys": keys,
        "drain_s": elapsed,
        "entries_per_s": entries / elapsed, "rows_per_s": rows / elapsed, "identical": await identical(bed),
    }


async def measure_overhead(bed: Bed, *, rounds: int, seconds: float, clients: int) -> dict[str, Any]:
    modes = ["off", "capture", "capture+worker"]
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes[r % 3:] + modes[: r % 3]:
            async with await DualWriteService.open(bed.config(), run_worker=True) as svc:
                await (svc.disable() if mode == "off" else svc.enable())
                await _vacuum(bed)
                if mode == "capture+worker":
                    await svc.start()
                runs[mode].append(await bed.pgbench(seconds, clients=clients))
                if mode != "capture+worker":
                    await svc.start()  # drain what the run left before the next one
                await svc.wait_drained(timeout_s=300)
    median = {m: statistics.median(r.tps for r in v) for m, v in runs.items()}
    writer = {m: statistics.median(r.writer_cpu_per_tx_ms for r in v) for m, v in runs.items()}
    total = {m: statistics.median(r.total_cpu_per_tx_ms for r in v) for m, v in runs.items()}
    server = {m: statistics.median(r.unified_cpu_per_tx_ms for r in v) for m, v in runs.items()}
    return {
        "rounds": rounds, "seconds": seconds, "clients": clients,
        "runs": {m: [asdict(r) for r in v] for m, v in runs.items()},
        "median_tps": median, "writer_cpu_ms_per_tx": writer, "total_cpu_ms_per_tx": total,
        "unified_cpu_ms_per_tx": server,
        "loss_capture_pct": 100 * (1 - median["capture"] / median["off"]),
        "loss_capture_worker_pct": 100 * (1 - median["capture+worker"] / median["off"]),
        "cpu_loss_capture_pct": 100 * (1 - writer["off"] / writer["capture"]),
        "cpu_loss_capture_worker_pct": 100 * (1 - total["off"] / total["capture+worker"]),
    }


async def _vacuum(bed: Bed) -> None:
    admin = await bed.admin()
    try:
        await admin.execute("VACUUM ANALYZE")
    finally:
        await admin.close()


def report(results: dict[str, Any]) -> str:
    lag, thr, ovh = results["lag"], results["throughput"], results["overhead"]
    med, cpu, tot = ovh["median_tps"], ovh["writer_cpu_ms_per_tx"], ovh["total_cpu_ms_per_tx"]
    srv = ovh["unified_cpu_ms_per_tx"]
    runs = f"median of {ovh['rounds']} x {ovh['seconds']:.0f} s, {ovh['clients']} clients"
    lines = [
        "| measure | value |", "|---|---|",
        f"| TPS capture off / on / on + worker ({runs}) "
        f"| {med['off']:.0f} / {med['capture']:.0f} / {med['capture+worker']:.0f} |",
        f"| TPS loss, capture on / capture on + worker (wall clock, shared machine) "
        f"| {ovh['loss_capture_pct']:.1f}% / {ovh['loss_capture_worker_pct']:.1f}% |",
        f"| CPU per transaction on the writing side (unified + pgbench), off / on "
        f"| {cpu['off']:.3f} / {cpu['capture']:.3f} ms: "
        f"{ovh['cpu_loss_capture_pct']:.1f}% fewer TPS when CPU-bound |",
        f"| CPU per transaction of the unified server, off / capture / capture + worker "
        f"| {srv['off']:.3f} / {srv['capture']:.3f} / {srv['capture+worker']:.3f} ms |",
        f"| CPU per transaction, everything (unified, pgbench, worker, tenant), off / on + worker "
        f"| {tot['off']:.3f} / {tot['capture+worker']:.3f} ms: {ovh['cpu_loss_capture_worker_pct']:.1f}% |",
        f"| mirror lag at {lag['rate_tps']} tps ({lag['keys_synced']} keys synced) P50 / P99 / max "
        f"| {lag['lag_p50_ms']:.0f} / {lag['lag_p99_ms']:.0f} / {lag['lag_max_ms']:.0f} ms |",
        f"| lag seen by the router (status poller, worst of 20 shops) P50 / P99 "
        f"| {lag['status_lag_p50_ms']:.0f} / {lag['status_lag_p99_ms']:.0f} ms |",
        f"| drain of a {thr['entries']}-entry backlog ({thr['distinct_keys']} distinct keys) "
        f"| {thr['drain_s']:.1f} s: {thr['entries_per_s']:.0f} entries/s, {thr['rows_per_s']:.0f} rows/s |",
        f"| tenants identical to unified after the lag / drain runs "
        f"| {lag['identical']} / {thr['identical']} |",
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    bed = await setup(durable=args.durable)
    try:
        clients = args.clients
        lag = await measure_lag(bed, rate=args.rate, seconds=args.lag_seconds, clients=clients)
        throughput = await measure_throughput(bed, seconds=args.backlog_seconds, clients=clients)
        overhead = await measure_overhead(bed, rounds=args.rounds, seconds=args.duration, clients=clients)
    finally:
        bed.unified.destroy()
        bed.tenant.destroy()
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
               "load_average": os.getloadavg(), "durable": args.durable}
    return {"lag": lag, "throughput": throughput, "overhead": overhead, "machine": machine}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per overhead run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=int, default=200, help="tps of the steady-rate lag run")
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--backlog-seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="1 round of 4 s, short lag and backlog runs")
    parser.add_argument("--durable", action="store_true",
                        help="fsync and synchronous_commit on (default: off, as in the tests: CPU-bound)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration, args.lag_seconds, args.backlog_seconds = 1, 4.0, 6.0, 4.0
    return args


if __name__ == "__main__":
    arguments = parse_args()
    outcome = asyncio.run(main(arguments))
    print(report(outcome))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"mirror-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(outcome, indent=2))
    print(f"\nraw figures: {path.relative_to(REPO)}")
