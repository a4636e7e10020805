"""``pgtenantproxy restore --shop N [--json]``: a retired shop's legacy rows back into unified.

Checks the archive (manifest, sha256 of every file, the record made at
retirement), refuses when the shop still has rows in unified, turns reverse
capture back on in its tenant database, loads the archive in one transaction,
verifies the shop against its tenant database and moves it ``retired ->
tenant_primary`` (see :mod:`pgtenantproxy.migration.restore`). A refusal or a
failure leaves the shop retired and unified without its rows. Exit status: 0
restored, 2 refused or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.restore import RestoreResult, restore_shop
from pgtenantproxy.tenancy.service import TenancyService


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "restore", help="bring a retired shop's legacy rows back into unified", description=__doc__
    )
    parser.add_argument("--shop", type=int, required=True, metavar="N", help="the retired shop")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = asyncio.run(_restore(config, args.shop))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        rows_s = result.total_rows / result.seconds if result.seconds > 0 else 0.0
        print(f"shop {result.shop_id} restored: {result.total_rows} rows from {result.archive} "
              f"in {result.seconds:.1f}s ({rows_s:,.0f} rows/s); verification {result.verification}; "
              "phase tenant_primary")
    return 0


async def _restore(config: Config, shop: int) -> RestoreResult:
    opening = TenancyService.open(config, need_key=True, pool_size=config.migration.jobs + 2)
    tenancy = await open_control_plane(config, opening)
    try:
        return await restore_shop(tenancy, shop, config=config)
    except MigrationError as exc:
        raise CommandError(str(exc), status=2) from None
    finally:
        await tenancy.close()
