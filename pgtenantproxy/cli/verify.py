"""``pgtenantproxy verify --shop N [--shop M ...] | --all [--json]``: compare tenant databases with unified.

Per shop and table: row counts on both sides, content checksums over
primary-key ranges, and the keys that differ (missing on the tenant, extra on
the tenant, changed), re-checked after the mirror drained so writes in flight
raise no false alarm (see :mod:`pgtenantproxy.migration.verify`). ``--all``
takes every shop from ``backfilled`` to ``tenant_primary``; ``--shop`` also
accepts a ``provisioned`` shop. ``--json`` prints the report the admin API
returns. Exit status: 0 identical, 1 different, 2 error. Needs the tenant
encryption key (it reads the tenant databases as the shops' roles).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rich.console import Console
from rich.table import Table

from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.migration.verify_report import (
    CATEGORIES,
    DIFFERENT,
    ERROR,
    IDENTICAL,
    ShopVerification,
    VerificationReport,
)
from pgtenantproxy.tenancy.service import TenancyService

EXIT = {IDENTICAL: 0, DIFFERENT: 1, ERROR: 2}
STYLE = {IDENTICAL: "green", DIFFERENT: "red", ERROR: "red"}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "verify", help="compare each shop's tenant database with its rows in unified", description=__doc__
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shop", type=int, action="append", metavar="N", help="shop to verify (repeatable)")
    which.add_argument("--all", action="store_true", help="every shop from backfilled to tenant_primary")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = asyncio.run(_verify(config, None if args.all else list(args.shop)))
    if args.json:
        print(report.to_json())
    else:
        _print(report, Console())
    return EXIT[report.status]


async def _verify(config: Config, shops: list[int] | None) -> VerificationReport:
    opening = TenancyService.open(config, need_key=True, pool_size=config.migration.jobs + 2)
    tenancy = await open_control_plane(config, opening)
    try:
        return await verify_shops(tenancy, shops, config=config)
    except MigrationError as exc:
        raise CommandError(str(exc), status=2) from None
    finally:
        await tenancy.close()


def _print(report: VerificationReport, console: Console) -> None:
    if not report.shops:
        console.print("no shop to verify (none is between backfilled and tenant_primary)")
        return
    for shop in report.shops:
        _print_shop(shop, console)
    for line in report.foreign_key_lines():
        console.print(line)
    rows_s = report.rows / report.seconds if report.seconds > 0 else 0.0
    style = STYLE[report.status]
    console.print(f"[{style}]{report.status}[/{style}]: {len(report.shops)} shops, {report.rows} rows "
                  f"in {report.seconds:.1f}s ({rows_s:,.0f} rows/s)")


def _print_shop(shop: ShopVerification, console: Console) -> None:
    style = STYLE[shop.status]
    notes = [] if shop.drained else ["the mirror did not drain in time"]
    if shop.degraded:
        notes.append(f"mirror degraded: {shop.degraded_reason} ({shop.dead_letters} dead letters)")
    console.print(f"shop {shop.shop_id} ({shop.phase}): [{style}]{shop.status}[/{style}]"
                  + (f" [yellow]{'; '.join(notes)}[/yellow]" if notes else ""))
    if shop.error is not None:
        console.print(f"  [red]{shop.error}[/red]")
        return
    table = Table("table", "rows unified", "rows tenant", "ranges", "differing ranges", "missing", "extra",
                  "changed", "unsettled", "status")
    for t in shop.tables:
        tstyle = STYLE[t.status]
        table.add_row(t.table, str(t.rows_unified), str(t.rows_tenant), str(t.ranges),
                      str(t.differing_ranges.count), *(str(t.count(c)) for c in CATEGORIES),
                      f"[{tstyle}]{t.status}[/{tstyle}]")
    console.print(table)
    for t in shop.tables:
        if t.error is not None:
            console.print(f"  [red]{t.error}[/red]")
        for category in CATEGORIES:
            keys = t.keys[category]
            if keys.count:
                more = f" (and {keys.count - len(keys.keys)} more)" if keys.count > len(keys.keys) else ""
                console.print(f"  {t.table} {category.replace('_', ' ')}: {', '.join(keys.keys)}{more}")
