"""Federated reads over cut-over shops, and reference-table fan-out per global write.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/federation_bench.py            # 100 shops (10 then 100 cut over), 2 rounds x 5 s (~10 min)
    python bench/federation_bench.py --quick    # 30 shops (10 then 30), 1 round x 2 s: a smoke run (~2 min)
    python bench/federation_bench.py --parts 1  # federated reads only
    python bench/federation_bench.py --parts 2  # reference-table sync only (~1 min)

Two throwaway clusters on 127.0.0.1: unified (database ``bench_shops``) and one
tenant server. Unified holds ``orders(id bigserial primary key, shop_id int,
n int, price numeric(10,2))``, ``--rows-per-shop`` rows for each of
``--shops`` shops, and the global table ``shops(id int primary key, name
text)``. Before anything is migrated, ``bench_base`` is made from it
(``CREATE DATABASE ... TEMPLATE``): the baseline, an unmigrated copy of the
same data. The shops are provisioned by the tenancy control plane and their
rows copied to their tenant databases.

1. **Federated reads.** Two set-ups in one run: first ``--first`` shops (10)
   are forced to ``tenant_primary`` and federated
   (:func:`pgtenantproxy.migration.federation.federate_shop`: postgres_fdw
   server, read-only reader, foreign tables), then every shop. For each, one
   ``python -m pgtenantproxy serve`` (``strategy = "unified"``, ``[federation]
   max_shops_per_query`` = ``--max-shops-per-query``, ``[metrics]`` on) and
   pgbench custom scripts (``-M extended``, ``-c 4 -j 2`` and ``-c 1``), each
   run twice per round: through the proxy on the migrated database
   (*federated*) and directly on ``bench_base`` (*baseline*), the order
   rotating per round:

   * ``aggregate``: ``SELECT shop_id, count(*), sum(price) FROM orders GROUP
     BY shop_id`` (every shop);
   * ``join_one``: one cut-over shop's orders joined with ``shops``, ``ORDER
     BY o.id LIMIT 20``;
   * ``in_list_3``: three distinct cut-over shops, ``ORDER BY price DESC, id
     LIMIT 20``.

   Each pgbench client's first transaction reads every shop once (a client
   variable set by ``-D warm=0``): a new unified session opens one
   postgres_fdw connection per shop it reads, and the measured window must
   not include that. Only transactions that complete within the window
   (``--warmup`` s after the start, ``--duration`` s long; from pgbench's
   per-transaction log) count: TPS, P50/P95/P99. CPU: utime + stime of the
   unified cluster (its postmaster's children, read from ``/proc`` at the
   window's ends, plus the postmaster's reaped children), of the tenant
   cluster (the foreign scans' remote side) and of the proxy, per query, net
   of the idle background (sampled for ``--idle`` s with no client: the
   proxy's phase keeper and catalog refresh, the servers' own work).
   Ratios federated / baseline are taken within each round; the median over
   rounds is reported. Per set-up also: the answers compared (proxy vs
   baseline), the text the proxy actually sent to unified (captured from
   unified's log for a probe role with ``log_statement = all``), its
   ``EXPLAIN (ANALYZE, VERBOSE)`` (Append or Merge Append, foreign scans,
   *Async* foreign scans), its execution time on unified with the foreign
   servers' ``async_capable`` on and off, the same for the text with the
   guard moved into a union arm of its own (:func:`guard_as_arm`), whether
   each refuses a REPEATABLE READ transaction, and the first aggregate of a
   new session (which opens the foreign connections).
2. **Reference-table fan-out** (:class:`~pgtenantproxy.migration.reference.ReferenceSync`):
   a reference table of ``--ref-rows`` rows copied to every
   shop's database; per round ``N`` single-row updates on unified (N in
   ``--ref-updates``), then one ``ReferenceSync.run_once()`` timed, with
   unified's, the tenant server's and this process's CPU (the sync runs
   here); the copies' lag checked with ``reference_lag`` afterwards and their
   content against unified's at the end. Cost per global write per shop =
   time / (N x shops).

Results: markdown tables on stdout, the raw figures as JSON in
``bench/results/federation-YYYYMMDD-HHMMSS.json``. Passwords and the
encryption key live in this process's environment and its children's only,
never printed, never on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgbench_compare import _stop_on_signals
from routing_bench import (
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
from pgtenantproxy.embedded import PgCluster, create_cluster, free_port
from pgtenantproxy.lifecycle.federation import server_name
from pgtenantproxy.lifecycle.phases import TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration.federation import federate_shop
from pgtenantproxy.tenancy.service import TenancyService

RESULTS = Path(__file__).resolve().parent / "results"
BASE_DB = "bench_base"
PROBE_ROLE = "bench_probe"
ENV_PROBE = "BENCH_FEDERATION_PROBE_PW"
CLIENTS = (4, 1)
TARGETS = ("federated", "baseline")
REF_TABLE = "public.device_models"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def schema(shops: int, rows_per_shop: int) -> str:
    return f"""
