"""Every shop through the real lifecycle, with the psycopg workload looping through the proxy meanwhile.

:func:`migrate` runs the operator's commands against the bed's config file:
``provision --all``, ``dual-write enable``, ``backfill --all`` (which waits
for the mirror and leaves every shop in ``mirroring``). Then the load starts
(one thread per shop of :data:`~.bed.LOAD_SHOPS`, each running the whole
psycopg workload again and again on one connection through the proxy) and a
background thread moves the shops one by one: ``reads activate --shop N``
(the phase keeper then moves it to ``reads_on_tenant``), ``cutover --shop N``
(``tenant_primary``; when that is refused or aborted, what an operator does
next, still under the load: ``cutover --check``, then ``cutover --force``,
all of it recorded). The load's own shops are moved among the others, with
a pause in each phase so it runs in all of them.

Each iteration of the load is compared with the same workload run directly on
the unmigrated copy (same shop; the name prefix and new ids normalized, the
growing ``copy_out`` compared by outcome only): a statement whose outcome
differs is a failure, with the phase its shop was in. Nothing here asserts:
:class:`LifecycleRun` keeps what happened, ``test_lifecycle_under_load.py``
judges it. If a shop is still not cut over after the moves, it is tried once
more without load (so the driver tests still find every shop cut over) and
the failure stays in the record.

Then, every shop cut over and the load stopped, :func:`retire` runs the
operator's ``retire --shop N --json`` for each of :data:`~.bed.RETIRED_SHOPS`
(archive, delete the shop's rows from unified, phase ``retired``), one shop at
a time, recorded in :attr:`LifecycleRun.retirements` with the gate's reasons
when it refuses. When the refusal is the readiness recorder's (statements
touching the shop the proxies refused), what an operator does next:
``retire --check``, then ``retire --force``, recorded too; any other refusal
(reverse mirror, verification) is left as it is. The other shops stay
``tenant_primary``, so the driver tests see both phases.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.integration.drivers import py_psycopg
from tests.integration.drivers.bed import (
    BASELINE,
    LOAD_SHOPS,
    RETIRED_SHOPS,
    SAMPLE_CUSTOMERS,
    SHOPS,
    DriverBed,
)
from tests.integration.drivers.workload import (
    GROWING,
    STEPS,
    Difference,
    Result,
    compare,
    expect_direct,
    failures,
)

#: Order of the moves: the load's shops among the others.
MOVE_ORDER = (7, 1, 2, 3, 8, 4, 5, 6)
#: Seconds the load runs in each phase of one of its own shops.
DWELL_S = 1.5
PAUSE_BETWEEN_ITERATIONS_S = 0.02
REF_TAG = "refrun"
#: The phases a load shop goes through, as the load labels its iterations ("cutover": the command runs).
PHASE_ORDER = ("mirroring", "reads_on_tenant", "cutover", "tenant_primary")
REFUSALS = frozenset({"0A000", "55000", "55P03"})
#: Steps the lifecycle load leaves out: none (the global join and the read over every shop are federated
#: after cutover, so the load runs them too).
LOAD_SKIPS: frozenset[str] = frozenset()
#: Seconds for the proxy to see the retired phases (its catalog refreshes every 200 ms in the bed).
SETTLE_S = 1.0


def _phase_rank(phase: str) -> int:
    return PHASE_ORDER.index(phase) if phase in PHASE_ORDER else len(PHASE_ORDER)


@dataclass
class Move:
    shop: int
    command: str
    returncode: int
    seconds: float
    output: str
    phase_after: str


@dataclass
class Iteration:
    shop: int
    phase: str
    seconds: float
    differences: list[Difference] = field(default_factory=list)
    #: The connection broke or the driver raised outside a statement.
    crash: str | None = None


@dataclass
class LifecycleRun:
    setup: list[Move] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    iterations: list[Iteration] = field(default_factory=list)
    retried_without_load: list[int] = field(default_factory=list)
    #: ``retire --shop N --json`` per shop of RETIRED_SHOPS (after every shop is cut over, without load).
    retirements: list[Move] = field(default_factory=list)
    final_phases: dict[int, str] = field(default_factory=dict)
    #: What psycopg logged meanwhile (e.g. "error ignored in rollback of <Transaction ...>: ..."),
    #: with the transaction's address masked so that repeats count together.
    driver_warnings: Counter[str] = field(default_factory=Counter)

    def failed(self) -> list[tuple[Iteration, Difference]]:
        return [(it, d) for it in self.iterations for d in failures(it.differences)]

    def refused(self) -> list[tuple[Iteration, Difference]]:
        return [(it, d) for it, d in self.failed() if d.sqlstate in REFUSALS]

    def allowed(self) -> list[tuple[Iteration, Difference]]:
        """Refusals the comparison allows (MAY_BE_REFUSED_AFTER_CUTOVER, none today): refused all the same."""
        return [(it, d) for it in self.iterations for d in it.differences if d.allowed]

    def failed_transactions(self) -> int:
        """Transactions (a txN group, or one autocommit statement) with at least one failed statement."""
        return sum(len({d.label.split(".")[0] for d in failures(it.differences)}) for it in self.iterations)

    def summary(self) -> str:
        per_phase = Counter(f"shop {it.shop} {it.phase}" for it in self.iterations)
        lines = [f"load iterations: {len(self.iterations)} ({dict(per_phase)}); crashes: "
                 f"{sum(1 for it in self.iterations if it.crash)}; failed statements: {len(self.failed())}; "
                 f"failed transactions: {self.failed_transactions()}; "
                 f"refused statements: {len(self.refused())}"]
        allowed = Counter(f"shop {it.shop} {it.phase} {d.label}" for it, d in self.allowed())
        if allowed:
            lines.append(f"refused, allowed by the comparison (still a refusal): "
                         f"{sum(allowed.values())} times ({dict(allowed)})")
        if self.driver_warnings:
            lines.append("warnings the driver logged (psycopg):")
            lines += [f"  x{n}: {text[:600]}" for text, n in self.driver_warnings.most_common(5)]
        if self.retried_without_load:
            lines.append(f"cut over again without load after a failure: {self.retried_without_load}")
            lines += [f"  `{m.command}` exited {m.returncode}: {m.output.strip()[-1500:]}"
                      for m in self.setup if m.shop in self.retried_without_load]
        for move in self.moves:
            if move.returncode != 0:
                lines.append(f"  shop {move.shop}: `{move.command}` exited {move.returncode}: "
                             f"{move.output.strip()[-1200:]}")
        if self.retirements:
            lines.append("retirements (after every shop was cut over, without load):")
            lines += [f"  shop {m.shop}: `{m.command}` exited {m.returncode} in {m.seconds:.1f} s, phase "
                      f"{m.phase_after}: {m.output.strip()[-1200:]}" for m in self.retirements]
        if self.final_phases:
            lines.append(f"final phases: {self.final_phases}")
        for shop in sorted({it.shop for it in self.iterations}):
            mine = [it for it in self.iterations if it.shop == shop]
            first = next(((n, it) for n, it in enumerate(mine, 1) if failures(it.differences)), None)
            if first is not None:  # a failed iteration may leave rows that later iterations of the shop see
                n, it = first
                labels = ", ".join(f"{d.label} ({d.sqlstate or 'rows'})" for d in failures(it.differences))
                lines.append(f"shop {shop}: first failed iteration #{n} of {len(mine)} ({it.phase}): "
                             f"{labels}")
        seen: dict[tuple[int, str, str, str | None], list[Iteration]] = {}
        for it, d in self.failed():
            seen.setdefault((it.shop, it.phase, d.label, d.sqlstate), []).append(it)
        order = [s.label for s in STEPS]
        for (shop, phase, label, sqlstate), its in sorted(
                seen.items(), key=lambda kv: (kv[0][0], _phase_rank(kv[0][1]), order.index(kv[0][2]))):
            example = next(d for d in its[0].differences if d.label == label)
            total = sum(1 for it in self.iterations if it.shop == shop and it.phase == phase)
            lines.append(f"  [shop {shop} {phase}] {label}: {len(its)} of {total} iterations "
                         f"(SQLSTATE {sqlstate})\n    " + example.describe())
        crashes = Counter(it.crash for it in self.iterations if it.crash)
        lines += [f"  crash x{n}: {text}" for text, n in crashes.items()]
        return "\n".join(lines)


def _brief(stdout: str) -> str | None:
    """The gist of a ``cutover --json`` report (per shop: outcome, detail, pause) or of ``--check --json``
    (per shop: ready, and the statements that block it)."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    parts = []
    for shop in report.get("shops", []):
        if "ready" in shop:
            blocking = "; ".join(f"{c['kind']} x{c['count']}: {' '.join(c['sample'].split())[:160]}"
                                 for c in shop["conflicts"])
            verdict = "ready" if shop["ready"] else f"not ready: {blocking}"
            parts.append(f"shop {shop['shop_id']}: {verdict}")
        else:
            parts.append(f"shop {shop['shop_id']}: {shop['status']} -> {shop['phase']}, writes held "
                         f"{shop['pause_ms']} ms{'; ' + shop['detail'] if shop.get('detail') else ''}")
    return " | ".join(parts)


