"""``pgtenantproxy cutover --shop N | --percentage P [--check] [--force]`` and ``rollback --shop N``.

``cutover --check`` prints the readiness report: per shop, the transactions
the proxies saw that wrote the shop and touched global tables or other shops
(SQL fingerprints, counts, a sample). ``cutover`` moves each shop's writes to
its own database behind a short per-shop fence (see
:mod:`pgtenantproxy.migration.cutover`); it refuses a shop with such
transactions unless ``--force`` (they then get an error, SQLSTATE 0A000).
``rollback --shop N`` takes the shop one phase back
(:mod:`pgtenantproxy.migration.rollback`). ``--json`` prints the report the
admin API returns. Exit status: 0 done, 1 refused or aborted, 2 error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.cutover import CutoverContext, cutover_shops, shops_below
from pgtenantproxy.migration.cutover_report import ALREADY, DONE, FenceReport
from pgtenantproxy.migration.readiness import Readiness, readiness
from pgtenantproxy.migration.rollback import rollback_shops
from pgtenantproxy.tenancy.service import TenancyService


def register(sub: Any) -> None:
    cut: argparse.ArgumentParser = sub.add_parser(
        "cutover", help="move shops' writes to their own databases (or --check readiness)",
        description=__doc__)
    which = cut.add_mutually_exclusive_group(required=True)
    which.add_argument("--shop", type=int, action="append", metavar="N", help="shop (repeatable)")
    which.add_argument("--percentage", type=int, metavar="P",
                       help="the shops in reads_on_tenant whose stable bucket is below P (0-100)")
    cut.add_argument("--check", action="store_true", help="only print the readiness report")
    cut.add_argument("--force", action="store_true",
                     help="cut over even with transactions that touch global tables or other shops")
    cut.add_argument("--json", action="store_true")
    add_config_argument(cut)
    cut.set_defaults(func=run_cutover)
    back: argparse.ArgumentParser = sub.add_parser(
        "rollback", help="take shops one migration phase back", description=__doc__)
    back.add_argument("--shop", type=int, action="append", metavar="N", required=True)
    back.add_argument("--json", action="store_true")
    add_config_argument(back)
    back.set_defaults(func=run_rollback)


def run_cutover(args: argparse.Namespace) -> int:
    if args.percentage is not None and not 0 <= args.percentage <= 100:
        raise CommandError("--percentage must be between 0 and 100", status=2)
    config = config_from_args(args)
    if args.check:
        ready = asyncio.run(_check(config, args.shop, args.percentage))
        _show_readiness(ready, args.json, Console())
        return 0 if all(r.ready for r in ready.values()) else 1
    report = asyncio.run(_cutover(config, args.shop, args.percentage, args.force))
    return _show(report, args.json)


def run_rollback(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = asyncio.run(_rollback(config, args.shop))
    return _show(report, args.json)


async def _open(config: Config) -> TenancyService:
    return await open_control_plane(config, TenancyService.open(config, need_key=True, pool_size=4))


async def _check(config: Config, shops: list[int] | None, percentage: int | None) -> dict[int, Readiness]:
    tenancy = await _open(config)
    try:
        chosen = shops if shops is not None else await shops_below(tenancy.pool, percentage or 0)
        return await readiness(tenancy.pool, chosen, tenancy=config.tenancy,
                               window_s=config.migration.readiness_window_s)
    finally:
        await tenancy.close()


async def _cutover(
    config: Config, shops: list[int] | None, percentage: int | None, force: bool
) -> FenceReport:
    tenancy = await _open(config)
    try:
        return await cutover_shops(tenancy, shops, percentage=percentage, config=config, force=force,
                                   actor="cli")
    except MigrationError as exc:
        raise CommandError(str(exc), status=2) from None
    finally:
        await tenancy.close()


async def _rollback(config: Config, shops: list[int]) -> FenceReport:
    tenancy = await _open(config)
    try:
        results = await rollback_shops(CutoverContext(tenancy, config, actor="cli"), shops)
        return FenceReport("rollback", results)
    except MigrationError as exc:
        raise CommandError(str(exc), status=2) from None
    finally:
        await tenancy.close()


def _show(report: FenceReport, as_json: bool) -> int:
    if as_json:
        print(report.to_json())
    else:
        console = Console()
        table = Table("shop", "outcome", "phase", "writes held ms", "detail")
        for r in report.shops:
            pause = "" if r.pause_s is None else f"{r.pause_s * 1000:.0f}"
            style = "green" if r.ok else "red"
            table.add_row(str(r.shop_id), f"[{style}]{r.status}[/{style}]", r.phase or "", pause,
                          r.detail or "")
        console.print(table)
        pauses = report.as_dict()["pause_ms"]
        if pauses["p50"] is not None:
            console.print(f"write pause: P50 {pauses['p50']} ms, P99 {pauses['p99']} ms, "
                          f"max {pauses['max']} ms")
    return 0 if all(r.status in (DONE, ALREADY) for r in report.shops) else 1


def _show_readiness(ready: dict[int, Readiness], as_json: bool, console: Console) -> None:
    if as_json:
        print(json.dumps({"shops": [r.as_dict() for r in ready.values()]}, indent=2))
        return
    for shop, r in ready.items():
        if r.ready:
            console.print(f"shop {shop}: [green]ready[/green] (no statement seen that could not be placed on "
                          "its database once cut over)")
        else:
            console.print(f"shop {shop}: [red]not ready[/red]: after its cutover these would be refused "
                          "(0A000)")
            _conflict_table(r, console)
        for line in r.refused_lines():
            console.print(line)
    for line in next(iter(ready.values())).foreign_key_lines() if ready else ():
        console.print(line)


def _conflict_table(r: Readiness, console: Console) -> None:
    table = Table("kind", "count", "last seen", "fingerprint", "sample")
    for c in r.conflicts:
        table.add_row(c.kind, str(c.count), f"{c.last_seen:%Y-%m-%d %H:%M:%S}", c.fingerprint, c.sample)
    console.print(table)