SELECT setseed(0.42);
CREATE TABLE shops (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO shops SELECT s, 'shop ' || s FROM generate_series(1, {shops}) AS s;
CREATE TABLE orders (id bigserial PRIMARY KEY, shop_id int NOT NULL, n int NOT NULL DEFAULT 0,
                     price numeric(10,2));
INSERT INTO orders (shop_id, n, price)  -- ids interleaved over the shops, as orders arrive in an app
SELECT s, i, round((random() * 500)::numeric, 2)
FROM generate_series(1, {rows_per_shop}) AS i, generate_series(1, {shops}) AS s ORDER BY i, s;
CREATE INDEX orders_shop_id ON orders (shop_id);
"""


# -- the queries ------------------------------------------------------------------------------------

#: Each client's first transaction (``-D warm=0``): every shop once, so that the unified session behind
#: it has opened its postgres_fdw connections before the measured window.
WARM = "SELECT count(*) FROM orders;"

AGGREGATE = "SELECT shop_id, count(*), sum(price) FROM orders GROUP BY shop_id"
JOIN_ONE = ("SELECT o.id, s.name FROM orders o JOIN shops s ON s.id = o.shop_id WHERE o.shop_id = {s} "
            "ORDER BY o.id LIMIT 20")
IN_LIST = ("SELECT id, shop_id, price FROM orders WHERE shop_id IN ({a}, {b}, {c}) "
           "ORDER BY price DESC, id LIMIT 20")


@dataclass(frozen=True)
class Query:
    name: str
    label: str
    sql: str  # with pgbench variables
    sets: str  # pgbench \set lines choosing the shops
    probe: dict[str, int]  # fixed shops for the answer check and the probe


def queries(moved: int) -> list[Query]:
    """The three reads; the shops they name are among the ``moved`` (cut-over) shops 1..moved."""
    half = moved // 2
    return [
        Query("aggregate", "aggregate over all shops", AGGREGATE, "", {}),
        Query("join_one", "one shop joined with shops, LIMIT 20", JOIN_ONE.format(s=":s"),
              f"\\set s random(1, {moved})\n", {"s": 2}),
        Query("in_list_3", "IN-list of 3 shops, ORDER BY price LIMIT 20",
              IN_LIST.format(a=":a", b=":b", c=":c"),
              # three distinct shops: offsets 0 < b < c < moved from a random start
              f"\\set r random(0, {moved - 1})\n\\set ob random(1, {half - 1})\n"
              f"\\set oc random({half}, {moved - 1})\n\\set a 1 + :r\n\\set b 1 + (:r + :ob) % {moved}\n"
              f"\\set c 1 + (:r + :oc) % {moved}\n", {"a": 1, "b": 3, "c": moved}),
    ]


def pgbench_script(q: Query) -> str:
    return f"\\if :warm = 0\n\\set warm 1\n{WARM}\n\\else\n{q.sets}{q.sql};\n\\endif\n"


def literal_sql(q: Query) -> str:
    """The query with its probe shops as literals (the answer check)."""
    sql = q.sql
    for name, value in q.probe.items():
        sql = sql.replace(f":{name}", str(value))
    return sql


# -- CPU of a cluster -------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan /proc
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            fields = _stat_fields(int(stat.parent.name))
            if fields and len(fields) > 1 and fields[1] == str(pid):
                out.append(int(stat.parent.name))
        return out


def postmaster_pid(cluster: PgCluster) -> int:
    return int((cluster.datadir / "postmaster.pid").read_text().split()[0])


def cluster_cpu(pid: int) -> tuple[float, int]:
    """(CPU seconds of the cluster so far, live server processes): utime + stime of every child of the
    postmaster ``pid``, plus the postmaster's own and its reaped children's (cutime + cstime: parallel
    workers and backends that exited). The children first, the postmaster last: a child reaped in between
    is counted in the postmaster's cutime."""
    kids = _children(pid)
    ticks = 0
    for kid in kids:
        fields = _stat_fields(kid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
    fields = _stat_fields(pid)
    if fields:
        ticks += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK, len(kids)


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- set-up -----------------------------------------------------------------------------------------

@dataclass
class Bed:
    unified: PgCluster
    tenant: PgCluster
    data: dict[str, Any]
    shops: int
    rows_per_shop: int
    moved: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def unified_pid(self) -> int:
        return postmaster_pid(self.unified)

    @property
    def tenant_pid(self) -> int:
        return postmaster_pid(self.tenant)


def setup(args: argparse.Namespace, clusters: list[PgCluster]) -> Bed:
    """The clusters (appended to ``clusters`` as they start: the caller destroys them), the data, the
    baseline copy, the probe role, the shops provisioned and copied."""
    shops = args.shops
    print("starting a unified and a tenant cluster", file=sys.stderr, flush=True)
    clusters.append(create_cluster(settings={"max_connections": "100", "shared_buffers": "128MB"}))
    # each unified session opens one postgres_fdw connection per shop it reads
    clusters.append(create_cluster(settings={"max_connections": str(8 * shops + 100),
                                             "shared_buffers": "128MB"}))
    unified, tenant = clusters
    t0 = time.monotonic()
    os.environ[ENV_UNIFIED], os.environ[ENV_T1] = unified.password, tenant.password
    os.environ[ENV_KEY] = secrets.token_hex(32)
    os.environ[ENV_PROBE] = secrets.token_urlsafe(18)
    print(f"loading {shops} x {args.rows_per_shop} orders", file=sys.stderr, flush=True)
    psql(unified, f"CREATE DATABASE {DATABASE}")
    psql(unified, schema(shops, args.rows_per_shop), dbname=DATABASE)
    psql(unified, "VACUUM ANALYZE", dbname=DATABASE)
    psql(unified, f"CREATE DATABASE {BASE_DB} TEMPLATE {DATABASE}")  # the unmigrated copy
    psql(unified, "VACUUM ANALYZE", dbname=BASE_DB)
    # the probe role: its statements are logged on unified (what the proxy sends for it). Granted before
    # federation, so the foreign tables grant it SELECT too (they follow unified's grants).
    asyncio.run(_create_probe_role(unified))
    bed = Bed(unified, tenant, config_data(unified, tenant, shops), shops, args.rows_per_shop)
    bed.timings["load_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    print(f"provisioning {shops} shops and copying their rows", file=sys.stderr, flush=True)
    asyncio.run(provision(bed.data, list(range(1, shops + 1))))
    bed.timings["provision_and_copy_s"] = time.monotonic() - t1
    return bed


async def _create_probe_role(unified: PgCluster) -> None:
    conn = await asyncpg.connect(**unified.connect_kwargs(database=DATABASE))
    try:
        password = os.environ[ENV_PROBE].replace("'", "''")
        await conn.execute(f"CREATE ROLE {PROBE_ROLE} LOGIN PASSWORD '{password}'")
        await conn.execute(f"GRANT SELECT ON orders, shops TO {PROBE_ROLE}")
        await conn.execute(f"ALTER ROLE {PROBE_ROLE} SET log_statement = 'all'")
    finally:
        await conn.close()


async def cut_over(bed: Bed, shops: list[int]) -> float:
    """``shops`` to tenant_primary (their databases analysed, as after a backfill) and federated; seconds
    spent federating."""
    federating = 0.0
    async with await TenancyService.open(parse_config(bed.data)) as svc:
        async with svc.pool.acquire() as control:
            for shop in shops:
                creds = await svc.credentials(shop)
                conn = await asyncpg.connect(host=creds.host, port=creds.port, user=bed.tenant.superuser,
                                             password=bed.tenant.password, database=creds.database)
                try:
                    await conn.execute("ANALYZE")
                finally:
                    await conn.close()
                await force_phase(control, shop, TENANT_PRIMARY, reason="federation bench")
        t0 = time.monotonic()
        for shop in shops:
            await federate_shop(svc, shop)
        federating = time.monotonic() - t0
    bed.moved = sorted(set(bed.moved) | set(shops))
    return federating


# -- the proxy --------------------------------------------------------------------------------------

def start_proxy(bed: Bed, max_shops: int) -> tuple[Service, int, Path]:
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-federation-"))
    port, metrics_port = free_port(), free_port()
    sections = proxy_sections(bed.data, port, "unified")
    sections["federation"] = {"max_shops_per_query": max_shops}
    sections["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    config = workdir / "config.toml"
    config.write_text(to_toml(sections))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    service = Service(proc, workdir, [Target("federated", port, DATABASE, pid=proc.pid)])
    try:
        wait_listening("proxy", port, proc, log, timeout=60)
        deadline = time.monotonic() + 30
        while True:
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


def scrape(port: int) -> dict[str, float]:
    """The routing decision counters: {"federated": n, "federation_refused": n, "other": n}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {"federated": 0.0, "federation_refused": 0.0, "other": 0.0}
    for line in text.splitlines():
        if not line.startswith("pgtenantproxy_routing_decisions_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        reason = re.search(r'reason="([^"]*)"', labels)
        key = reason.group(1) if reason and reason.group(1) in out else "other"
        out[key] += float(value)
    return out


def proxy_problems(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    wanted = (" ERROR ", " WARNING ", "Traceback")
    return [line[:300] for line in lines if any(w in line for w in wanted)][:10]


# -- pgbench runs -----------------------------------------------------------------------------------

@dataclass
class Run:
    setup: str
    query: str
    target: str
    clients: int
    round: int
    tps: float
    transactions: int  # completed within the window
    window_s: float
    p50_us: float
    p95_us: float
    p99_us: float
    unified_cpu_ms: float  # per query
    tenant_cpu_ms: float
    proxy_cpu_ms: float | None
    tenant_processes: int  # the tenant server's processes at the end of the window
    raw_cpu_s: dict[str, float]  # CPU seconds in the window, before the background is subtracted
    decisions: dict[str, float]
    failed: int
    warm_up_overran: int  # clients whose first (warm-up) transaction ended inside the window
    latencies_us: list[int] = field(default_factory=list, repr=False)


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def idle_rates(bed: Bed, proxy_pid: int, seconds: float) -> dict[str, float]:
    """CPU seconds per second of the proxy and both clusters with no client at all: the proxy's phase
    keeper (federation refresh, reference sync, id blocks), its catalog refresh, the servers' own
    background work. Subtracted from every run's CPU before it is divided by the queries."""
    def sample() -> tuple[float, float, float, float]:
        return (cluster_cpu(bed.unified_pid)[0], cluster_cpu(bed.tenant_pid)[0], cpu_seconds(proxy_pid),
                time.monotonic())

    u0, t0, p0, w0 = sample()
    time.sleep(seconds)
    u1, t1, p1, w1 = sample()
    return {"unified": (u1 - u0) / (w1 - w0), "tenant": (t1 - t0) / (w1 - w0), "proxy": (p1 - p0) / (w1 - w0),
            "seconds": w1 - w0}


def run_pgbench(bed: Bed, setup_name: str, q: Query, target: str, port: int, clients: int,
                args: argparse.Namespace, logdir: Path, proxy_pid: int | None,
                metrics_port: int | None, background: dict[str, float]) -> Run:
    script = logdir / f"{q.name}.sql"
    script.write_text(pgbench_script(q))
    prefix = logdir / f"{q.name}-{target}-{time.monotonic_ns()}"
    total = math.ceil(args.warmup + args.duration + 0.3)
    db = DATABASE if target == "federated" else BASE_DB
    cmd = [pgbench_path(bed.unified), "-n", "-M", "extended", "-c", str(clients), "-j", str(min(2, clients)),
           "-T", str(total), "-D", "warm=0", "-f", str(script), "-l", f"--log-prefix={prefix}",
           "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db]
    before_metrics = scrape(metrics_port) if metrics_port else {}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=bed.unified.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=logdir)
    try:
        a = t0 + args.warmup
        _sleep_until(a)
        a = time.time()
        u0, _ = cluster_cpu(bed.unified_pid)
        t_0, _ = cluster_cpu(bed.tenant_pid)
        p0 = cpu_seconds(proxy_pid) if proxy_pid else 0.0
        _sleep_until(a + args.duration)
        b = time.time()
        u1, _ = cluster_cpu(bed.unified_pid)
        t_1, tenant_procs = cluster_cpu(bed.tenant_pid)
        p1 = cpu_seconds(proxy_pid) if proxy_pid else 0.0
        _out, err = proc.communicate(timeout=total + 120)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    after_metrics = scrape(metrics_port) if metrics_port else {}
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench {q.name} against {target} failed ({proc.returncode}):\n{err[-2000:]}")
    latencies: list[int] = []
    failed = 0
    first_done: dict[str, float] = {}
    for path in logdir.glob(f"{prefix.name}.*"):
        for line in path.read_text().splitlines():
            cols = line.split()
            if len(cols) < 6:
                continue
            done = int(cols[4]) + int(cols[5]) / 1e6
            client = f"{path.name}:{cols[0]}"
            if cols[1] == "0":
                first_done[client] = done
            if not a <= done <= b:
                continue
            if not cols[2].isdigit():
                failed += 1
                continue
            latencies.append(int(cols[2]))
        path.unlink()
    latencies.sort()
    n = len(latencies)

    def per(cpu: float, who: str) -> float:  # ms per query, net of the idle background
        return (cpu - background.get(who, 0.0) * (b - a)) * 1000 / n if n else float("nan")

    return Run(setup_name, q.name, target, clients, 0, n / (b - a), n, b - a,
               percentile(latencies, 0.50), percentile(latencies, 0.95), percentile(latencies, 0.99),
               per(u1 - u0, "unified"), per(t_1 - t_0, "tenant"),
               per(p1 - p0, "proxy") if proxy_pid else None,
               tenant_procs, {"unified": u1 - u0, "tenant": t_1 - t_0, "proxy": p1 - p0},
               {k: after_metrics.get(k, 0.0) - before_metrics.get(k, 0.0) for k in after_metrics},
               failed, sum(1 for d in first_done.values() if d > a), latencies)


# -- probes: answers, the text unified runs, EXPLAIN, async on/off, a new session ------------------

def via_psql(cluster: PgCluster, port: int, db: str, sql: str, *, user: str = "postgres",
             password: str | None = None) -> str:
    result = subprocess.run([str(cluster.bindir / "psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h",
                             "127.0.0.1", "-p", str(port), "-U", user, "-d", db, "-c", sql],
                            env=cluster.env(user=user, password=password), capture_output=True, text=True,
                            timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"psql: {result.stderr.strip()[:500]}")
    return result.stdout


_LOG_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_EXECUTE = re.compile(r"LOG:  execute [^:]*: (.*)$")
_PARAMS = re.compile(r"DETAIL:  parameters: (.*)$")


def captured_statement(bed: Bed, q: Query, port: int, logdir: Path) -> tuple[str, list[str]]:
    """Run ``q`` once through the proxy as the probe role (pgbench, -M extended, as the workload does)
    and read from unified's log what the proxy sent to unified: (text, parameter values)."""
    log = bed.unified.logfile
    offset = log.stat().st_size
    script = logdir / f"probe-{q.name}.sql"
    sets = "".join(f"\\set {k} {v}\n" for k, v in q.probe.items())
    script.write_text(f"{sets}{q.sql};\n")
    subprocess.run([pgbench_path(bed.unified), "-n", "-M", "extended", "-c", "1", "-t", "1", "-f",
                    str(script), "-h", "127.0.0.1", "-p", str(port), "-U", PROBE_ROLE, DATABASE],
                   env=bed.unified.env(user=PROBE_ROLE, password=os.environ[ENV_PROBE]), capture_output=True,
                   text=True, check=True, timeout=300, cwd=logdir)
    time.sleep(0.3)  # the logger process writes asynchronously
    with open(log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    found: list[tuple[str, list[str]]] = []
    for i, line in enumerate(lines):
        m = _EXECUTE.search(line)
        if not m:
            continue
        text = [m.group(1)]
        params: list[str] = []
        for nxt in lines[i + 1:]:
            if not _LOG_START.match(nxt):
                text.append(nxt.strip())
                continue
            p = _PARAMS.search(nxt)
            if p:
                params = [v.split(" = ", 1)[1].strip("'") for v in re.split(r", (?=\$\d+ = )", p.group(1))]
            break
        found.append((" ".join(text), params))
    federated = [f for f in found if "pgtenantproxy_federated" in f[0]]
    if not federated:
        raise RuntimeError(f"{q.name}: no federated statement found in unified's log "
                           f"(saw {len(found)} statements of the probe role)")
    return federated[-1]


GUARD_FILTER = " WHERE pgtenantproxy_fdw.read_committed())"
_UNION_START = re.compile(r"\(SELECT \* FROM \(SELECT ((?:\"[^\"]+\"(?:, )?)+) FROM ([\w.\"]+) WHERE ")


def guard_as_arm(sql: str) -> str:
    """The proxy's text with the guard moved out of the filter over the union into a union arm of its
    own, first: ``SELECT <cols> FROM <unified's table> WHERE NOT guard()``. The foreign scans are then
    direct children of the Append (candidates for async execution; the filter puts a gating Result over
    each of them). The arm reads unified's table, so that the outer query's conditions pushed into it
    are row filters and cannot fold the arm away (a constant arm would be), and the guard stays a
    one-time filter: the table is never scanned while it holds."""
    def arm(m: re.Match[str]) -> str:
        cols, table = m.group(1), m.group(2)
        return (f"(SELECT * FROM (SELECT {cols} FROM {table} WHERE NOT pgtenantproxy_fdw.read_committed() "
                f"UNION ALL SELECT {cols} FROM {table} WHERE ")
    out = _UNION_START.sub(arm, sql)
    return out.replace(") AS pgtenantproxy_federated" + GUARD_FILTER, ") AS pgtenantproxy_federated)")


_UNIFIED_SCAN = re.compile(r"(?:Seq|Index|Bitmap Heap) Scan (?:using \S+ )?on public\.orders .*"
                           r"actual time=[\d.]+\.\.([\d.]+)")


def plan_facts(plan: str) -> dict[str, Any]:
    lines = plan.splitlines()
    nodes = [ln.strip().lstrip("-> ").split("  (")[0] for ln in lines if "(actual" in ln or "(never" in ln]
    return {
        "plan": plan,
        "top_nodes": nodes[:4],
        "append": "Merge Append" if any(n.startswith("Merge Append") for n in nodes)
        else ("Append" if any(n.startswith(("Append", "Async Append")) for n in nodes) else "-"),
        "foreign_scans": sum(1 for n in nodes if "Foreign Scan" in n),
        "async_foreign_scans": sum(1 for n in nodes if n.startswith("Async Foreign Scan")),
        "execution_ms": next((float(m.group(1)) for m in (re.search(r"Execution Time: ([\d.]+)", ln)
                                                           for ln in lines) if m), float("nan")),
        "parallel": any("Gather" in n for n in nodes),
        # unified's own arm: the scan of its (stale) copy of the rows, cut-over shops filtered out
        "unified_arm_ms": next((float(m.group(1)) for m in map(_UNIFIED_SCAN.search, lines) if m), 0.0),
    }


async def _set_async(conn: asyncpg.Connection, shops: list[int], on: bool) -> None:
    for shop in shops:
        await conn.execute(f"ALTER SERVER {server_name(shop)} OPTIONS (SET async_capable "
                           f"'{'true' if on else 'false'}')")


async def explain(bed: Bed, sql: str, params: list[str], reps: int) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, VERBOSE) of the text unified runs (as a prepared statement with the same
    parameters), and its execution time on unified (median of ``reps``) with the foreign servers'
    ``async_capable`` on and off; the same for :func:`guard_as_arm` of it, which must still refuse a
    REPEATABLE READ transaction."""
    variants = {"sent": sql, "guard_arm": guard_as_arm(sql)}
    args = f"({', '.join(literal(p) for p in params)})" if params else ""
    out: dict[str, Any] = {}
    conn = await asyncpg.connect(**bed.unified.connect_kwargs(database=DATABASE))
    try:
        for name, text in variants.items():
            await conn.execute(f"PREPARE {name} AS {text}")
            await conn.execute(f"EXECUTE {name}{args}")  # the foreign connections opened
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, VERBOSE) EXECUTE {name}{args}")
            plan = "\n".join(r[0] for r in rows)
            out[name] = plan_facts(plan) | {"text": text}
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(reps):  # off and on alternate, the variants interleaved within each
            for on in (False, True):  # ends as federate_shop leaves it: on
                await _set_async(conn, bed.moved, on)
                for name in variants:  # a changed server option drops the cached connections: reconnect
                    await conn.execute(f"EXECUTE {name}{args}")
                for name in variants:
                    t0 = time.perf_counter()
                    await conn.execute(f"EXECUTE {name}{args}")
                    times.setdefault((name, on), []).append((time.perf_counter() - t0) * 1000)
        for (name, on), values in times.items():
            out[name]["async_on_ms" if on else "async_off_ms"] = statistics.median(values)
        for name in variants:  # the guard refuses a snapshot that would have to span databases
            try:
                async with conn.transaction(isolation="repeatable_read"):
                    await conn.execute(f"EXECUTE {name}{args}")
                out[name]["refuses_repeatable_read"] = False
            except asyncpg.FeatureNotSupportedError:
                out[name]["refuses_repeatable_read"] = True
        await conn.execute("DEALLOCATE ALL")
    finally:
        await conn.close()
    return out


def literal(value: str) -> str:
    return value if re.fullmatch(r"-?\d+", value) else "'" + value.replace("'", "''") + "'"


async def base_plan(bed: Bed, q: Query) -> dict[str, Any]:
    conn = await asyncpg.connect(**bed.unified.connect_kwargs(database=BASE_DB))
    try:
        sql = literal_sql(q)
        await conn.execute(sql)
        lines = [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE) {sql}")]
    finally:
        await conn.close()
    nodes = [ln.strip().lstrip("-> ").split("  (")[0] for ln in lines if "(actual" in ln]
    return {"top_nodes": nodes[:4], "execution_ms": next(
        (float(m.group(1)) for m in (re.search(r"Execution Time: ([\d.]+)", ln) for ln in lines) if m),
        float("nan"))}


async def cold_session(bed: Bed, port: int, reps: int = 3) -> dict[str, float]:
    """The first aggregate of a new session through the proxy (it opens one foreign connection per shop
    read) against the next ones."""
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password=bed.unified.password,
                                 database=DATABASE, statement_cache_size=0)
    try:
        t0 = time.perf_counter()
        await conn.execute(AGGREGATE)
        first = (time.perf_counter() - t0) * 1000
        warm = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await conn.execute(AGGREGATE)
            warm.append((time.perf_counter() - t0) * 1000)
    finally:
        await conn.close()
    return {"first_ms": first, "warm_ms": statistics.median(warm)}


def check_answers(bed: Bed, qs: list[Query], port: int) -> dict[str, bool]:
    out = {}
    for q in qs:
        sql = literal_sql(q)
        if q.name == "aggregate":
            sql += " ORDER BY shop_id"
        got = via_psql(bed.unified, port, DATABASE, sql)
        want = via_psql(bed.unified, bed.unified.port, BASE_DB, sql)
        out[q.name] = got == want and bool(want.strip())
    return out


# -- part 1 -----------------------------------------------------------------------------------------

def part1(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    stages = [args.first, bed.shops]
    runs: list[Run] = []
    setups: list[dict[str, Any]] = []
    logdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-federation-log-"))
    try:
        for moved in stages:
            name = f"{moved} shops cut over"
            print(f"part 1: {name}: cut over and federate shops {len(bed.moved) + 1}-{moved}",
                  file=sys.stderr, flush=True)
            fed_s = asyncio.run(cut_over(bed, list(range(len(bed.moved) + 1, moved + 1))))
            print(f"  federated in {fed_s:.1f} s", file=sys.stderr, flush=True)
            qs = queries(moved)
            service, metrics_port, proxy_log = start_proxy(bed, args.max_shops_per_query)
            info: dict[str, Any] = {"name": name, "moved": moved, "federate_s": fed_s, "queries": {}}
            try:
                port, pid = service.targets[0].port, service.proc.pid
                info["answers_equal"] = check_answers(bed, qs, port)
                print(f"  answers equal to the baseline: {info['answers_equal']}", file=sys.stderr,
                      flush=True)
                for q in qs:
                    sent, params = captured_statement(bed, q, port, logdir)
                    ex = asyncio.run(explain(bed, sent, params, args.explain_reps))
                    x = {"sent": sent, "params": params, "sent_chars": len(sent), "plan": ex["sent"],
                         "guard_arm": ex["guard_arm"], "base": asyncio.run(base_plan(bed, q))}
                    info["queries"][q.name] = x
                    pl, ga = x["plan"], x["guard_arm"]
                    print(f"  {q.name}: {pl['append']}, {pl['foreign_scans']} foreign scans, "
                          f"{pl['async_foreign_scans']} async; {pl['async_on_ms']:.1f} ms (async off "
                          f"{pl['async_off_ms']:.1f}); guard as an arm: {ga['async_foreign_scans']} async, "
                          f"{ga['async_on_ms']:.1f} ms (off {ga['async_off_ms']:.1f}), refuses RR: "
                          f"{ga['refuses_repeatable_read']}; baseline {x['base']['execution_ms']:.1f} ms",
                          file=sys.stderr, flush=True)
                info["cold_session"] = asyncio.run(cold_session(bed, port))
                print(f"  new session: first aggregate {info['cold_session']['first_ms']:.0f} ms, then "
                      f"{info['cold_session']['warm_ms']:.0f} ms", file=sys.stderr, flush=True)
                info["background"] = bg = idle_rates(bed, pid, args.idle)
                print(f"  idle background: proxy {bg['proxy'] * 1000:.0f} ms/s, unified "
                      f"{bg['unified'] * 1000:.0f} ms/s, tenant {bg['tenant'] * 1000:.0f} ms/s",
                      file=sys.stderr, flush=True)
                for r in range(args.rounds):
                    for q in qs:
                        for clients in CLIENTS:
                            order = TARGETS if (r + clients) % 2 == 0 else TARGETS[::-1]
                            for target in order:
                                fed = target == "federated"
                                run = run_pgbench(bed, name, q, target, port if fed else bed.unified.port,
                                                  clients, args, logdir, pid if fed else None,
                                                  metrics_port if fed else None, bg)
                                run.round = r
                                runs.append(run)
                                cpu = ("" if run.proxy_cpu_ms is None
                                       else f" proxy={run.proxy_cpu_ms:.2f}ms/q")
                                print(f"  round {r + 1}/{args.rounds} {q.name:10} -c {clients} {target:9} "
                                      f"tps={run.tps:8.1f} p50={run.p50_us / 1000:7.2f}ms "
                                      f"unified={run.unified_cpu_ms:.2f}ms/q "
                                      f"tenant={run.tenant_cpu_ms:.2f}ms/q"
                                      f"{cpu} n={run.transactions} failed={run.failed}"
                                      + (f" federated={run.decisions.get('federated', 0):.0f}"
                                         f" refused={run.decisions.get('federation_refused', 0):.0f}"
                                         if fed else "")
                                      + (f" WARM-UP OVERRAN x{run.warm_up_overran}" if run.warm_up_overran
                                         else ""), file=sys.stderr, flush=True)
                info["proxy_problems"] = proxy_problems(proxy_log)
            finally:
                service.stop()
            setups.append(info)
    finally:
        for path in logdir.glob("*"):
            path.unlink()
        logdir.rmdir()
    return {"setups": setups, "runs": runs}


def summarise(p1: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[Run] = p1["runs"]
    out = []
    for setup_info in p1["setups"]:
        for qname in setup_info["queries"]:
            for clients in CLIENTS:
                mine = [r for r in runs if r.setup == setup_info["name"] and r.query == qname
                        and r.clients == clients]
                if not mine:
                    continue
                fed = [r for r in mine if r.target == "federated"]
                base = [r for r in mine if r.target == "baseline"]
                pairs = [(f, b) for f in fed for b in base if f.round == b.round]

                def med(values: list[float]) -> float:
                    values = [v for v in values if v == v]
                    return statistics.median(values) if values else float("nan")

                def pooled(rs: list[Run], q: float) -> float:
                    return percentile(sorted(v for r in rs for v in r.latencies_us), q)

                out.append({
                    "setup": setup_info["name"], "moved": setup_info["moved"], "query": qname,
                    "clients": clients,
                    "fed_tps": med([r.tps for r in fed]), "base_tps": med([r.tps for r in base]),
                    "tps_ratio": med([f.tps / b.tps for f, b in pairs if b.tps]),
                    "fed_p50_ms": pooled(fed, 0.5) / 1000, "fed_p95_ms": pooled(fed, 0.95) / 1000,
                    "base_p50_ms": pooled(base, 0.5) / 1000, "base_p95_ms": pooled(base, 0.95) / 1000,
                    "p50_ratio": med([f.p50_us / b.p50_us for f, b in pairs if b.p50_us]),
                    "fed_unified_cpu_ms": med([r.unified_cpu_ms for r in fed]),
                    "base_unified_cpu_ms": med([r.unified_cpu_ms for r in base]),
                    "unified_cpu_ratio": med([f.unified_cpu_ms / b.unified_cpu_ms for f, b in pairs
                                              if b.unified_cpu_ms]),
                    "fed_tenant_cpu_ms": med([r.tenant_cpu_ms for r in fed]),
                    "fed_proxy_cpu_ms": med([r.proxy_cpu_ms for r in fed if r.proxy_cpu_ms is not None]),
                    "transactions": sum(r.transactions for r in fed),
                    "base_transactions": sum(r.transactions for r in base),
                    "failed": sum(r.failed for r in mine),
                    "federated_decisions": sum(r.decisions.get("federated", 0.0) for r in fed),
                    "refused": sum(r.decisions.get("federation_refused", 0.0) for r in fed),
                    "warm_up_overran": sum(r.warm_up_overran for r in mine),
                    "tenant_processes": max((r.tenant_processes for r in fed), default=0),
                })
    return out


# -- part 2: reference tables -----------------------------------------------------------------------

def ref_schema(rows: int) -> str:
    return f"""
CREATE TABLE device_models (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL,
                            secret text);
INSERT INTO device_models SELECT i, 'model ' || i, 10 + i % 90, md5(i::text)
FROM generate_series(1, {rows}) AS i;
"""


def part2(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    # imported here: part 1 runs without the reference-table modules
    from pgtenantproxy.lifecycle.reference import reference_lag
    from pgtenantproxy.migration.reference import ReferenceSync

    return asyncio.run(_part2(bed, args, ReferenceSync, reference_lag))


async def _part2(bed: Bed, args: argparse.Namespace, sync_cls: Any, reference_lag: Any) -> dict[str, Any]:
    print(f"part 2: reference table {REF_TABLE} ({args.ref_rows} rows) on {bed.shops} shops",
          file=sys.stderr, flush=True)
    psql(bed.unified, ref_schema(args.ref_rows), dbname=DATABASE)
    data = dict(bed.data)
    data["tenancy"] = {**bed.data["tenancy"],
                       "reference_tables": [{"table": REF_TABLE, "columns": ["id", "name", "price"]}]}
    config = parse_config(data)
    out: dict[str, Any] = {"shops": bed.shops, "ref_rows": args.ref_rows, "rounds": []}
    async with await TenancyService.open(config) as svc:
        sync = sync_cls(svc, lambda: config)
        # the first round: every shop's copy created and filled
        first = await _timed_sync(bed, sync)
        lag = await reference_lag(svc.pool, [REF_TABLE])
        first["shops_current"] = sum(1 for v in lag.values() if v == 0.0)
        out["initial"] = first
        print(f"  initial copy to {bed.shops} shops: {first['seconds']:.2f} s, "
              f"{first['shops_current']} shops current", file=sys.stderr, flush=True)
        conn = await asyncpg.connect(**bed.unified.connect_kwargs(database=DATABASE))
        try:
            ids = list(range(1, args.ref_rows + 1))
            for r in range(args.ref_rounds):
                for n in args.ref_updates:
                    chosen = ids[(r * 7919) % len(ids):][:n]
                    chosen += ids[:n - len(chosen)]
                    t0 = time.perf_counter()
                    for key in chosen:  # n single-row writes, each its own transaction
                        await conn.execute("UPDATE device_models SET price = price + 0.01 WHERE id = $1", key)
                    write_s = time.perf_counter() - t0
                    lag_before = await reference_lag(svc.pool, [REF_TABLE])
                    timed = await _timed_sync(bed, sync)
                    lag = await reference_lag(svc.pool, [REF_TABLE])
                    timed.update({"round": r, "updates": n, "write_s": write_s,
                                  "max_lag_before_s": max(lag_before.values(), default=float("nan")),
                                  "shops_current": sum(1 for v in lag.values() if v == 0.0),
                                  "max_lag_after_s": max(lag.values(), default=float("nan"))})
                    out["rounds"].append(timed)
                    per = timed["seconds"] / (n * bed.shops) * 1e6
                    print(f"  round {r + 1}/{args.ref_rounds} N={n:5}: sync {timed['seconds']:.3f} s "
                          f"({per:.1f} µs per write per shop), unified {timed['unified_cpu_s']:.3f} s CPU, "
                          f"tenant {timed['tenant_cpu_s']:.3f} s, sync process {timed['sync_cpu_s']:.3f} s; "
                          f"{timed['shops_current']}/{bed.shops} shops current", file=sys.stderr, flush=True)
            check = await _copies_match(bed, svc, conn)
            out["copies_match"] = check
        finally:
            await conn.close()
    return out


async def _timed_sync(bed: Bed, sync: Any) -> dict[str, Any]:
    u0, _ = cluster_cpu(bed.unified_pid)
    t_0, _ = cluster_cpu(bed.tenant_pid)
    s0 = self_cpu()
    t0 = time.perf_counter()
    result = await sync.run_once()
    seconds = time.perf_counter() - t0
    u1, _ = cluster_cpu(bed.unified_pid)
    t_1, _ = cluster_cpu(bed.tenant_pid)
    sync_cpu = self_cpu() - s0
    actions: dict[str, int] = {}
    for r in result:
        actions[r.action] = actions.get(r.action, 0) + 1
    return {"seconds": seconds, "unified_cpu_s": u1 - u0, "tenant_cpu_s": t_1 - t_0, "sync_cpu_s": sync_cpu,
            "ok": bool(result.ok), "actions": actions, "errors": list(result.errors())[:5],
            "keys_applied": sum(getattr(r, "keys", 0) for r in result)}


async def _copies_match(bed: Bed, svc: TenancyService, unified: asyncpg.Connection) -> dict[str, Any]:
    """Every shop's copy against unified's table (the listed columns), by a digest."""
    digest = "SELECT md5(string_agg(id || ':' || name || ':' || price, ',' ORDER BY id)) FROM device_models"
    want = await unified.fetchval(digest)
    bad = []
    for shop in range(1, bed.shops + 1):
        creds = await svc.credentials(shop)
        conn = await asyncpg.connect(host=creds.host, port=creds.port, user=bed.tenant.superuser,
                                     password=bed.tenant.password, database=creds.database)
        try:
            if await conn.fetchval(digest) != want:
                bad.append(shop)
        finally:
            await conn.close()
    return {"shops_checked": bed.shops, "mismatched": bad}


# -- report -----------------------------------------------------------------------------------------

def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def report(args: argparse.Namespace, env: dict[str, Any], bed: Bed | None, p1: dict[str, Any] | None,
           p2: dict[str, Any] | None) -> None:
    doc: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "environment": env}
    if bed is not None:
        doc["setup"] = {"shops": bed.shops, "rows_per_shop": bed.rows_per_shop, **bed.timings}
    if p1 is not None:
        summary = summarise(p1)
        print(f"\n## Federated reads ({bed.shops if bed else '?'} shops x {args.rows_per_shop} orders; "
              f"pgbench -M extended, {args.rounds} round(s) x {args.duration} s measured after "
              f"{args.warmup} s; {env['cpus']} CPUs)\n")
        print("Federated: through the proxy, the migrated database (the cut-over shops read through "
              "postgres_fdw). Baseline: the same query directly on the unmigrated copy. Ratios: "
              "federated / baseline within a round, median over rounds. CPU per query: net of the idle "
              "background (no client; the proxy's phase keeper and catalog refresh, the servers' own work), "
              "measured per set-up:\n")
        for st in p1["setups"]:
            bg = st["background"]
            print(f"* {st['name']}: proxy {bg['proxy'] * 1000:.1f} ms/s, unified {bg['unified'] * 1000:.1f} "
                  f"ms/s, tenant server {bg['tenant'] * 1000:.1f} ms/s")
        print()
        print("| cut over | query | -c | TPS fed / base (ratio) | P50 fed / base (ratio) | P95 fed / base "
              "| unified CPU per query fed / base (ratio) | tenant CPU per query | proxy CPU per query |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in summary:
            print(f"| {s['moved']} | {s['query']} | {s['clients']} "
                  f"| {_f(s['fed_tps'], '.1f')} / {_f(s['base_tps'], '.1f')} ({_f(s['tps_ratio'], '.3f')}) "
                  f"| {_f(s['fed_p50_ms'], '.2f')} / {_f(s['base_p50_ms'], '.2f')} ms "
                  f"({_f(s['p50_ratio'], '.1f')}x) "
                  f"| {_f(s['fed_p95_ms'], '.2f')} / {_f(s['base_p95_ms'], '.2f')} ms "
                  f"| {_f(s['fed_unified_cpu_ms'], '.2f')} / {_f(s['base_unified_cpu_ms'], '.2f')} ms "
                  f"({_f(s['unified_cpu_ratio'], '.1f')}x) "
                  f"| {_f(s['fed_tenant_cpu_ms'], '.2f')} ms | {_f(s['fed_proxy_cpu_ms'], '.3f')} ms |")
        print("\n| cut over | query | -c | measured queries fed / base | federated decisions | refused "
              "| failed | warm-ups overrunning the window | tenant server processes |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for s in summary:
            print(f"| {s['moved']} | {s['query']} | {s['clients']} | {s['transactions']} / "
                  f"{s['base_transactions']} | {s['federated_decisions']:.0f} | {s['refused']:.0f} "
                  f"| {s['failed']} | {s['warm_up_overran']} | {s['tenant_processes']} |")
        print("\n### What unified runs (the text the proxy sent, captured from unified's log; EXPLAIN "
              "(ANALYZE, VERBOSE) of it on unified; its execution time there, median of "
              f"{args.explain_reps}, with the foreign servers' async_capable on and off; the same text with "
              "the guard moved into a union arm of its own; whether each refuses a REPEATABLE READ "
              "transaction)\n")
        print("| cut over | query | plan (top nodes) | foreign scans | async | on / off | of which unified's "
              "own arm | refuses RR | guard as an arm: async, on / off, refuses RR | baseline (plan) |")
        print("|---:|---|---|---:|---:|---:|---:|---|---:|---|")

        def yes(flag: bool) -> str:
            return "yes" if flag else "NO"

        for st in p1["setups"]:
            for qname, x in st["queries"].items():
                pl, ga = x["plan"], x["guard_arm"]
                print(f"| {st['moved']} | {qname} | {' > '.join(pl['top_nodes'][:3])} "
                      f"| {pl['foreign_scans']} | {pl['async_foreign_scans']} "
                      f"| {pl['async_on_ms']:.1f} / {pl['async_off_ms']:.1f} ms "
                      f"| {pl['unified_arm_ms']:.1f} ms | {yes(pl['refuses_repeatable_read'])} "
                      f"| {ga['async_foreign_scans']}, "
                      f"{ga['async_on_ms']:.1f} / {ga['async_off_ms']:.1f} ms, "
                      f"{yes(ga['refuses_repeatable_read'])} "
                      f"| {x['base']['execution_ms']:.2f} ms ({' > '.join(x['base']['top_nodes'][:2])}) |")
        print("\n| cut over | answers equal to the baseline | first aggregate of a new session | next ones "
              "| federate_shop per shop |")
        print("|---:|---|---:|---:|---:|")
        prev = 0
        for st in p1["setups"]:
            per = st["federate_s"] / max(1, st["moved"] - prev)
            prev = st["moved"]
            eq = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in st["answers_equal"].items())
            print(f"| {st['moved']} | {eq} | {st['cold_session']['first_ms']:.0f} ms "
                  f"| {st['cold_session']['warm_ms']:.0f} ms | {per * 1000:.0f} ms |")
        for st in p1["setups"]:
            for line in st.get("proxy_problems", []):
                print(f"\n{st['name']}: the proxy logged: {line}")
        example = p1["setups"][0]["queries"].get("in_list_3")
        if example:
            print(f"\nThe IN-list as unified runs it ({p1['setups'][0]['name']}):\n\n"
                  f"```sql\n{example['sent']}\n```")
        doc["federated_reads"] = {"setups": p1["setups"], "summary": summary,
                                  "runs": [{k: v for k, v in vars(r).items() if k != "latencies_us"}
                                           for r in p1["runs"]]}
    if p2 is not None:
        report_part2(args, p2)
        doc["reference"] = p2
    env["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("federation-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nload average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}; raw figures: {path}")
    if env["loadavg_start"][0] > (os.cpu_count() or 1):
        print(f"warning: the load average was {env['loadavg_start'][0]:.1f} on {os.cpu_count()} CPUs "
              "before the benchmark started: other processes competed for the CPUs and the figures are noisy")


def report_part2(args: argparse.Namespace, p2: dict[str, Any]) -> None:
    shops = p2["shops"]
    print(f"\n## Reference-table fan-out ({REF_TABLE}, {p2['ref_rows']} rows, 3 of its 4 columns copied to "
          f"{shops} shops; one ReferenceSync.run_once() after N single-row updates on unified, each its own "
          f"transaction; median over {args.ref_rounds} round(s))\n")
    ini = p2["initial"]
    print(f"First round (every shop's copy created and filled): {ini['seconds']:.2f} s, unified CPU "
          f"{ini['unified_cpu_s']:.2f} s, tenant CPU {ini['tenant_cpu_s']:.2f} s, sync process "
          f"{ini['sync_cpu_s']:.2f} s, {ini['shops_current']}/{shops} shops current after.\n")
    print("| N updates | update on unified (capture trigger on) | sync round | per write per shop "
          "| unified CPU | tenant CPU | sync process CPU | shops current after "
          "| round at 1,000 shops (extrapolated) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_n: dict[int, list[dict[str, Any]]] = {}
    for r in p2["rounds"]:
        by_n.setdefault(r["updates"], []).append(r)
    p2["summary"] = []
    for n, rs in sorted(by_n.items()):
        sec = statistics.median(r["seconds"] for r in rs)
        row = {"updates": n, "seconds": sec, "per_write_per_shop_us": sec / (n * shops) * 1e6,
               "write_us": statistics.median(r["write_s"] for r in rs) / n * 1e6,
               "unified_cpu_s": statistics.median(r["unified_cpu_s"] for r in rs),
               "tenant_cpu_s": statistics.median(r["tenant_cpu_s"] for r in rs),
               "sync_cpu_s": statistics.median(r["sync_cpu_s"] for r in rs),
               "shops_current": min(r["shops_current"] for r in rs),
               "ok": all(r["ok"] for r in rs),
               "extrapolated_1000_s": sec * 1000 / shops}
        p2["summary"].append(row)
        print(f"| {n} | {row['write_us']:.0f} µs | {sec * 1000:.0f} ms "
              f"| {row['per_write_per_shop_us']:.1f} µs "
              f"| {row['unified_cpu_s'] * 1000:.0f} ms | {row['tenant_cpu_s'] * 1000:.0f} ms "
              f"| {row['sync_cpu_s'] * 1000:.0f} ms | {row['shops_current']}/{shops}"
              f"{'' if row['ok'] else ' (errors)'} | {row['extrapolated_1000_s']:.1f} s |")
    rows = p2["summary"]
    if len(rows) >= 2 and rows[-1]["updates"] > rows[0]["updates"]:
        lo, hi = rows[0], rows[-1]
        marginal = (hi["seconds"] - lo["seconds"]) / ((hi["updates"] - lo["updates"]) * shops)
        fixed = lo["seconds"] - marginal * lo["updates"] * shops
        p2["model"] = {"fixed_per_shop_ms": fixed / shops * 1000,
                       "marginal_per_write_per_shop_us": marginal * 1e6}
        print(f"\nLinear model from N = {lo['updates']} and N = {hi['updates']}: a round costs about "
              f"{fixed / shops * 1000:.2f} ms per shop plus {marginal * 1e6:.1f} µs per write per shop.")
    m = p2.get("copies_match", {})
    print(f"Copies checked against unified (digest of the copied columns): {m.get('shops_checked')} shops, "
          f"mismatched: {m.get('mismatched') or 'none'}. The last column is a linear extrapolation "
          f"(round time x 1000 / {shops}), not a measurement.")
    for r in p2["rounds"]:
        for e in r.get("errors", []):
            print(f"sync error (N={r['updates']}): {e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=100, help="shops (default 100): the second set-up")
    parser.add_argument("--first", type=int, default=10,
                        help="shops cut over in the first set-up (default 10)")
    parser.add_argument("--rows-per-shop", type=int, default=2000, help="orders per shop (default 2000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per set-up (default 2)")
    parser.add_argument("--duration", type=float, default=5,
                        help="measured seconds per pgbench run (default 5)")
    parser.add_argument("--warmup", type=float, default=4,
                        help="seconds of each pgbench run before the measured window (default 4)")
    parser.add_argument("--idle", type=float, default=5,
                        help="seconds of idle CPU sampling per set-up, the background subtracted (default 5)")
    parser.add_argument("--explain-reps", type=int, default=5,
                        help="executions per mode for the async on/off timing (default 5)")
    parser.add_argument("--max-shops-per-query", type=int, default=200,
                        help="[federation] max_shops_per_query of the proxy (default 200)")
    parser.add_argument("--ref-rows", type=int, default=2000,
                        help="rows of the reference table (default 2000)")
    parser.add_argument("--ref-updates", default="1,100,1000",
                        help="updates per sync round (default 1,100,1000)")
    parser.add_argument("--ref-rounds", type=int, default=3, help="rounds of every N (default 3)")
    parser.add_argument("--parts", default="1,2", help="a subset of the parts 1,2 (default both)")
    parser.add_argument("--quick", action="store_true",
                        help="30 shops (10 then 30) x 500 orders, 1 round x 2 s after 1.5 s, N = 1,100: "
                             "a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.shops, args.first, args.rows_per_shop, args.rounds = 30, 10, 500, 1
        args.duration, args.warmup, args.explain_reps, args.idle = 2, 1.5, 3, 2
        args.ref_rows, args.ref_updates, args.ref_rounds = 1000, "1,100", 1
    args.parts = {int(p) for p in args.parts.split(",") if p.strip()}
    args.ref_updates = [int(n) for n in str(args.ref_updates).split(",") if n.strip()]
    if not args.parts <= {1, 2} or not args.parts:
        parser.error("--parts takes a subset of 1,2")
    if not 4 <= args.first <= args.shops:
        parser.error("--first must be within 4..--shops")
    if min(args.rows_per_shop, args.rounds, args.ref_rows, args.ref_rounds) < 1 or args.duration <= 0:
        parser.error("--rows-per-shop, --rounds, --ref-rows, --ref-rounds and --duration must be positive")
    if any(n < 1 or n > args.ref_rows for n in args.ref_updates):
        parser.error("--ref-updates must be within 1..--ref-rows")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                           "loadavg_start": os.getloadavg(), "platform": platform.platform()}
    started = time.monotonic()
    clusters: list[PgCluster] = []
    bed = p1 = p2 = None
    try:
        bed = setup(args, clusters)
        env["postgresql"] = subprocess.run([str(bed.unified.bindir / "postgres"), "--version"],
                                           capture_output=True, text=True, check=False).stdout.strip()
        if 1 in args.parts:
            p1 = part1(bed, args)
        if 2 in args.parts:
            p2 = part2(bed, args)
    finally:
        for cluster in clusters:
            cluster.destroy()
    env["runtime_s"] = time.monotonic() - started
    report(args, env, bed, p1, p2)
    print(f"runtime {env['runtime_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
