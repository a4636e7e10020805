"""``pgtenantproxy retire --shop N [--shop M ...] | --all [--dry-run | --check] [--force] [--json]``.

Legacy rows out of unified. Per shop, the gate (phase ``tenant_primary``,
reverse mirror drained, no statement touching it refused by the proxies within
``[migration] readiness_window_s`` unless ``--force``, verification identical
unless ``verify_before_retirement = false``), then the shop's rows are
archived to ``[migration] archive_dir/shop_<N>/`` (binary COPY per table,
sha256 checked) and deleted from unified in one transaction, and the shop
moves to ``retired`` (see :mod:`pgtenantproxy.migration.retire`). ``--all``
takes every shop in ``tenant_primary``; when that leaves no shop outside
``retired``, the whole tables are also dumped (``pg_dump --data-only``) and
truncated. ``--dry-run`` (or ``--check``) prints the gate's verdicts, the
rows that would leave and, per shop, the statements the proxies refused while
it was ``tenant_primary`` (count, last seen, fingerprint, sample: they would
be refused after its retirement too), and changes nothing. ``--force``
retires past those statements (audited as ``forced``). Exit status: 0 every
shop retired (or would be), 1 a shop blocked or failed, 2 error.
``pgtenantproxy restore --shop N`` undoes it.
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
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.retire_report import BLOCKED, FAILED, RETIRED, RetirementReport, ShopRetirement
from pgtenantproxy.tenancy.service import TenancyService

STYLE = {BLOCKED: "red", FAILED: "red"}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "retire", help="archive and delete retired shops' legacy rows from unified", description=__doc__
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--shop", type=int, action="append", metavar="N", help="shop to retire (repeatable)")
    which.add_argument("--all", action="store_true", help="every shop in tenant_primary")
    parser.add_argument("--dry-run", "--check", dest="dry_run", action="store_true",
                        help="print the plan, the gate and the refused statements; change nothing")
    parser.add_argument("--force", action="store_true",
                        help="retire even when the proxies refused statements touching the shop")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = asyncio.run(_retire(config, None if args.all else list(args.shop), args.dry_run, args.force))
    if args.json:
        print(report.to_json())
    else:
        print_report(report, Console())
    return 0 if report.ok else 1


async def _retire(config: Config, shops: list[int] | None, dry_run: bool, force: bool) -> RetirementReport:
    opening = TenancyService.open(config, need_key=True, pool_size=config.migration.jobs + 2)
    tenancy = await open_control_plane(config, opening)
    try:
        return await retire_shops(tenancy, shops, config=config, dry_run=dry_run, force=force)
    except MigrationError as exc:
        raise CommandError(str(exc), status=2) from None
    finally:
        await tenancy.close()


def print_report(report: RetirementReport, console: Console) -> None:
    if not report.shops:
        console.print("no shop to retire (none is in tenant_primary)")
    table = Table("shop", "phase", "outcome", "rows", "archive", "why / notes")
    for shop in report.shops:
        style = STYLE.get(shop.status, "green")
        notes = "; ".join(shop.reasons + shop.warnings) or (shop.verification or "")
        table.add_row(str(shop.shop_id), shop.phase, f"[{style}]{shop.status}[/{style}]",
                      str(shop.total_rows), shop.archive or "", notes)
    console.print(table)
    if report.dry_run and report.shops:
        for shop in report.shops:
            per_table = ", ".join(f"{t} {n}" for t, n in shop.rows.items())
            console.print(f"shop {shop.shop_id}: {per_table or 'not counted'}")
    for shop in report.shops:
        if shop.refused_statements:
            print_refused(shop, report.dry_run, console)
    if report.every_shop_retired:
        verb = "would be" if report.dry_run else "were"
        console.print(f"every shop retired: the whole tables {verb} dumped and truncated")
    if report.dump is not None:
        console.print(f"pg_dump: {report.dump.path} ({report.dump.bytes} bytes, sha256 {report.dump.sha256})")
    for error in report.errors:
        console.print(f"[red]{error}[/red]")
    what = "would retire" if report.dry_run else "retired"
    console.print(f"{what} {report.rows} rows of {len([s for s in report.shops if s.status not in STYLE])} "
                  f"shops in {report.seconds:.1f}s")


def print_refused(shop: ShopRetirement, dry_run: bool, console: Console) -> None:
    """The statements refused while the shop was tenant_primary: fingerprint, sample, count, last seen."""
    if shop.forced:
        how = "would retire" if dry_run else ("retired" if shop.status == RETIRED else "forced")
        head = f"shop {shop.shop_id}: {how} with --force past these statements, refused (0A000) while it " \
               "was tenant_primary and refused after its retirement too:"
    else:
        head = f"shop {shop.shop_id}: refused (0A000) while it was tenant_primary, and would be refused " \
               "after its retirement too (--force retires anyway):"
    console.print(head, style="yellow" if shop.forced else "red")
    table = Table("count", "last seen", "fingerprint", "sample")
    for c in shop.refused_statements:
        table.add_row(str(c.count), f"{c.last_seen:%Y-%m-%d %H:%M:%S}", c.fingerprint, c.sample)
    console.print(table)
