"""``pgtenantproxy backfill --shop N [--shop M] | --all``: copy shops' rows into their tenant databases.

Progress bars per shop and overall (rows, rows/s, ETA), then a summary table.
Exit status 0 when every shop was backfilled (or was already), 1 when any was
refused or failed (each with its reason), 2 when the control plane cannot be
opened. With ``--wait`` (the default) each copied shop then waits for its mirror
to drain what was written during the copy (a mirror worker must be running: the
proxy, or ``pgtenantproxy mirror``) and moves on to ``mirroring``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pgtenantproxy.app import install_uvloop
from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.migration import progress as ev
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.backfill_report import BackfillReport
from pgtenantproxy.tenancy.service import TenancyService


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "backfill", help="copy shops' rows from unified into their tenant databases", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shop", type=int, action="append", metavar="N", help="this shop (repeatable)")
    which.add_argument("--all", action="store_true",
                       help="every shop in provisioned or backfilling (or failed while backfilling)")
    parser.add_argument("--jobs", type=_positive, default=None, help="shops at once ([migration] jobs)")
    parser.add_argument("--throttle", type=_non_negative, default=None, metavar="ROWS_PER_S",
                        help="rows per second over all shops, 0 = no limit ([migration] throttle_rows_per_s)")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait for each shop's mirror to drain, then move it to mirroring (default: on)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console(stderr=args.json)
    install_uvloop()
    report = asyncio.run(_backfill(config, args, console))
    if args.json:
        print(report.to_json())
    else:
        _summary(report, console)
    return 0 if report.ok else 1


async def _backfill(config: Config, args: argparse.Namespace, console: Console) -> BackfillReport:
    jobs = args.jobs or config.migration.jobs
    tenancy = await open_control_plane(config, TenancyService.open(config, pool_size=2 * jobs + 2))
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), RowsColumn(), RateColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as bars:
            view = ProgressView(bars)
            report = await backfill_shops(tenancy, None if args.all else args.shop, jobs=jobs,
                                          throttle=args.throttle, progress=view, wait=args.wait)
    finally:
        await tenancy.close()
    if not report.shops:
        raise CommandError("no shop is waiting for a backfill (see pgtenantproxy status)", status=0)
    return report


class RowsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = f"{int(task.total):,}" if task.total is not None else "?"
        return Text(f"{int(task.completed):,}/{total} rows")


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")


class ProgressView:
    """Progress events -> one bar per shop and one overall bar."""

    def __init__(self, bars: Progress) -> None:
        self.bars = bars
        self.overall = bars.add_task("all shops", total=0)
        self.shops: dict[int, TaskID] = {}
        self.estimates: dict[int, int] = {}

    def _bar(self, shop_id: int) -> TaskID:
        if shop_id not in self.shops:
            self.shops[shop_id] = self.bars.add_task(f"shop {shop_id}", total=self.estimates.get(shop_id))
        return self.shops[shop_id]

    def __call__(self, event: ev.ProgressEvent) -> None:
        if event.kind == ev.ESTIMATE:
            self.estimates[event.shop_id] = event.rows_total
            self.bars.update(self.overall, total=sum(self.estimates.values()))
        elif event.kind == ev.SHOP_STARTED:
            self._retotal(event)
        elif event.kind == ev.CHUNK:
            self.bars.advance(self._bar(event.shop_id), event.rows)
            self.bars.advance(self.overall, event.rows)
        elif event.kind == ev.SHOP_DONE:
            bar = self._bar(event.shop_id)
            done = self.bars.tasks[bar].completed
            self.bars.update(bar, total=done, description=f"shop {event.shop_id}: {event.status}")

    def _retotal(self, event: ev.ProgressEvent) -> None:
        """The shop's rows counted in its snapshot replace the estimate (in both bars)."""
        bar = self._bar(event.shop_id)
        before = self.estimates.get(event.shop_id, 0)
        self.estimates[event.shop_id] = event.rows_total
        self.bars.update(bar, total=event.rows_total, completed=event.rows_done)
        overall = self.bars.tasks[self.overall]
        self.bars.update(self.overall, total=(overall.total or 0) - before + event.rows_total,
                         completed=overall.completed + event.rows_done)


def _summary(report: BackfillReport, console: Console) -> None:
    table = Table("shop", "result", "rows", "MB", "seconds", "rows/s", "detail")
    colour = {"backfilled": "green", "mirroring": "green", "done_already": "cyan"}
    for s in report.shops:
        style = colour.get(s.status, "red")
        table.add_row(str(s.shop_id), f"[{style}]{s.status}[/{style}]", f"{s.rows:,}",
                      f"{s.bytes / 1e6:.1f}", f"{s.seconds:.1f}", f"{s.rows_per_s:,.0f}", s.detail or "")
    console.print(table)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.by_status().items()))
    rate = report.rows / report.seconds if report.seconds else 0.0
    console.print(f"{len(report.shops)} shops ({counts}): {report.rows:,} rows, {report.bytes / 1e6:.1f} MB "
                  f"in {report.seconds:.1f}s ({rate:,.0f} rows/s)"
                  + (f", {report.throttled_s:.1f}s throttled" if report.throttled_s else ""))
