"""``pgtenantproxy reads activate|deactivate|clear --shop N``: per-shop read overrides.

Stored in the control schema (``pgtenantproxy.read_overrides``); every proxy
instance picks them up at its next catalog refresh (``[routing]
catalog_refresh_ms``, 1 s by default). ``activate`` sends the shop's reads to
its tenant database whatever the strategy says (except ``unified`` and
``enable_tenant_reads = false``, which always win), as long as the shop is
in phase ``mirroring`` or later (activating a shop still being copied is refused);
``deactivate`` keeps them on unified; ``clear`` returns the shop to the
strategy. Each change is written to the audit log.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pgtenantproxy.cli.common import add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.catalog import set_override
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.phases import require_tenant_reads
from pgtenantproxy.lifecycle.store import read_phase
from pgtenantproxy.tenancy.service import TenancyService

ACTIONS = {"activate": True, "deactivate": False, "clear": None}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "reads", help="per-shop read overrides: activate, deactivate or clear", description=__doc__
    )
    parser.add_argument("action", choices=list(ACTIONS))
    parser.add_argument("--shop", type=int, action="append", required=True, metavar="N",
                        help="shop id (repeatable)")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        asyncio.run(_apply(config, args.action, args.shop))
    except MigrationError as exc:
        print(f"pgtenantproxy reads: {exc}", file=sys.stderr)
        return 1
    done = {"activate": "reads activated", "deactivate": "reads deactivated", "clear": "override cleared"}
    for shop in args.shop:
        print(f"shop {shop}: {done[args.action]}")
    return 0


async def _apply(config: Config, action: str, shops: list[int]) -> None:
    service = await open_control_plane(config, TenancyService.open(config, need_key=False, pool_size=2))
    try:
        async with service.pool.acquire() as conn:
            if ACTIONS[action]:
                for shop in shops:
                    require_tenant_reads(await read_phase(conn, shop))
            for shop in shops:
                async with conn.transaction():
                    await set_override(conn, shop, ACTIONS[action])
                    await audit(conn, shop_id=shop, action=f"reads_{action}", status="ok", detail="cli")
    finally:
        await service.close()
