"""Write mirroring commands.

* ``pgtenantproxy dual-write enable|disable|status``: install or remove write
  capture on the tenant tables; show where mirroring stands.
* ``pgtenantproxy mirror``: run the mirror worker on its own until SIGTERM/SIGINT
  (as many as you like, on any machines: shops are leased, never applied twice
  at once).
* ``pgtenantproxy dlq list|replay [--shop N]``: dead letters; replay moves them
  back to the outbox once the cause is repaired.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from pgtenantproxy.app import install_uvloop
from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite import dlq
from pgtenantproxy.dualwrite.capture import installed_tables
from pgtenantproxy.dualwrite.errors import DualWriteError
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.tenancy.errors import TenancyError


def register(sub: Any) -> None:
    dw: argparse.ArgumentParser = sub.add_parser("dual-write", help="install or remove write capture")
    dw_sub = dw.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("enable", "install capture triggers on the tenant tables"),
        ("disable", "remove them (the outbox still drains; the app keeps running on unified)"),
        ("status", "captured tables, queue, lag and degraded shops"),
    ):
        parser = dw_sub.add_parser(action, help=text)
        add_config_argument(parser)
        parser.set_defaults(func=_run_dual_write, action=action)

    mirror = sub.add_parser("mirror", help="run the mirror worker until SIGTERM")
    add_config_argument(mirror)
    mirror.set_defaults(func=_run_mirror)

    q: argparse.ArgumentParser = sub.add_parser("dlq", help="dead letters of the mirror")
    q_sub = q.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = q_sub.add_parser("list", help="show dead letters")
    listing.add_argument("--limit", type=int, default=100)
    replay = q_sub.add_parser("replay", help="move dead letters back to the outbox")
    for parser in (listing, replay):
        add_config_argument(parser)
        parser.add_argument("--shop", type=int, default=None, help="only this shop")
        parser.set_defaults(func=_run_dlq)
    listing.set_defaults(action="list")
    replay.set_defaults(action="replay")


def _call(config: Config, work: Callable[[DualWriteService], Awaitable[int]], *, worker: bool = False) -> int:
    """Open the service (exit 2 if that fails: key, unreachable unified), run ``work`` (exit 1 on errors)."""

    async def main() -> int:
        svc = await open_control_plane(config, DualWriteService.open(config, run_worker=worker))
        try:
            return await work(svc)
        except (DualWriteError, TenancyError, asyncpg.PostgresError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            await svc.close()

    install_uvloop()
    return asyncio.run(main())


def _run_dual_write(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console()

    async def work(svc: DualWriteService) -> int:
        if args.action == "enable":
            tables = await svc.enable()
            console.print(f"write capture enabled on {len(tables)} tables: "
                          + ", ".join(t.label for t in tables))
        elif args.action == "disable":
            removed = await svc.disable()
            pending = await svc.pending()
            console.print(f"write capture removed from {len(removed)} tables; "
                          f"{pending} entries still queued for the mirror")
        else:
            await _print_status(svc, console)
        return 0

    return _call(config, work)


async def _print_status(svc: DualWriteService, console: Console) -> None:
    async with svc.tenancy.pool.acquire() as conn:
        tables = await installed_tables(conn)
        dead = await dlq.count_dead_letters(conn)
        states = await conn.fetch(
            "SELECT shop_id, degraded, cause, reason, applied_entries, last_applied_at"
            " FROM pgtenantproxy.mirror_state ORDER BY shop_id"
        )
    snap = await svc.status.poll()
    console.print(f"capture: {'on' if tables else 'off'} ({len(tables)} tables)")
    table = Table("shop", "queued", "lag ms", "dead letters", "degraded", "applied", "last applied")
    shops = sorted({*snap.pending, *dead, *(int(r["shop_id"]) for r in states)})
    by_shop = {int(r["shop_id"]): r for r in states}
    for shop in shops:
        row = by_shop.get(shop)
        reason = f"{row['cause']}: {row['reason']}" if row is not None and row["degraded"] else ""
        table.add_row(
            str(shop), str(svc.status.queue_size(shop)), f"{svc.status.lag_ms(shop):.0f}",
            str(dead.get(shop, 0)),
            reason[:80], str(row["applied_entries"] if row else 0),
            str(row["last_applied_at"] or "") if row else "",
        )
    console.print(table)


def _run_dlq(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console()

    async def work(svc: DualWriteService) -> int:
        if args.action == "replay":
            async with svc.tenancy.pool.acquire() as conn:
                moved = await dlq.replay(conn, args.shop)
            where = f"shop {args.shop}" if args.shop is not None else "all shops"
            console.print(f"{moved} dead letters of {where} moved back to the outbox")
            return 0
        letters = await dlq.list_dead_letters(svc.tenancy.pool, args.shop, limit=args.limit)
        table = Table("id", "shop", "table", "key", "op", "tries", "captured", "failed", "error")
        for d in letters:
            table.add_row(str(d.id), str(d.shop_id), d.table, d.key, d.op, str(d.attempts),
                          f"{d.captured_at:%Y-%m-%d %H:%M:%S}", f"{d.failed_at:%Y-%m-%d %H:%M:%S}",
                          d.error[:120])
        console.print(table)
        console.print(f"{len(letters)} dead letters shown")
        return 0

    return _call(config, work)


def _run_mirror(args: argparse.Namespace) -> int:
    config = config_from_args(args)

    async def work(svc: DualWriteService) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await svc.start()
        await stop.wait()
        await svc.stop()
        return 0

    return _call(config, work, worker=True)
