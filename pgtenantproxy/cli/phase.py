"""``pgtenantproxy phase --shop N [--set PHASE --reason TEXT [--force]]``: a shop's phase, history, a move.

Without ``--set``: the shop's phase, version and reason, and its last phase
changes from the audit log. With ``--set``: one move through the state
machine (refused, with what the shop needs first, when the rule book does not
allow it), fenced on the version read and audited with ``--reason``.
``--force`` skips the rule book (a repair, audited as ``phase force``): use
it only when the record is wrong, never to skip a step's work.
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
from pgtenantproxy.lifecycle.phases import PHASES, ShopPhase
from pgtenantproxy.lifecycle.store import force_phase, read_phase, transition
from pgtenantproxy.tenancy.service import TenancyService

_HISTORY = """SELECT at, action, step, detail, actor FROM pgtenantproxy.migration_log
              WHERE shop_id = $1 AND action IN ('phase', 'phase force', 'keeper', 'backfill', 'fence')
              ORDER BY id DESC LIMIT $2"""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "phase", help="show a shop's migration phase and history, or move it", description=__doc__
    )
    parser.add_argument("--shop", type=int, required=True, metavar="N")
    parser.add_argument("--set", choices=PHASES, metavar="PHASE", help=f"move to PHASE ({', '.join(PHASES)})")
    parser.add_argument("--reason", help="why (recorded in the audit log); required with --set")
    parser.add_argument("--force", action="store_true", help="skip the state machine's rules (repair only)")
    parser.add_argument("--history", type=int, default=10, metavar="K", help="audit rows shown (default 10)")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.set and not args.reason:
        raise CommandError("--set needs --reason (it goes to the audit log)", status=2)
    if args.force and not args.set:
        raise CommandError("--force goes with --set", status=2)
    config = config_from_args(args)
    try:
        record, history = asyncio.run(_run(config, args))
    except MigrationError as exc:
        raise CommandError(str(exc)) from None
    _print(record, history, Console())
    return 0


async def _run(config: Config, args: argparse.Namespace) -> tuple[ShopPhase, list[Any]]:
    service = await open_control_plane(config, TenancyService.open(config, need_key=False, pool_size=1))
    try:
        async with service.pool.acquire() as conn:
            if args.set and args.force:
                await force_phase(conn, args.shop, args.set, reason=args.reason, actor="cli")
            elif args.set:
                await transition(conn, args.shop, args.set, reason=args.reason, actor="cli")
            history = list(await conn.fetch(_HISTORY, args.shop, args.history))
            return await read_phase(conn, args.shop), history
    finally:
        await service.close()


def _print(record: ShopPhase, history: list[Any], console: Console) -> None:
    interrupted = f" (interrupted {record.resume_phase})" if record.resume_phase else ""
    console.print(f"shop {record.shop_id}: [bold]{record.phase}[/bold]{interrupted}, version {record.version}"
                  + (f" — {record.reason}" if record.reason else "")
                  + (" [yellow](writes held by a fence)[/yellow]" if record.holding else ""))
    if not history:
        return
    table = Table("at", "action", "step", "detail", "actor")
    for row in history:
        table.add_row(f"{row['at']:%Y-%m-%d %H:%M:%S}", row["action"], row["step"] or "", row["detail"] or "",
                      row["actor"])
    console.print(table)
