"""The walkthrough's figures: the routing split from the dispatcher's counters, and the printed lines."""

from __future__ import annotations

import io
from collections import Counter

from rich.console import Console

from pgtenantproxy.dispatch.dispatcher import RoutingStats
from pgtenantproxy.metrics.monitor import GroupStats, Sample
from pgtenantproxy.migration import progress as ev
from pgtenantproxy.walkthrough.figures import (
    BackfillLines,
    Figures,
    primary_queries,
    read_split,
    render,
)
from pgtenantproxy.walkthrough.workload import Counters


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, highlight=False), out


def test_read_split_counts_tenant_reads_strategy_kept_reads_and_fallbacks_but_not_writes() -> None:
    stats = RoutingStats()
    stats.decisions.update({
        ("tenant", "tenant"): 5, ("tenant", "activated"): 2,
        ("unified", "strategy:not_selected"): 3, ("unified", "strategy:not_eligible"): 4,
        ("unified", "write"): 7, ("unified", "transaction_block"): 1, ("unified", "global_table"): 6,
        ("tenant", "tenant_primary"): 9, ("tenant", "pinned_transaction"): 2,
    })
    stats.outcomes.update({("unified", "fallback"): 1, ("tenant", "ok"): 6, ("unified", "ok"): 20})
    assert read_split(stats) == (7, 7, 1)  # a cut-over shop's queries are not counted as routed reads
    assert primary_queries(stats) == 11


def test_backfill_lines_print_each_shop_and_the_whole_run_at_each_quarter_reached() -> None:
    con, out = console()
    lines = BackfillLines(con)
    lines(ev.ProgressEvent(ev.ESTIMATE, 1, rows_total=100))
    lines(ev.ProgressEvent(ev.ESTIMATE, 2, rows_total=100))
    lines(ev.ProgressEvent(ev.SHOP_STARTED, 1, rows_total=100, tables_total=3))
    for rows in (40, 20, 100, 40):
        lines(ev.ProgressEvent(ev.CHUNK, 1, table="public.repairs", rows=rows))
    lines(ev.ProgressEvent(ev.SHOP_DONE, 1, rows=200, status="backfilled"))
    lines(ev.ProgressEvent(ev.SHOP_DONE, 2, rows=0, status="failed", detail="tenant unreachable"))
    text = out.getvalue()
    assert "shop 1: copying 100 rows of 3 tables" in text
    overall = [line.strip().split(" rows (")[0] for line in text.splitlines() if "all shops" in line]
    assert overall == ["all shops: 60/200", "all shops: 160/200", "all shops: 200/200"]
    assert "(25%)" in text and "(75%)" in text and "(100%)" in text and "(50%)" not in text
    assert "shop 1: backfilled, 200 rows" in text
    assert "shop 2: failed, 0 rows (tenant unreachable)" in text


def test_render_shows_the_split_the_latency_by_source_and_every_shop() -> None:
    samples = [Sample(0.0, 1, "tenant", "select", "repairs", 0.002, "ok")] * 3
    figures = Figures(
        seconds=2.0, queries=40, failed=0, total=Counters(reads=100, writes=50), tenant_reads=3,
        unified_reads=1, fallbacks=0, latency={"tenant reads": GroupStats.of(samples, 1.0)},
        shop_reads={1: Counter(tenant=3), 2: Counter(unified=1)},
        shop_writes={1: Counter(tenant=2), 2: Counter(unified=4)}, primary=5,
        phases={1: "reads_on_tenant", 2: "mirroring"}, selected={1: True, 2: False},
        lag_ms={1: 12.0, 2: float("inf")}, queued={1: 2, 2: 0},
    )
    con, out = console()
    render(con, figures)
    text = out.getvalue()
    assert "40 queries in the last 2.0s (20/s), 0 failed; 150 queries so far, 0 failed" in text
    assert "1 unified, 3 tenant (75% on tenant), 0 fallbacks" in text
    assert "│ tenant reads      │ 3       │ 2.00   │ 2.00   │ 2.00   │" in text
    assert "│ unified writes    │ 0       │ -" in text
    rows = [" ".join(line.replace("│", " ").split()) for line in text.splitlines()]
    assert "1 reads_on_tenant tenant 12 ms 2 0 / 3 0 / 2" in rows
    assert "2 mirroring unified ? 0 1 / 0 4 / 0" in rows
    assert "shop writes: 4 on unified, 2 on the tenant databases; 5 queries of cut-over shops ran" in text
