"""pgbench through nothing, pgtenantproxy, a bare Python forwarder and PgBouncer, side by side.

Usage (from a checkout, with the package's dependencies installed)::

    python bench/pgbench_compare.py            # 5 rounds x 10 s per workload and target
    python bench/pgbench_compare.py --quick    # 2 rounds x 3 s: a smoke run

Method: one throwaway cluster (``pgbench -i -s 10``), the proxy in its own
process, a bare asyncio + uvloop byte forwarder (``bench/forwarder.py``, no
parsing at all: the "Python floor") in its own process, PgBouncer (if
installed) in its own process. For each workload, each round runs pgbench
once against every target, the order rotating from round to round, so that
background load and drift hit every target alike. Ratios and latency
overheads are computed within a round (target vs direct, and the proxy vs the
forwarder, same round) and summarised by their median over rounds. The CPU
time of each serving process (utime + stime from ``/proc/<pid>/stat``) is read
before and after each run and divided by the transactions pgbench reports.

Results: a markdown table on stdout, the raw figures as JSON in
``bench/results/``. Loopback only; passwords never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from targets import (
    BENCH_USER,
    BenchCluster,
    Service,
    Target,
    cpu_seconds,
    pgbench_path,
    pgbouncer_version,
    start_cluster,
    start_forwarder,
    start_pgbouncer,
    start_proxy,
)

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    args: tuple[str, ...]
    pgbouncer: str  # which PgBouncer target can run it
    latency: bool = False  # report latency overhead rather than throughput


_SELECT_8 = ("-S", "-c", "8", "-j", "2")
WORKLOADS = (
    Workload("select_simple", "-S -M simple -c 8 -j 2", (*_SELECT_8, "-M", "simple"), "pgbouncer"),
    Workload("select_extended", "-S -M extended -c 8 -j 2", (*_SELECT_8, "-M", "extended"), "pgbouncer"),
    # PgBouncer cannot keep prepared statements in transaction mode (before 1.21): session mode.
    Workload(
        "select_prepared", "-S -M prepared -c 8 -j 2", (*_SELECT_8, "-M", "prepared"), "pgbouncer-session"
    ),
    Workload("tpcb", "TPC-B-like -c 8 -j 2", ("-M", "simple", "-c", "8", "-j", "2"), "pgbouncer"),
    Workload(
        "latency", "-S -M extended -c 1 (latency)", ("-S", "-M", "extended", "-c", "1", "-j", "1"),
        "pgbouncer", latency=True,
    ),
)


@dataclass
class Run:
    target: str
    round: int
    tps: float
    latency_ms: float
    cpu_us_per_tx: float | None = None  # CPU time of the proxy process per transaction


@dataclass
class WorkloadResult:
    workload: Workload
    runs: list[Run] = field(default_factory=list)

    def by_round(self, target: str) -> dict[int, Run]:
        return {r.round: r for r in self.runs if r.target == target}

    def median_tps(self, target: str) -> float:
        return statistics.median(r.tps for r in self.by_round(target).values())

    def median_latency_ms(self, target: str) -> float:
        return statistics.median(r.latency_ms for r in self.by_round(target).values())

    def has(self, target: str) -> bool:
        return any(r.target == target for r in self.runs)

    def ratio(self, target: str, reference: str = "direct") -> float:
        """Median over rounds of TPS(target) / TPS(reference) in the same round."""
        ref = self.by_round(reference)
        pairs = [(run.tps, ref[n].tps) for n, run in self.by_round(target).items() if n in ref]
        return statistics.median(t / r for t, r in pairs)

    def cpu_us_per_tx(self, target: str) -> float | None:
        """Median CPU time of the target's own process per transaction (None for direct)."""
        values = [r.cpu_us_per_tx for r in self.by_round(target).values() if r.cpu_us_per_tx is not None]
        return statistics.median(values) if values else None

    def overhead_us(self, target: str, reference: str = "direct") -> float:
        """Median over rounds of mean latency(target) - mean latency(reference), in microseconds."""
        ref = self.by_round(reference)
        diffs = [(run.latency_ms - ref[n].latency_ms) * 1000
                 for n, run in self.by_round(target).items() if n in ref]
        return statistics.median(diffs)


