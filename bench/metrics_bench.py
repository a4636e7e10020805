"""What metrics cost the data path: proxy TPS with ``[metrics] enabled = true`` vs ``false``.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/metrics_bench.py            # 5 rounds x 10 s per workload
    python bench/metrics_bench.py --quick    # 2 rounds x 3 s: a smoke run

Method: one throwaway cluster on 127.0.0.1 (``pgbench -i -s 10``, as
``pgbench_compare.py``) that is also the tenant server: a tenant table
``shop_notes`` (routing needs one) and shops 1-4 provisioned by the tenancy
control plane. Two proxy processes with routing on and the same config but
for ``[metrics] enabled``, both up for the whole run; each round runs pgbench
against both, the order alternating from round to round, so drift and
background load hit both alike. While the metrics-on proxy is measured,
this script scrapes its ``/metrics`` every ``--scrape-interval`` seconds
(default 1 s: far more often than a production Prometheus), so the cost of
exposition is included.

Workloads (``-c 8 -j 2``, strategy ``tenant``):

* ``select_only``: ``pgbench -S -M prepared``; every query is analysed, routed
  to unified (``pgbench_accounts`` is a global table) and recorded;
* ``tenant_reads``: a custom script reading ``shop_notes`` of a random shop
  (``-M prepared``): routed to the shop's database, recorded with source
  ``tenant``.

Figures, each computed within a round (on vs off, same round) and
summarised by the median over rounds:

* TPS loss = 1 - TPS(on) / TPS(off) (target: under 5%);
* proxy CPU per transaction (CPU seconds the proxy process used during the
  run, from ``/proc``, over pgbench's transaction count), on vs off: on a
  machine shared with other work, wall-clock TPS swings by tens of percent
  between runs, while the CPU the proxy spends per transaction barely
  moves, so this is the figure that shows what recording costs;
* before the cluster starts, an in-process micro-benchmark of
  ``QueryRecorder.record`` (microseconds per unit);
* with ``--py-spy``: the metrics-on proxy is sampled by py-spy during its
  runs, and the share of its on-CPU samples inside metrics code
  (``pgtenantproxy/metrics/``, prometheus-client, aiohttp) is reported:
  the most direct measure of what metrics cost, immune to the machine's
  other load.

Results: a markdown table on stdout, the raw figures as JSON in
``bench/results/``. Passwords and the encryption key live
in this process's environment (and its children's) only, never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from targets import BENCH_DB, BENCH_USER, BenchCluster, Service, pgbench_path, start_cluster, wait_listening

from pgtenantproxy.config import MetricsSection, parse_config
from pgtenantproxy.embedded import free_port
from pgtenantproxy.metrics.recorder import QueryRecorder
from pgtenantproxy.session.decision import Decision, ToTenant, ToUnified
from pgtenantproxy.tenancy.service import TenancyService

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SHOPS = [1, 2, 3, 4]
ENV = {"admin": "PGTP_BENCH_METRICS_ADMIN_PASSWORD", "key": "PGTP_BENCH_METRICS_TENANT_KEY"}
NOTES = f"""
CREATE TABLE shop_notes (id serial PRIMARY KEY, shop_id integer NOT NULL, body text NOT NULL);
INSERT INTO shop_notes (shop_id, body) SELECT 1 + i % 4, 'note ' || i FROM generate_series(1, 400) i;
ALTER TABLE shop_notes OWNER TO {BENCH_USER};
"""
TENANT_SCRIPT = "\\set shop random(1, 4)\nSELECT count(*) FROM shop_notes WHERE shop_id = :shop;\n"
WORKLOADS = {
    "select_only": ("-S", "-M", "prepared", "-c", "8", "-j", "2"),
    "tenant_reads": ("-M", "prepared", "-c", "8", "-j", "2", "-f", "{script}"),
}
_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


@dataclass
class Run:
    workload: str
    metrics: bool
    round: int
    tps: float
    scrapes: int
    transactions: int
    proxy_cpu_s: float  # CPU the proxy process used during the run
    samples: int = 0  # py-spy: the proxy's samples (on CPU) during the run
    metrics_samples: int = 0  # ... of which in metrics code (recorder, collector, exporter)

    @property
    def cpu_us_per_tx(self) -> float:
        return self.proxy_cpu_s / max(1, self.transactions) * 1e6


def _toml(bench: BenchCluster, port: int, metrics: bool, metrics_port: int) -> str:
    c = bench.cluster
    return "\n".join([
        "[proxy]", f'listen = "127.0.0.1:{port}"', "shutdown_timeout_ms = 2000",
        "[unified]", 'host = "127.0.0.1"', f"port = {c.port}", f'database = "{BENCH_DB}"',
        'sslmode = "disable"',
        f'admin_user = "{c.superuser}"', f'admin_password_env = "{ENV["admin"]}"',
        "[tenancy]", f'encryption_key_env = "{ENV["key"]}"', 'shops_query = "SELECT generate_series(1, 4)"',
        "[[tenant_servers]]", 'name = "t1"', 'host = "127.0.0.1"', f"port = {c.port}",
        f'admin_user = "{c.superuser}"', f'admin_password_env = "{ENV["admin"]}"', 'sslmode = "disable"',
        "[routing]", 'strategy = "tenant"',
        "[metrics]", f"enabled = {'true' if metrics else 'false'}", f'listen = "127.0.0.1:{metrics_port}"',
        "[admin]", "enabled = false",
        "[logging]", 'level = "warning"', "",
    ])


def setup_tenancy(bench: BenchCluster) -> None:
    """The tenant table and shops 1-4 provisioned on the same cluster."""
    bench.psql(NOTES, dbname=BENCH_DB)
    config = parse_config(tomllib.loads(_toml(bench, 1, False, 2)))

    async def provision() -> None:
        service = await TenancyService.open(config)
        try:
            outcomes = await service.provision_many(SHOPS)
            failed = [o for o in outcomes if not o.ok]
            if failed:
                raise RuntimeError(f"provisioning failed: {failed}")
        finally:
            await service.close()

    asyncio.run(provision())


def start_proxy(bench: BenchCluster, *, metrics: bool) -> tuple[Service, int, int]:
    """A proxy process; returns it with its client port and its metrics port."""
    workdir = Path(tempfile.mkdtemp(prefix="pgtp-bench-metrics-"))
    port, metrics_port = free_port(), free_port()
    config = workdir / "config.toml"
    config.write_text(_toml(bench, port, metrics, metrics_port))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = workdir / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgtenantproxy", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    service = Service(proc, workdir, [])
    try:
        wait_listening("metrics-on" if metrics else "metrics-off", port, proc, log, timeout=60)
    except BaseException:
        service.stop()
        raise
    return service, port, metrics_port


class Profiler:
    """``py-spy record`` on the proxy for one run: the share of its CPU samples spent in metrics code."""

    MARKERS = ("pgtenantproxy/metrics/", "prometheus_client/", "aiohttp/")

    def __init__(self, pid: int, duration: int, workload: str) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="pgtp-bench-spy-")) / f"{workload}.txt"
        self.proc = subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-d", str(duration), "-r", "200", "-f", "raw",
             "-o", str(self.out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def finish(self) -> tuple[int, int]:
        self.proc.wait(60)
        total = hits = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            total += int(count)
            if any(marker in stack for marker in self.MARKERS):
                hits += int(count)
        return hits, total


class Scraper:
    """GET /metrics every ``interval`` seconds in a thread, while a run lasts."""

    def __init__(self, url: str, interval: float) -> None:
        self.url, self.interval = url, interval
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.count += 1

    def __enter__(self) -> Scraper:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def recorder_cost_us(calls: int = 300_000) -> float:
    """Microseconds one ``QueryRecorder.record`` call costs in this process (loop overhead removed)."""
    recorder = QueryRecorder(MetricsSection(), tenant_tables=lambda: frozenset({"public.shop_notes"}))
    decisions = [ToTenant(s, "tenant", "query", "select", "shop_notes") for s in SHOPS]
    decisions.append(ToUnified(None, "global_table", None, "select", "pgbench_accounts"))
    n = len(decisions)

    def nothing(unit: object, facts: object, decision: Decision, outcome: str, seconds: float) -> None:
        return None

    timings = []
    for fn in (recorder.record, nothing):
        started = time.perf_counter()
        for i in range(calls):
            fn(None, None, decisions[i % n], "ok", 0.0004)
        timings.append(time.perf_counter() - started)
    return (timings[0] - timings[1]) / calls * 1e6


def run_pgbench(
    bench: BenchCluster, port: int, workload: str, duration: int, script: Path
) -> tuple[float, int]:
    """One pgbench run: (TPS, transactions)."""
    args = [a.format(script=script) for a in WORKLOADS[workload]]
    cmd = [pgbench_path(bench.cluster), "-n", "-T", str(duration), *args,
           "-h", "127.0.0.1", "-p", str(port), "-U", BENCH_USER, BENCH_DB]
    result = subprocess.run(cmd, env=bench.env(), capture_output=True, text=True, timeout=duration + 120)
    found, count = _TPS.search(result.stdout), _TX.search(result.stdout)
    clean = "number of failed transactions: 0" in result.stdout
    if result.returncode != 0 or found is None or count is None or not clean:
        raise RuntimeError(f"pgbench {workload} on port {port} failed:\n{result.stderr[-2000:]}")
    return float(found.group(1)), int(count.group(1))


def measure(bench: BenchCluster, args: argparse.Namespace, ports: dict[bool, tuple[int, int, int]],
            script: Path) -> list[Run]:
    runs = []
    for workload in WORKLOADS:
        for port, _, _ in ports.values():  # warm-up, not counted: tenant pools, caches, plans
            run_pgbench(bench, port, workload, 2, script)
        for n in range(args.rounds):
            for metrics in ((True, False) if n % 2 == 0 else (False, True)):
                port, metrics_port, pid = ports[metrics]
                interval = args.scrape_interval if metrics else 0.0
                cpu = process_cpu(pid)
                spy = Profiler(pid, args.duration, workload) if metrics and args.py_spy else None
                with Scraper(f"http://127.0.0.1:{metrics_port}/metrics", interval) as scraper:
                    tps, count = run_pgbench(bench, port, workload, args.duration, script)
                run = Run(workload, metrics, n, tps, scraper.count, count, process_cpu(pid) - cpu)
                if spy is not None:
                    run.metrics_samples, run.samples = spy.finish()
                runs.append(run)
                print(f"  {workload:12} round {n + 1}/{args.rounds} metrics {'on ' if metrics else 'off'} "
                      f"tps={tps:9.1f} proxy cpu/tx={run.cpu_us_per_tx:6.1f}us scrapes={scraper.count}",
                      file=sys.stderr, flush=True)
    return runs


def summarise(runs: list[Run]) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    for workload in WORKLOADS:
        mine = [r for r in runs if r.workload == workload]
        on = {r.round: r.tps for r in mine if r.metrics}
        off = {r.round: r.tps for r in mine if not r.metrics}
        losses = [1 - on[n] / off[n] for n in on if n in off]
        cpu_on = {r.round: r.cpu_us_per_tx for r in mine if r.metrics}
        cpu_off = {r.round: r.cpu_us_per_tx for r in mine if not r.metrics}
        rows.append({"workload": workload, "tps_off": statistics.median(off.values()),
                     "tps_on": statistics.median(on.values()), "loss": statistics.median(losses),
                     "loss_min": min(losses), "loss_max": max(losses),
                     "cpu_us_off": statistics.median(cpu_off.values()),
                     "cpu_us_on": statistics.median(cpu_on.values()),
                     "cpu_overhead": statistics.median(
                         cpu_on[n] / cpu_off[n] - 1 for n in cpu_on if n in cpu_off),
                     "metrics_cpu_share": sum(r.metrics_samples for r in mine)
                     / max(1, sum(r.samples for r in mine))})
    return rows


def table(rows: list[dict[str, float | str]]) -> str:
    lines = ["| workload | TPS metrics off | TPS metrics on | TPS loss (median, min..max over rounds) "
             "| proxy CPU/tx off | on | CPU overhead |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = f"{float(r['loss_min']):+.1%} .. {float(r['loss_max']):+.1%}"
        lines.append(f"| {r['workload']} | {r['tps_off']:.0f} | {r['tps_on']:.0f} | "
                     f"{float(r['loss']):+.1%} ({spread}) | {float(r['cpu_us_off']):.1f} us | "
                     f"{float(r['cpu_us_on']):.1f} us | {float(r['cpu_overhead']):+.1%} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--py-spy", action="store_true",
                        help="profile the metrics-on proxy with py-spy: share of its CPU in metrics code")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 2, 3
    cost_us = recorder_cost_us()
    print(f"QueryRecorder.record: {cost_us:.2f} us per unit (in-process micro-benchmark)", file=sys.stderr)
    bench = start_cluster(args.scale)
    services: list[Service] = []
    try:
        os.environ[ENV["admin"]] = bench.cluster.password
        os.environ[ENV["key"]] = secrets.token_hex(32)
        setup_tenancy(bench)
        ports = {}
        for metrics in (True, False):
            service, port, metrics_port = start_proxy(bench, metrics=metrics)
            services.append(service)
            ports[metrics] = (port, metrics_port, service.proc.pid)
        script = Path(tempfile.mkdtemp(prefix="pgtp-bench-script-")) / "tenant_reads.sql"
        script.write_text(TENANT_SCRIPT)
        started = time.time()
        runs = measure(bench, args, ports, script)
    finally:
        for service in services:
            service.stop()
        bench.cluster.destroy()
    rows = summarise(runs)
    print(table(rows))
    print(f"\nQueryRecorder.record costs {cost_us:.2f} us per unit (micro-benchmark, this machine).")
    if args.py_spy:
        for r in rows:
            share = float(r["metrics_cpu_share"])
            print(f"py-spy, metrics-on proxy, {r['workload']}: {share:.2%} of its CPU samples "
                  "in metrics code (recorder, collector, exporter)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("metrics-%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({
        "rounds": args.rounds, "duration_s": args.duration, "scale": args.scale,
        "scrape_interval_s": args.scrape_interval, "started": started,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "recorder_cost_us": cost_us,
        "summary": rows, "runs": [{**asdict(r), "cpu_us_per_tx": r.cpu_us_per_tx} for r in runs],
    }, indent=2))
    print(f"\nraw results: {out.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