def _retire_brief(stdout: str) -> str | None:
    """The gist of a ``retire --json`` report (per shop: outcome, rows, verification, the gate's reasons)."""
    try:
        report = json.loads(stdout)
    except ValueError:
        return None
    parts = []
    for shop in report.get("shops", []):
        forced = ", forced" if shop.get("forced") else ""
        part = (f"shop {shop['shop_id']}: {shop['status']}{forced} ({shop['total_rows']} rows, "
                f"verification: {shop.get('verification') or '-'})")
        refused = "; ".join(f"x{c['count']}: {' '.join(c['sample'].split())[:160]}"
                            for c in shop.get("refused_statements", []))
        if refused:
            part += f"; refused by the proxies: {refused}"
        if shop.get("reasons"):
            part += "; refused: " + "; ".join(shop["reasons"])
        if shop.get("warnings"):
            part += "; warnings: " + "; ".join(shop["warnings"])
        parts.append(part)
    if report.get("errors"):
        parts.append("errors: " + "; ".join(report["errors"]))
    return " | ".join(parts) or stdout.strip()[-2000:]


def _timed(bed: DriverBed, shop: int, *args: str) -> Move:
    started = time.monotonic()
    return _timed_result(bed, shop, args, bed.cli(*args), started)


def _timed_result(bed: DriverBed, shop: int, args: tuple[str, ...], done: subprocess.CompletedProcess[str],
                  started: float) -> Move:
    seconds = time.monotonic() - started
    brief = (_retire_brief if args[0] == "retire" else _brief)(done.stdout) if "--json" in args else None
    output = brief if brief is not None else done.stdout[-4000:] + done.stderr[-4000:]
    return Move(shop, " ".join(args), done.returncode, seconds, output, bed.phases().get(shop, "-"))


