"""``pgtenantproxy status [--json]``: the effective read strategy, where it came from, and every shop's state.

Reads the control schema of the unified database named by the config (no
encryption key needed): the strategy set through the admin API when there
is one, else the config file's ``[routing]``; per shop its tenant server,
migration phase, where its reads go and why, its override, mirror queue,
lag, dead letters, backfill progress and, with reference tables configured,
the lag of its reference copies ("none": no usable copies). The same report as ``GET
/api/superadmin/migration/status``. ``--json`` prints that JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from pgtenantproxy.admin.report import StatusReport, gather_status
from pgtenantproxy.cli.common import add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.tenancy.service import TenancyService


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help="effective read strategy and per-shop migration state", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    report = asyncio.run(_gather(config))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        _print(report, Console())
    return 0


async def _gather(config: Config) -> StatusReport:
    service = await open_control_plane(config, TenancyService.open(config, need_key=False, pool_size=1))
    try:
        async with service.pool.acquire() as conn:
            return await gather_status(conn, config)
    finally:
        await service.close()


def _print(report: StatusReport, console: Console) -> None:
    s = report.strategy
    detail = {"percentage": f" {s.percentage}%", "shop-list": f" {list(s.shop_ids)}",
              "canary": f" {list(s.canary_shop_ids)}"}.get(s.name, "")
    origin = (f"admin API (set by {s.set_by} at {s.set_at:%Y-%m-%d %H:%M:%S %Z})"
              if s.source == "api" and s.set_at else f"config file {s.config_file or ''}".rstrip())
    console.print(f"read strategy: [bold]{s.name}{detail}[/bold], from the {origin}")
    if not s.enable_tenant_reads:
        console.print("[yellow]enable_tenant_reads = false: every read goes to unified[/yellow]")
    capture = report.capture_tables
    console.print("write capture: " + ("never set up" if capture is None else
                                       f"on ({capture} tables)" if capture else "off"))
    references = any(shop.reference_lag_seconds is not None for shop in report.shops)
    table = Table("shop", "server", "phase", "reads", "why", "override", "queued", "lag s", "dead letters",
                  "backfill", *(["reference lag s"] if references else []))
    for shop in report.shops:
        phase = shop.phase if shop.phase not in ("degraded", "failed") else f"[red]{shop.phase}[/red]"
        if shop.writes_held:
            phase += " [yellow](writes held)[/yellow]"
        ref_lag = "none" if shop.reference_lag_seconds is None else f"{shop.reference_lag_seconds:.1f}"
        table.add_row(
            str(shop.shop_id), shop.server or "", phase,
            "[green]tenant[/green]" if shop.reads == "tenant" else "unified", shop.reason,
            shop.override or "", str(shop.mirror_queue), f"{shop.mirror_lag_seconds:.1f}",
            f"[red]{shop.dead_letters}[/red]" if shop.dead_letters else "0", shop.backfill or "",
            *([ref_lag] if references else []),
        )
    console.print(table)
    summary = report.as_dict()["summary"]
    console.print(f"{summary['shops']} shops, {summary['provisioned']} provisioned, "
                  f"{summary['reads_on_tenant']} reading from tenant, {summary['dead_letters']} dead letters")
    console.print("phases: " + ", ".join(f"{n} {phase}" for phase, n in sorted(summary["phases"].items())))
    for shop in report.shops:
        if shop.phase in ("degraded", "failed"):
            console.print(f"[red]shop {shop.shop_id} {shop.phase}[/red]: {shop.phase_reason}")
