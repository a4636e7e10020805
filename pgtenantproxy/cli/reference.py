"""``pgtenantproxy reference sync|status``: the read-only copies of global tables in every shop database.

* ``reference sync [--shop N ...] [--json]``: one round of
  :class:`~pgtenantproxy.migration.reference.ReferenceSync` now (the proxy's
  phase keeper runs it every ``[tenancy] reference_sync_interval_s``): capture
  triggers on the ``[[tenancy.reference_tables]]``, each shop's copies created,
  filled or refreshed, copies of tables no longer listed dropped. Needs the
  tenant encryption key and the tenant servers' admin passwords. Exit status 0,
  or 1 when a table or a shop failed (each is named).
* ``reference status [--json]``: per shop and table, the copy's rows, when it
  was last brought up to date, its lag (age of the oldest change not in it
  yet) and pending changes; a configured table a shop has no copy of is
  listed as missing. Reads the control schema only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.reference import HAS_DATABASE, CopyState, read_copy_states
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration.reference import ReferenceReport, ReferenceSync
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.service import TenancyService


def register(sub: Any) -> None:
    ref: argparse.ArgumentParser = sub.add_parser(
        "reference", help="read-only copies of global tables in every shop database", description=__doc__)
    actions = ref.add_subparsers(dest="action", metavar="ACTION", required=True)
    sync = actions.add_parser("sync", help="bring every shop's reference copies up to date now")
    sync.add_argument("--shop", type=int, action="append", metavar="N", help="only this shop (repeatable)")
    status = actions.add_parser("status", help="per shop and table: rows, last update, lag")
    for parser in (sync, status):
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        add_config_argument(parser)
    sync.set_defaults(func=_run_sync)
    status.set_defaults(func=_run_status)


def _run_sync(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = asyncio.run(_sync(config, args.shop))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print_sync(report, Console())
    return 0 if report.ok else 1


async def _sync(config: Config, shops: list[int] | None) -> ReferenceReport:
    tenancy = await open_control_plane(config, TenancyService.open(config, need_key=True, pool_size=6))
    try:
        return await ReferenceSync(tenancy, lambda: config).run_once(shops)
    except (MigrationError, TenancyError, asyncpg.PostgresError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        await tenancy.close()


def _print_sync(report: ReferenceReport, console: Console) -> None:
    for result in report:
        if result.error is not None:
            console.print(f"[red]{result.describe()}[/red]")
        elif result.action != "current":
            console.print(result.describe())
    current = sum(1 for r in report if r.action == "current")
    for label in report.installed:
        console.print(f"capture triggers installed on {label}")
    for label in report.removed:
        console.print(f"capture triggers removed from {label}")
    for error in report.table_errors.values():
        console.print(f"[red]{error}[/red]")
    style = "green" if report.ok else "red"
    console.print(f"[{style}]{'ok' if report.ok else 'failed'}[/{style}]: {len(report)} copies "
                  f"({current} already current), {report.pruned} changes pruned, {report.seconds:.1f}s")


def _run_status(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    rows = asyncio.run(_status(config))
    if args.json:
        print(json.dumps({"tables": [r.table for r in config.tenancy.reference_tables],
                          "copies": rows}, indent=2, default=str))
        return 0
    table = Table("shop", "table", "rows", "applied at", "lag s", "pending")
    for r in rows:
        if r["missing"]:
            table.add_row(str(r["shop_id"]), r["table"], "[yellow]missing[/yellow]", "", "", "")
        else:
            lag = f"{r['lag_seconds']:.1f}"
            table.add_row(str(r["shop_id"]), r["table"], str(r["rows"]),
                          f"{r['applied_at']:%Y-%m-%d %H:%M:%S}",
                          lag if r["pending"] == 0 else f"[yellow]{lag}[/yellow]", str(r["pending"]))
    console = Console()
    console.print(table)
    missing = sum(1 for r in rows if r["missing"])
    console.print(f"{len(rows) - missing} copies, {missing} missing")
    return 0


async def _status(config: Config) -> list[dict[str, Any]]:
    service = await open_control_plane(config, TenancyService.open(config, need_key=False, pool_size=1))
    try:
        async with service.pool.acquire() as conn:
            states = await read_copy_states(conn)
            phases = await read_phases(conn)
    finally:
        await service.close()
    labels = [r.table for r in config.tenancy.reference_tables]
    by_key: dict[tuple[int, str], CopyState] = {(s.shop_id, s.table): s for s in states}
    with_db = {s for s, p in phases.items() if p.effective in HAS_DATABASE}
    shops = sorted(with_db | {s.shop_id for s in states})
    out: list[dict[str, Any]] = []
    for shop in shops:
        for label in sorted({*labels, *(t for s, t in by_key if s == shop)}):
            state = by_key.get((shop, label))
            if state is None:
                out.append({"shop_id": shop, "table": label, "missing": True})
                continue
            out.append({"shop_id": shop, "table": label, "missing": False, "configured": label in labels,
                        "rows": state.rows, "applied_id": state.applied_id, "applied_at": state.applied_at,
                        "lag_seconds": round(state.lag_s, 3), "pending": state.pending})
    return out