def _setup(bed: DriverBed, run: LifecycleRun) -> None:
    for args in (("provision", "--all"), ("dual-write", "enable"), ("backfill", "--all")):
        move = _timed(bed, 0, *args)
        run.setup.append(move)
        if move.returncode != 0:
            raise RuntimeError(f"pgtenantproxy {move.command} exited {move.returncode}:\n{move.output}")
    stuck = {s: bed.wait_phase(s, "mirroring") for s in SHOPS}
    if set(stuck.values()) != {"mirroring"}:
        raise RuntimeError(f"after backfill --all the shops are not all mirroring: {stuck}")


def _load(bed: DriverBed, shop: int, reference: Result, phase_of: dict[int, str], stop: threading.Event,
          out: list[Iteration]) -> None:
    conn: psycopg.Connection[Any] | None = None
    n = 0
    while not stop.is_set():
        tag = f"L{shop}i{n}"
        n += 1
        phase = phase_of[shop]
        started = time.monotonic()
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(bed.proxied.conninfo(), autocommit=True)
            result = py_psycopg.run_workload(conn, shop, tag, BASELINE["customer_id"], LOAD_SKIPS)
            diffs = compare(reference, result, BASELINE, tags=(REF_TAG, tag), drop_rows=GROWING)
            out.append(Iteration(shop, phase, time.monotonic() - started, diffs))
        except Exception as exc:  # a broken connection: counted, then reconnect
            crash = f"{type(exc).__name__}: {exc}"
            out.append(Iteration(shop, phase, time.monotonic() - started, crash=crash))
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(PAUSE_BETWEEN_ITERATIONS_S)
    if conn is not None:
        conn.close()


def _mover(bed: DriverBed, run: LifecycleRun, phase_of: dict[int, str], errors: list[BaseException]) -> None:
    try:
        time.sleep(DWELL_S)
        for shop in MOVE_ORDER:
            dwell = DWELL_S if shop in LOAD_SHOPS else 0.1
            move = _timed(bed, shop, "reads", "activate", "--shop", str(shop))
            run.moves.append(move)
            phase_of[shop] = bed.wait_phase(shop, "reads_on_tenant")
            time.sleep(dwell)
            phase_of[shop] = "cutover"
            move = _timed(bed, shop, "cutover", "--shop", str(shop), "--json")
            run.moves.append(move)
            if move.returncode != 0 and move.phase_after != "tenant_primary":
                # Refused (readiness) or aborted: what an operator does next, still under the load.
                run.moves.append(_timed(bed, shop, "cutover", "--shop", str(shop), "--check", "--json"))
                move = _timed(bed, shop, "cutover", "--shop", str(shop), "--force", "--json")
                run.moves.append(move)
            phase_of[shop] = move.phase_after
            time.sleep(dwell)
    except BaseException as exc:
        errors.append(exc)