_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_COUNT = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)


def run_pgbench(bench: BenchCluster, target: Target, workload: Workload, duration: int) -> Run:
    """One pgbench run, with the CPU time the target's process spent on it."""
    cmd = [
        pgbench_path(bench.cluster), "-n", "-T", str(duration), *workload.args,
        "-h", "127.0.0.1", "-p", str(target.port), "-U", BENCH_USER, target.dbname,
    ]
    cpu_before = cpu_seconds(target.pid) if target.pid else 0.0
    result = subprocess.run(cmd, env=bench.env(), capture_output=True, text=True, timeout=duration + 120)
    cpu = cpu_seconds(target.pid) - cpu_before if target.pid else None
    tps, latency, count = (rx.search(result.stdout) for rx in (_TPS, _LATENCY, _COUNT))
    if result.returncode != 0 or tps is None or latency is None or count is None:
        raise RuntimeError(
            f"pgbench against {target.name} failed ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    transactions = int(count.group(1))
    per_tx = cpu * 1e6 / transactions if cpu is not None and transactions else None
    return Run(target.name, 0, float(tps.group(1)), float(latency.group(1)), per_tx)


def run_workload(
    bench: BenchCluster, targets: dict[str, Target], workload: Workload, rounds: int, duration: int
) -> WorkloadResult:
    names = [n for n in ("direct", "proxy", "baseline", "forwarder", workload.pgbouncer) if n in targets]
    result = WorkloadResult(workload)
    for n in range(rounds):
        order = names[n % len(names):] + names[: n % len(names)]
        for name in order:
            run = run_pgbench(bench, targets[name], workload, duration)
            run.round = n
            result.runs.append(run)
            cpu = f" cpu={run.cpu_us_per_tx:5.1f}us/tx" if run.cpu_us_per_tx is not None else ""
            print(f"  {workload.key:16} round {n + 1}/{rounds} {name:18} tps={run.tps:9.1f} "
                  f"lat={run.latency_ms * 1000:7.1f}us{cpu}", file=sys.stderr, flush=True)
    return result


def _bouncer(result: WorkloadResult) -> str | None:
    name = result.workload.pgbouncer
    return name if any(r.target == name for r in result.runs) else None


def _has_baseline(results: list[WorkloadResult]) -> bool:
    return any(r.target == "baseline" for res in results for r in res.runs)


def _has_forwarder(results: list[WorkloadResult]) -> bool:
    return any(res.has("forwarder") for res in results)


def throughput_table(results: list[WorkloadResult]) -> list[str]:
    baseline, forwarder = _has_baseline(results), _has_forwarder(results)
    head = ["workload", "direct TPS", "proxy TPS (ratio)"]
    head += ["baseline TPS (ratio)"] if baseline else []
    head += ["forwarder TPS (ratio)", "proxy / forwarder"] if forwarder else []
    head += ["PgBouncer TPS (ratio)", "proxy ratio / PgBouncer ratio"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for res in results:
        if res.workload.latency:
            continue
        row = [res.workload.title, f"{res.median_tps('direct'):.0f}",
               f"{res.median_tps('proxy'):.0f} ({res.ratio('proxy'):.3f})"]
        if baseline:
            row.append(f"{res.median_tps('baseline'):.0f} ({res.ratio('baseline'):.3f})")
        if forwarder and res.has("forwarder"):
            row += [f"{res.median_tps('forwarder'):.0f} ({res.ratio('forwarder'):.3f})",
                    f"{res.ratio('proxy', 'forwarder'):.3f}"]
        elif forwarder:
            row += ["-", "-"]
        bouncer = _bouncer(res)
        if bouncer is None:
            row += ["-", "-"]
        else:
            label = " session mode" if bouncer.endswith("session") else ""
            row += [f"{res.median_tps(bouncer):.0f} ({res.ratio(bouncer):.3f}){label}",
                    f"{res.ratio('proxy') / res.ratio(bouncer):.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def latency_table(results: list[WorkloadResult]) -> list[str]:
    baseline, forwarder = _has_baseline(results), _has_forwarder(results)
    head = ["workload", "direct mean latency", "proxy latency (overhead)"]
    head += ["baseline latency (overhead)"] if baseline else []
    head += ["forwarder latency (overhead)"] if forwarder else []
    head += ["PgBouncer latency (overhead)"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for res in results:
        if not res.workload.latency:
            continue
        row = [res.workload.title, f"{res.median_latency_ms('direct') * 1000:.1f} us"]
        extra = [*(["baseline"] if baseline else []), *(["forwarder"] if forwarder else [])]
        for target in ["proxy", *extra, _bouncer(res)]:
            if target is None or not res.has(target):
                row.append("-")
            else:
                mean_us = res.median_latency_ms(target) * 1000
                row.append(f"{mean_us:.1f} us ({res.overhead_us(target):+.1f} us)")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_table(results: list[WorkloadResult]) -> list[str]:
    baseline, forwarder = _has_baseline(results), _has_forwarder(results)
    head = ["workload", "proxy", *(["baseline"] if baseline else [])]
    head += ["forwarder", "proxy / forwarder"] if forwarder else []
    head += ["PgBouncer", "proxy / PgBouncer"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for res in results:
        proxy, bouncer = res.cpu_us_per_tx("proxy"), None
        name = _bouncer(res)
        if name is not None:
            bouncer = res.cpu_us_per_tx(name)
        row = [res.workload.title, _us(proxy)]
        if baseline:
            row.append(_us(res.cpu_us_per_tx("baseline")))
        if forwarder:
            floor = res.cpu_us_per_tx("forwarder")
            row += [_us(floor), f"{proxy / floor:.2f}" if proxy and floor else "-"]
        row += [_us(bouncer), f"{proxy / bouncer:.2f}" if proxy and bouncer else "-"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def environment(bench: BenchCluster) -> dict[str, object]:
    pg = bench.psql("SHOW server_version")
    commit = subprocess.run(["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "python": platform.python_version(),
        "postgresql": pg,
        "pgbouncer": pgbouncer_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "commit": commit or None,
        "platform": platform.platform(),
    }


def write_json(args: argparse.Namespace, env: dict[str, object], results: list[WorkloadResult]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("pgbench-%Y%m%d-%H%M%S.json")
    env["loadavg_end"] = os.getloadavg()
    doc = {
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "scale": args.scale},
        "environment": env,
        "workloads": [
            {
                "workload": asdict(res.workload),
                "runs": [asdict(r) for r in res.runs],
                "summary": summary(res),
            }
            for res in results
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def summary(res: WorkloadResult) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for target in sorted({r.target for r in res.runs}):
        runs = res.by_round(target).values()
        entry = {
            "median_tps": res.median_tps(target),
            "best_tps": max(r.tps for r in runs),
            "median_latency_ms": res.median_latency_ms(target),
        }
        if target != "direct":
            entry["ratio_to_direct"] = res.ratio(target)
            # Other load only ever lowers TPS: on a busy machine, best vs best is a useful cross-check.
            best_direct = max(r.tps for r in res.by_round("direct").values())
            entry["best_ratio_to_direct"] = entry["best_tps"] / best_direct
            entry["latency_overhead_us"] = res.overhead_us(target)
            cpu = res.cpu_us_per_tx(target)
            if cpu is not None:
                entry["cpu_us_per_tx"] = cpu
            if target != "forwarder" and res.has("forwarder"):
                # Paired within each round, like ratio_to_direct: the share of the Python floor reached.
                entry["ratio_to_forwarder"] = res.ratio(target, "forwarder")
                entry["latency_over_forwarder_us"] = res.overhead_us(target, "forwarder")
        out[target] = entry
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload (default 5)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 rounds x 3 s, for a smoke run")
    parser.add_argument("--workloads", default=",".join(w.key for w in WORKLOADS),
                        help="comma-separated subset of: " + ", ".join(w.key for w in WORKLOADS))
    parser.add_argument("--no-pgbouncer", action="store_true", help="skip PgBouncer even if installed")
    parser.add_argument("--no-forwarder", action="store_true",
                        help="skip the bare asyncio + uvloop byte forwarder (bench/forwarder.py)")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="also run the proxy from another checkout DIR (e.g. a git worktree of an "
                        "older commit), reported as 'baseline': before/after in one run")
    parser.add_argument("--py-spy", metavar="FILE", help="record the proxy with py-spy into FILE "
                        "(.svg flamegraph, .txt collapsed stacks, .json speedscope)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 2, 3
    known = {w.key for w in WORKLOADS}
    chosen = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in known]
    if unknown or not chosen:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    args.workloads = [w for w in WORKLOADS if w.key in chosen]
    return args


def start_py_spy(proxy: Service, output: str) -> subprocess.Popen[bytes]:
    fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(output).suffix, "flamegraph")
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(proxy.proc.pid), "--rate", "250", "--format", fmt, "-o", output],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stop_on_signals() -> None:
    """SIGTERM and SIGINT (even if inherited as ignored) unwind normally, so everything is cleaned up."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    print(f"starting a throwaway cluster (pgbench -i -s {args.scale})", file=sys.stderr, flush=True)
    bench = start_cluster(args.scale)
    services: list[Service] = []
    spy: subprocess.Popen[bytes] | None = None
    try:
        services.append(start_proxy(bench))
        if args.baseline:
            services.append(start_proxy(bench, name="baseline", source=args.baseline.resolve()))
        if not args.no_forwarder:
            services.append(start_forwarder(bench.cluster.port))
        if not args.no_pgbouncer:
            bouncer = start_pgbouncer(bench)
            if bouncer is None:
                print("pgbouncer not installed: comparing with direct only", file=sys.stderr)
            else:
                services.append(bouncer)
        targets = {t.name: t for t in [bench.direct, *(t for s in services for t in s.targets)]}
        if args.py_spy:
            spy = start_py_spy(services[0], args.py_spy)
        env = environment(bench)
        results = [run_workload(bench, targets, w, args.rounds, args.duration) for w in args.workloads]
    finally:
        if spy is not None:
            stop_py_spy(spy)
        for service in services:
            service.stop()
        bench.cluster.destroy()
    report(args, env, results)
    return 0


def report(args: argparse.Namespace, env: dict[str, object], results: list[WorkloadResult]) -> None:
    path = write_json(args, env, results)
    print(f"\n## pgbench: direct vs pgtenantproxy vs bare forwarder vs PgBouncer "
          f"({args.rounds} rounds x {args.duration} s, "
          f"scale {args.scale}, {env['cpus']} CPUs)\n")
    if any(not r.workload.latency for r in results):
        print("\n".join(throughput_table(results)) + "\n")
    if any(r.workload.latency for r in results):
        print("\n".join(latency_table(results)) + "\n")
    if _has_forwarder(results):
        print("forwarder: bare asyncio + uvloop byte forwarder (bench/forwarder.py), the Python floor; "
              "'proxy / forwarder' is the median over rounds of proxy TPS / forwarder TPS "
              "in the same round\n")
    print("CPU time of the serving process per transaction (median over rounds; "
          "much less sensitive to other load than TPS):\n")
    print("\n".join(cpu_table(results)) + "\n")
    print(f"PostgreSQL {env['postgresql']}, {env['pgbouncer'] or 'no PgBouncer'}, Python {env['python']}; "
          f"load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}")  # type: ignore[index]
    print(f"raw figures: {path}")
    busy = env["loadavg_start"][0]  # type: ignore[index]
    if busy > (os.cpu_count() or 1):
        print(f"warning: the load average was {busy:.1f} on {os.cpu_count()} CPUs before the benchmark "
              "started: other processes competed for the CPUs and the figures are noisy")


if __name__ == "__main__":
    raise SystemExit(main())
