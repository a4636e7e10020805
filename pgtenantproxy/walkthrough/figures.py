"""The live figures the walkthrough prints after each step, and how they look.

:class:`FigureTaker` reads, without touching the data path:

* the routing split of the application's reads: tenant-eligible reads
  (single-shop reads of tenant tables) sent to the tenant databases vs kept on
  unified by the strategy, and fallbacks, from the dispatcher's counters
  (``app.runtime.dispatcher.stats``);
* latency by source (unified reads and writes, tenant reads and writes:
  P50/P95/P99) and reads and writes per shop and source, from the samples of the metrics recorder's
  performance monitor (``app.recorder.monitor``), taken since the last mark;
* mirror lag and queue per shop (``mirror.status``) and each shop's phase
  (:func:`pgtenantproxy.lifecycle.store.read_phases`).

Each :class:`Figures` covers the time since the previous :meth:`FigureTaker.mark`
(a step marks when its action is done, so the figures show the state it left).
Rendering uses ``rich`` tables, plain enough to read when the output is not a
terminal (no colour, no live redraws).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from pgtenantproxy.dispatch.dispatcher import RoutingStats
from pgtenantproxy.dispatch.runtime import RoutingRuntime
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.metrics.monitor import GroupStats
from pgtenantproxy.migration import progress as ev
from pgtenantproxy.walkthrough.workload import Counters, Workload

#: Latency rows: (source, is a read) -> label.
SOURCES = {("unified", True): "unified reads", ("unified", False): "unified writes",
           ("tenant", True): "tenant reads", ("tenant", False): "tenant writes"}


@dataclass(frozen=True)
class Mark:
    at: float
    queries: int
    failed: int
    tenant: int
    unified: int
    fallback: int
    primary: int


@dataclass
class Figures:
    seconds: float
    queries: int  # since the mark
    failed: int  # since the mark
    total: Counters
    tenant_reads: int
    unified_reads: int
    fallbacks: int
    #: Queries of shops in tenant_primary, run on their own databases (reads and writes alike).
    primary: int = 0
    latency: dict[str, GroupStats] = field(default_factory=dict)
    shop_reads: dict[int, Counter[str]] = field(default_factory=dict)
    shop_writes: dict[int, Counter[str]] = field(default_factory=dict)
    phases: dict[int, str] = field(default_factory=dict)
    selected: dict[int, bool] = field(default_factory=dict)
    lag_ms: dict[int, float] = field(default_factory=dict)
    queued: dict[int, int] = field(default_factory=dict)

    @property
    def tenant_share(self) -> float:
        reads = self.tenant_reads + self.unified_reads
        return self.tenant_reads / reads if reads else 0.0


#: Reasons of the decisions that send a tenant_primary shop's queries (reads or writes) to its database.
PRIMARY_REASONS = frozenset({"tenant_primary", "pinned_transaction"})


def read_split(stats: RoutingStats) -> tuple[int, int, int]:
    """(tenant, unified, fallback) counts of tenant-eligible reads so far (shops not cut over)."""
    tenant = sum(n for (target, reason), n in stats.decisions.items()
                 if target == "tenant" and reason not in PRIMARY_REASONS)
    unified = sum(n for (target, reason), n in stats.decisions.items()
                  if target == "unified" and reason.startswith("strategy:"))
    return tenant, unified, stats.outcomes[("unified", "fallback")]


def primary_queries(stats: RoutingStats) -> int:
    """Queries of shops in tenant_primary sent to their databases so far."""
    return sum(n for (target, reason), n in stats.decisions.items()
               if target == "tenant" and reason in PRIMARY_REASONS)


class FigureTaker:
    def __init__(self, runtime: RoutingRuntime, mirror: DualWriteService, app: Any, workload: Workload,
                 shops: Sequence[int]) -> None:
        self.runtime = runtime
        self.mirror = mirror
        self.app = app
        self.workload = workload
        self.shops = tuple(shops)
        self.last = self._mark()

    def _mark(self) -> Mark:
        c = self.workload.counters
        stats = self.runtime.dispatcher.stats
        tenant, unified, fallback = read_split(stats)
        return Mark(time.monotonic(), c.queries, c.failed, tenant, unified, fallback, primary_queries(stats))

    def mark(self) -> None:
        self.last = self._mark()

    async def take(self) -> Figures:
        """The figures since the last mark (which becomes now)."""
        before, now = self.last, self._mark()
        self.last = now
        c = self.workload.counters
        status = self.mirror.status
        figures = Figures(
            seconds=now.at - before.at, queries=now.queries - before.queries,
            failed=now.failed - before.failed,
            total=Counters(c.reads, c.writes, c.failed, list(c.errors)),
            tenant_reads=now.tenant - before.tenant, unified_reads=now.unified - before.unified,
            fallbacks=now.fallback - before.fallback, primary=now.primary - before.primary,
            selected={s: self.runtime.dispatcher.selects(s) for s in self.shops},
            lag_ms={s: status.lag_ms(s) for s in self.shops},
            queued={s: status.queue_size(s) for s in self.shops},
        )
        records = await read_phases(self.runtime.tenancy.pool)
        figures.phases = {s: records[s].phase if s in records else ph.UNIFIED for s in self.shops}
        self._latency(figures, before.at)
        return figures

    def _latency(self, figures: Figures, since: float) -> None:
        recorder = self.app.recorder
        if recorder is None:
            return
        groups: dict[str, list[Any]] = {}
        slow_s = recorder.monitor.slow_s
        for sample in recorder.monitor.samples():
            if sample.at < since:
                continue
            read = sample.kind == "select"
            label = SOURCES.get((sample.source, read))
            if label is not None:
                groups.setdefault(label, []).append(sample)
            if sample.shop_id is not None:
                per_shop = figures.shop_reads if read else figures.shop_writes
                per_shop.setdefault(sample.shop_id, Counter())[sample.source] += 1
        figures.latency = {label: GroupStats.of(groups[label], slow_s) for label in SOURCES.values()
                           if label in groups}


# --- rendering -------------------------------------------------------------------------
def render(console: Console, figures: Figures) -> None:
    rate = figures.queries / figures.seconds if figures.seconds > 0 else 0.0
    console.print(
        f"workload: {figures.queries:,} queries in the last {figures.seconds:.1f}s ({rate:,.0f}/s), "
        f"{figures.failed} failed; {figures.total.queries:,} queries so far, {figures.total.failed} failed")
    console.print(
        f"routing split of the shop reads: {figures.unified_reads:,} unified, "
        f"{figures.tenant_reads:,} tenant ({figures.tenant_share:.0%} on tenant), "
        f"{figures.fallbacks} fallbacks")
    unified_writes = sum(w["unified"] for w in figures.shop_writes.values())
    tenant_writes = sum(w["tenant"] for w in figures.shop_writes.values())
    console.print(f"shop writes: {unified_writes:,} on unified, {tenant_writes:,} on the tenant databases; "
                  f"{figures.primary:,} queries of cut-over shops ran on their own databases")
    console.print(_latency_table(figures))
    console.print(_shop_table(figures))


def _latency_table(figures: Figures) -> Table:
    table = Table("latency by source", "queries", "P50 ms", "P95 ms", "P99 ms", title_justify="left")
    for label in SOURCES.values():
        stats = figures.latency.get(label)
        if stats is None:
            table.add_row(label, "0", "-", "-", "-")
        else:
            table.add_row(label, f"{stats.total:,}", f"{stats.p50_ms:.2f}", f"{stats.p95_ms:.2f}",
                          f"{stats.p99_ms:.2f}")
    return table


def _shop_table(figures: Figures) -> Table:
    table = Table("shop")
    table.add_column("phase", no_wrap=True)
    for header in ("strategy", "mirror lag", "queued", "reads unified / tenant", "writes unified / tenant"):
        table.add_column(header)
    for shop, phase in figures.phases.items():
        reads = figures.shop_reads.get(shop, Counter())
        writes = figures.shop_writes.get(shop, Counter())
        lag = figures.lag_ms.get(shop, 0.0)
        table.add_row(
            str(shop), phase, "tenant" if figures.selected.get(shop) else "unified",
            "?" if lag == float("inf") else f"{lag:,.0f} ms", str(figures.queued.get(shop, 0)),
            f"{reads['unified']:,} / {reads['tenant']:,}", f"{writes['unified']:,} / {writes['tenant']:,}",
        )
    return table


class BackfillLines:
    """Backfill progress as plain lines: each shop's start and end, and the whole run at every quarter."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0
        self.done = 0
        self.quarter = 0
        self.started = time.monotonic()

    def __call__(self, event: ev.ProgressEvent) -> None:
        if event.kind == ev.ESTIMATE:
            self.total += event.rows_total
        elif event.kind == ev.SHOP_STARTED:
            self.console.print(f"  shop {event.shop_id}: copying {event.rows_total:,} rows "
                               f"of {event.tables_total} tables")
        elif event.kind == ev.CHUNK:
            self.done += event.rows
            self._overall()
        elif event.kind == ev.SHOP_DONE:
            self.console.print(f"  shop {event.shop_id}: {event.status}, {event.rows:,} rows"
                               + (f" ({event.detail})" if event.detail else ""), markup=False)

    def _overall(self) -> None:
        if not self.total:
            return
        quarter = min(4, self.done * 4 // self.total)
        if quarter > self.quarter:
            self.quarter = quarter
            seconds = max(time.monotonic() - self.started, 1e-6)
            self.console.print(f"  all shops: {self.done:,}/{self.total:,} rows ({quarter * 25}%), "
                               f"{self.done / seconds:,.0f} rows/s")
