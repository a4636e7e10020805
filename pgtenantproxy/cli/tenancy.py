"""Control-plane commands: ``init``, ``provision``, ``deprovision``, ``migrate-schema``,
``harden``, ``rotate-key``, ``rotate-password``, ``tenants``.

Each command opens a :class:`~pgtenantproxy.tenancy.service.TenancyService` on the
configured unified database, does one thing, and exits 0 on success, 1 when
some shop failed (the failures are listed), 2 on a configuration or startup
problem (missing or malformed encryption key, unreachable unified database).
Progress goes to stderr, results to stdout. No secret is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pgtenantproxy.cli.common import CommandError, add_config_argument, config_from_args, open_control_plane
from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.federation import read_federation
from pgtenantproxy.migration.federation import rotate_reader
from pgtenantproxy.tenancy.control_schema import LATEST_VERSION
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.provisioning import ProvisionOutcome
from pgtenantproxy.tenancy.service import TenancyService

Handler = Callable[[TenancyService, argparse.Namespace], Awaitable[int]]
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def register(sub: Any) -> None:
    def command(name: str, help: str, handler: Handler, *, need_key: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        add_config_argument(parser)
        parser.set_defaults(func=lambda args: _run(args, handler, need_key=need_key))
        return parser

    command("init", "create or upgrade the control schema and check the tenant servers", _init,
            need_key=False)
    p = command("provision", "create the database, role and schema of shops", _provision)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--shop", type=int, action="append", metavar="N", help="shop id (repeatable)")
    which.add_argument("--all", action="store_true", help="every shop ([tenancy] shops_query)")
    p.add_argument("--concurrency", type=int, default=None, help="shops at a time (default: config)")
    p = command("deprovision", "drop a shop's database and role and forget its credentials", _deprovision)
    p.add_argument("--shop", type=int, required=True, metavar="N")
    p.add_argument("--yes", action="store_true", help="confirm: the shop's tenant database is dropped")
    p = command("migrate-schema", "apply versioned SQL migrations to every tenant database", _migrate,
                need_key=False)
    p.add_argument("directory", help="directory of <version>_<name>.sql files")
    p.add_argument("--shop", type=int, action="append", metavar="N", help="only these shops (repeatable)")
    p.add_argument("--concurrency", type=int, default=None, help="tenants at a time (default: config)")
    command("harden", "install the tenant-column and owner rules on the unified database", _harden,
            need_key=False)
    command("rotate-key", "re-encrypt every stored credential with the current key", _rotate_key)
    p = command("rotate-password", "give a shop's role a new random password", _rotate_password)
    p.add_argument("--shop", type=int, required=True, metavar="N")
    p = command("tenants", "list shops with their server, state and schema version", _tenants, need_key=False)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def _run(args: argparse.Namespace, handler: Handler, *, need_key: bool) -> int:
    config = config_from_args(args)
    return asyncio.run(_with_service(config, args, handler, need_key=need_key))


async def _with_service(config: Config, args: argparse.Namespace, handler: Handler, *, need_key: bool) -> int:
    service = await open_control_plane(config, TenancyService.open(config, need_key=need_key))
    try:
        return await handler(service, args)
    except TenancyError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await service.close()


def _progress(total: int, label: str) -> Progress:
    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), console=err, transient=False,
    )
    progress.add_task(label, total=total, last="")
    return progress


async def _init(svc: TenancyService, args: argparse.Namespace) -> int:
    u = svc.config.unified
    out.print(f"control schema pgtenantproxy at version {LATEST_VERSION} in database {u.database} "
              f"({u.host}:{u.port})")
    status = 0
    if not len(svc.servers):
        out.print("no [[tenant_servers]] configured yet: provisioning needs at least one")
    for server in svc.servers:
        where = f"{server.host}:{server.port}"
        try:
            conn = await server.connect()
            try:
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            out.print(f"tenant server {server.name} ({where}): PostgreSQL {version}, reachable")
        except Exception as exc:
            out.print(f"tenant server {server.name} ({where}): UNREACHABLE: {exc}")
            status = 1
    spec = (await svc.template()).spec
    out.print(f"{len(spec.tables)} tenant tables (column {svc.config.tenancy.tenant_column!r})")
    if spec.dropped_foreign_keys:
        out.print("foreign keys to global tables (kept in unified, not created in tenant databases):")
    for fk in spec.dropped_foreign_keys:
        out.print(f"  {fk.table}.{fk.name} -> {fk.references}")
    return status


async def _provision(svc: TenancyService, args: argparse.Namespace) -> int:
    shop_ids = await svc.all_shop_ids() if args.all else list(dict.fromkeys(args.shop))
    if not shop_ids:
        out.print("no shops to provision")
        return 0
    with _progress(len(shop_ids), "provisioning") as progress:
        task = progress.task_ids[0]

        def done(outcome: ProvisionOutcome) -> None:
            progress.update(task, advance=1, last=f"shop {outcome.shop_id}: {outcome.status}")

        outcomes = await svc.provision_many(shop_ids, concurrency=args.concurrency, on_done=done)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("provisioned", "already", "failed")}
    for o in outcomes:
        if not o.ok:
            out.print(f"shop {o.shop_id}: FAILED: {o.error}")
        elif len(outcomes) <= 20:
            out.print(f"shop {o.shop_id}: {o.status} on {o.server} ({o.database}, {o.seconds:.1f} s)")
    out.print(f"provisioned {counts['provisioned']}, already provisioned {counts['already']}, "
              f"failed {counts['failed']}")
    return 1 if counts["failed"] else 0


async def _deprovision(svc: TenancyService, args: argparse.Namespace) -> int:
    if not args.yes:
        raise CommandError(
            f"deprovision drops shop {args.shop}'s tenant database and role: re-run with --yes to confirm",
            status=2,
        )
    if await svc.deprovision(args.shop):
        out.print(f"shop {args.shop}: deprovisioned (database and role dropped, credentials removed)")
    else:
        out.print(f"shop {args.shop}: nothing to deprovision")
    return 0


async def _migrate(svc: TenancyService, args: argparse.Namespace) -> int:
    total = len(await svc.pool.fetch(
        "SELECT 1 FROM pgtenantproxy.tenant_provisions WHERE state = 'provisioned'"
        " AND ($1::bigint[] IS NULL OR shop_id = ANY($1))", args.shop))
    with _progress(total, "migrating") as progress:
        task = progress.task_ids[0]
        report = await svc.migrate_schema(
            args.directory, concurrency=args.concurrency, shop_ids=args.shop,
            on_done=lambda r: progress.update(task, advance=1, last=f"shop {r.shop_id}: v{r.version}"),
        )
    for r in report.failed:
        out.print(f"shop {r.shop_id} ({r.server}): FAILED at {r.error} (now at version {r.version})")
    out.print(f"{len(report.results)} tenants, {report.applied} migrations applied, "
              f"{len(report.failed)} failed")
    return 1 if report.failed else 0


async def _harden(svc: TenancyService, args: argparse.Namespace) -> int:
    report = await svc.harden()
    out.print(f"tenant column protected on {len(report.protected_tables)} tables")
    for name in report.installed:
        out.print(f"installed {name}")
    for name in report.present:
        out.print(f"already present: {name}")
    for text in report.skipped:
        out.print(f"skipped: {text}")
    for violation in report.violations:
        out.print(f"VIOLATION {violation} (fix these rows, then run harden again)")
    return 0 if report.ok else 1


async def _rotate_key(svc: TenancyService, args: argparse.Namespace) -> int:
    count = await svc.rotate_key()
    out.print(f"re-encrypted {count} credential rows with key {svc.registry.keyring.primary_id}")
    return 0


async def _rotate_password(svc: TenancyService, args: argparse.Namespace) -> int:
    await svc.rotate_password(args.shop)
    out.print(f"shop {args.shop}: password rotated")
    if args.shop in await read_federation(svc.pool):  # its reader (federated reads) rotates with it
        try:
            await rotate_reader(svc, args.shop)
        except MigrationError as exc:
            raise CommandError(f"shop {args.shop}: the shop's password was rotated, its reader's was not: "
                               f"{exc}") from None
        out.print(f"shop {args.shop}: reader password rotated (federated reads)")
    return 0


async def _tenants(svc: TenancyService, args: argparse.Namespace) -> int:
    tenants = await svc.tenants()
    if args.json:
        for t in tenants:
            out.print(json.dumps({**t.__dict__, "updated_at": t.updated_at.isoformat()}), markup=False)
        return 0
    table = Table("shop", "server", "state", "schema", "database", "updated", "step / error")
    for t in tenants:
        note = f"{t.step}: {t.error}" if t.error else (t.step or "")
        table.add_row(str(t.shop_id), t.server or "-", t.state, str(t.schema_version), t.database,
                      t.updated_at.strftime("%Y-%m-%d %H:%M:%S"), note)
    out.print(table)
    out.print(f"{len(tenants)} shops")
    return 0
