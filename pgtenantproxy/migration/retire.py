"""Legacy retirement: ``pgtenantproxy retire --shop N | --all [--dry-run | --check] [--force]``, admin API.

:func:`retire_shops` runs the gate (:mod:`.retire_gate`) for every shop asked
for, ``[migration] jobs`` shops at a time; a shop that does not pass is
``blocked`` with its reasons and left alone. With ``dry_run`` that is all: the
report lists, per shop, the gate's verdict, the rows per table that would
leave unified and the statements the proxies refused while it was
``tenant_primary`` (they would be refused once retired too); nothing is
written (verification adds its usual audit rows). Otherwise each shop that
passed is retired in turn (:mod:`.retire_shop`: archive, checksums, delete in
one transaction, phase ``retired``, reverse capture off). ``force`` lets the
gate pass a shop with such refused statements (nothing else); the retirer
audits that (status ``forced``, naming them) before it starts.

``--all`` (``shops=None``) takes every shop in ``tenant_primary``. When, after
the run, no shop would be left outside ``retired`` (shops counted from the
phase records and ``[tenancy] shops_query``), the whole tables are also dumped
before anything is deleted and truncated at the end (:mod:`.retire_all`); a
failed dump retires nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration.retire_all import dump_tables, truncate_empty
from pgtenantproxy.migration.retire_gate import RetirementGate
from pgtenantproxy.migration.retire_report import (
    FAILED,
    RETIRED,
    WOULD_RETIRE,
    RetirementReport,
    ShopRetirement,
)
from pgtenantproxy.migration.retire_shop import FAILURES, ShopRetirer
from pgtenantproxy.migration.tables import ordered_tables
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.service import TenancyService


async def retire_shops(
    tenancy: TenancyService,
    shops: Sequence[int] | None,
    *,
    config: Config | None = None,
    dry_run: bool = False,
    force: bool = False,
    actor: str | None = None,
) -> RetirementReport:
    """Retire ``shops`` (None: every shop in ``tenant_primary``); the report, one entry per shop."""
    config = config or tenancy.config
    started = time.monotonic()
    report = RetirementReport(dry_run)
    async with tenancy.pool.acquire() as conn:
        phases = await read_phases(conn)
        tables = await ordered_tables(conn, purpose="retire")
    report.shops = await _gate_all(tenancy, tables, config, select_shops(phases, shops), actor, force)
    passed = {s.shop_id for s in report.shops if s.status == WOULD_RETIRE}
    if shops is None:
        report.every_shop_retired = await _every_shop_retired(tenancy, phases, passed, report)
    if not dry_run and passed:
        await _retire_passed(tenancy, tables, config, phases, report, actor)
    report.seconds = time.monotonic() - started
    return report


def select_shops(phases: Mapping[int, ph.ShopPhase], shops: Sequence[int] | None) -> list[ph.ShopPhase]:
    """Named shops (whatever their phase: the gate says why one cannot go), or all in ``tenant_primary``."""
    if shops is None:
        return [p for _, p in sorted(phases.items()) if p.phase == ph.TENANT_PRIMARY]
    return [phases.get(s, ph.ShopPhase(s)) for s in sorted(set(shops))]


async def _gate_all(tenancy: TenancyService, tables: list[TableInfo], config: Config,
                    chosen: list[ph.ShopPhase], actor: str | None, force: bool) -> list[ShopRetirement]:
    gate = RetirementGate(tenancy, tables, config.migration, actor=actor, force=force)
    slots = asyncio.Semaphore(config.migration.jobs)

    async def one(phase: ph.ShopPhase) -> ShopRetirement:
        async with slots:
            return await gate.check(phase)

    return list(await asyncio.gather(*(one(p) for p in chosen)))


async def _every_shop_retired(tenancy: TenancyService, phases: Mapping[int, ph.ShopPhase], passed: set[int],
                              report: RetirementReport) -> bool:
    """Would no shop be left outside ``retired`` once the shops that passed are retired?"""
    try:
        known = set(phases) | set(await tenancy.all_shop_ids())
    except TenancyError as exc:
        report.errors.append(f"cannot list every shop, so the tables are not truncated: {exc}")
        return False
    return bool(known) and all(s in passed or (s in phases and phases[s].phase == ph.RETIRED) for s in known)


async def _retire_passed(
    tenancy: TenancyService, tables: list[TableInfo], config: Config, phases: Mapping[int, ph.ShopPhase],
    report: RetirementReport, actor: str | None,
) -> None:
    passed = [s for s in report.shops if s.status == WOULD_RETIRE]
    if report.every_shop_retired:
        try:
            report.dump = await dump_tables(config, tables)
        except (MigrationError, OSError) as exc:
            report.errors.append(str(exc))
            for shop in passed:
                shop.status = FAILED
                shop.reasons.append("the whole-table dump failed, so nothing was retired")
            return
        await audit(tenancy.pool, shop_id=None, action="retire", step="pg_dump", status="done",
                    detail=f"{report.dump.path}: {report.dump.bytes} bytes, sha256 {report.dump.sha256}",
                    actor=actor)
    retirer = ShopRetirer(tenancy, tables, config, actor=actor)
    for shop in passed:
        await retirer.retire(shop, phases[shop.shop_id].version)
    if report.every_shop_retired and all(s.status == RETIRED for s in passed):
        await _truncate(tenancy, tables, report, actor)


async def _truncate(tenancy: TenancyService, tables: list[TableInfo], report: RetirementReport,
                    actor: str | None) -> None:
    try:
        async with tenancy.pool.acquire() as conn:
            report.truncated = await truncate_empty(conn, tables)
    except FAILURES as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
        await audit(tenancy.pool, shop_id=None, action="retire", step="truncate", status="failed",
                    detail=report.errors[-1], actor=actor)
        return
    await audit(tenancy.pool, shop_id=None, action="retire", step="truncate", status="done",
                detail=", ".join(report.truncated), actor=actor)