class _Warnings(logging.Handler):
    def __init__(self, into: Counter[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        text = re.sub(r" at 0x[0-9a-f]+|port=\d+|'_pg3_\d+'", "", record.getMessage())
        self.into[" ".join(text.split())] += 1


def _blocked_by_recorder(stdout: str) -> bool:
    """A ``retire --json`` report whose shop was blocked by the readiness recorder (statements touching it
    the proxies refused), and by nothing else: the gate stops at its first failed check, so a blocked shop
    with refused statements listed passed the phase and reverse-mirror checks."""
    try:
        shops = json.loads(stdout).get("shops", [])
    except ValueError:
        return False
    return bool(shops) and all(s["status"] == "blocked" and s.get("refused_statements") for s in shops)


def retire(bed: DriverBed, run: LifecycleRun) -> None:
    """``retire --shop N`` for each of RETIRED_SHOPS (every shop cut over), one at a time, recorded.

    Refused by the readiness recorder only: ``--check``, then ``--force`` (recorded; the test fails on
    any command that did not exit 0). Any other refusal is printed, recorded and left as it is.
    """
    for shop in RETIRED_SHOPS:
        args = ("retire", "--shop", str(shop), "--json")
        started = time.monotonic()
        done = bed.cli(*args)
        move = _timed_result(bed, shop, args, done, started)
        run.retirements.append(move)
        if move.returncode != 0:
            print(f"\npgtenantproxy {move.command} exited {move.returncode} "
                  f"(phase {move.phase_after}): {move.output.strip()[-2000:]}")
            if _blocked_by_recorder(done.stdout):
                run.retirements.append(_timed(bed, shop, "retire", "--shop", str(shop), "--check", "--json"))
                move = _timed(bed, shop, "retire", "--shop", str(shop), "--force", "--json")
                run.retirements.append(move)
                print(f"pgtenantproxy {move.command} exited {move.returncode} (phase {move.phase_after}): "
                      f"{move.output.strip()[-2000:]}")
        if move.returncode == 0:
            move.phase_after = bed.wait_phase(shop, "retired")
    time.sleep(SETTLE_S)


def migrate(bed: DriverBed) -> LifecycleRun:
    """Every shop to ``tenant_primary`` through the real commands, the load running through the moves;
    then RETIRED_SHOPS retired."""
    run = LifecycleRun()
    handler = _Warnings(run.driver_warnings)
    logging.getLogger("psycopg").addHandler(handler)
    try:
        return _migrate(bed, run)
    finally:
        logging.getLogger("psycopg").removeHandler(handler)


def _migrate(bed: DriverBed, run: LifecycleRun) -> LifecycleRun:
    _setup(bed, run)
    references = {}
    for shop in LOAD_SHOPS:
        references[shop] = py_psycopg.run(bed.direct.conninfo(), shop, REF_TAG, BASELINE["customer_id"],
                                          LOAD_SKIPS)
        expect_direct(references[shop], LOAD_SKIPS, shops=SAMPLE_CUSTOMERS)
    phase_of = dict.fromkeys(SHOPS, "mirroring")
    stop = threading.Event()
    loads = [threading.Thread(target=_load, name=f"load-{shop}", daemon=True,
                              args=(bed, shop, references[shop], phase_of, stop, run.iterations))
             for shop in LOAD_SHOPS]
    errors: list[BaseException] = []
    mover = threading.Thread(target=_mover, args=(bed, run, phase_of, errors), name="mover", daemon=True)
    for thread in loads:
        thread.start()
    mover.start()
    mover.join(600)
    time.sleep(DWELL_S)
    stop.set()
    for thread in loads:
        thread.join(60)
    if errors:
        raise errors[0]
    for shop, phase in bed.phases().items():
        if phase != "tenant_primary":  # what an operator would do next: look, then force
            run.retried_without_load.append(shop)
            if phase == "mirroring":
                bed.cli("reads", "activate", "--shop", str(shop))
                bed.wait_phase(shop, "reads_on_tenant")
            run.setup.append(_timed(bed, shop, "cutover", "--shop", str(shop), "--check", "--json"))
            run.setup.append(_timed(bed, shop, "cutover", "--shop", str(shop), "--force", "--json"))
    cut_over = bed.phases()
    if set(cut_over.values()) != {"tenant_primary"}:
        run.final_phases = cut_over
        raise RuntimeError(f"not every shop could be cut over: {cut_over}\n{run.summary()}")
    retire(bed, run)
    run.final_phases = bed.phases()
    return run
