"""Write cutover: a shop's writes move to its own database, behind a short per-shop fence.

``pgtenantproxy cutover --shop N | --percentage P [--force]`` (and the admin
API). Per shop, in ``reads_on_tenant``:

* **refused** (nothing touched) when the readiness report (:mod:`.readiness`)
  lists transactions that would lose their atomicity and ``--force`` is not
  given, when its mirror is degraded, or when a switch of the shop is running;
* reverse capture is installed on its tenant database (idempotent; it records
  nothing until the flip, since only the mirror writes there until then);
* the shop is federated (:func:`.federation.federate_shop`: its foreign
  tables on unified, for reads that need it once cut over); if that fails the
  result is ``failed`` and nothing is switched, so a shop in
  ``tenant_primary`` is always readable from unified;
* then the fenced switch of :mod:`.switch` (source unified, target the tenant;
  the prepare step reserves a block of ids per shared sequence,
  :mod:`.id_blocks`, recorded in ``pgtenantproxy.id_blocks`` in the flip's own
  transaction), ending in ``tenant_primary``, or aborted with nothing
  changed. From the flip on, the proxies send the shop's reads and writes to
  its database, reverse mirroring keeps unified current (for rollback), and
  unified's write fence refuses what would still write the shop there.

Before the first shop, the foreign keys between tenant tables are proved
once (:mod:`.fk_proofs`, recorded for routing); a foreign key that a row
crosses shops through is listed in each shop's result
(``cross_shop_foreign_keys``, with sample keys) and refuses nothing: it only
pins nothing. The readiness report shows the proofs too.

Shops are cut over one at a time: each holds only its own writes, other shops
never pause. ``--percentage P`` takes the shops in ``reads_on_tenant`` whose
stable bucket (the read strategy's :func:`~pgtenantproxy.routing.strategy.percentage_bucket`)
is below ``P``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.capture import installed_tables
from pgtenantproxy.dualwrite.reverse import connect_tenant_admin, install_reverse_capture
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import IllegalTransition
from pgtenantproxy.lifecycle.store import read_phase, read_phases
from pgtenantproxy.migration.cutover_report import ALREADY, FAILED, REFUSED, FenceReport, FenceResult
from pgtenantproxy.migration.drain import mirror_health, wait_drained
from pgtenantproxy.migration.federation import FAILURES as FEDERATION_FAILURES
from pgtenantproxy.migration.federation import federate_shop
from pgtenantproxy.migration.fk_proofs import proof_line, prove_foreign_keys
from pgtenantproxy.migration.id_blocks import IdBlock, record_blocks, reserve_id_blocks
from pgtenantproxy.migration.readiness import readiness
from pgtenantproxy.migration.switch import SwitchPlan, run_switch
from pgtenantproxy.migration.tables import active_tables
from pgtenantproxy.routing.strategy import percentage_bucket
from pgtenantproxy.tenancy.errors import TenancyError, describe
from pgtenantproxy.tenancy.servers import unified_connect_kwargs
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)


@dataclass
class CutoverContext:
    tenancy: TenancyService
    config: Config
    force: bool = False
    actor: str | None = None


async def cutover_shops(
    tenancy: TenancyService, shops: Sequence[int] | None, *, percentage: int | None = None,
    config: Config | None = None, force: bool = False, actor: str | None = None,
) -> FenceReport:
    """Cut over ``shops`` (or, with ``percentage``, the shops in ``reads_on_tenant`` below it), one by one."""
    ctx = CutoverContext(tenancy, config or tenancy.config, force, actor)
    chosen = list(shops) if shops is not None else await shops_below(tenancy.pool, percentage or 0)
    report = FenceReport("cutover")
    crossing = await _cross_shop_foreign_keys(ctx) if chosen else []
    for shop in dict.fromkeys(chosen):
        try:
            result = await cutover_shop(ctx, shop)
        except Exception as exc:  # outside the fence or after the flip: reported, the others go on
            logger.exception("shop %s: cutover failed", shop)
            result = FenceResult(shop, FAILED, detail=describe(exc))
        if crossing:  # reported, never a reason to refuse: such a foreign key only pins nothing
            result.extra["cross_shop_foreign_keys"] = crossing
        await audit(tenancy.pool, shop_id=shop, action="cutover", status=result.status,
                    detail=result.detail or _pause(result), actor=actor)
        report.shops.append(result)
    return report


async def _cross_shop_foreign_keys(ctx: CutoverContext) -> list[str]:
    """Prove the foreign keys between tenant tables once per run (recorded for routing); the lines of
    those a row crosses shops through. A failure is logged: the proofs recorded before stay."""
    try:
        async with ctx.tenancy.pool.acquire() as conn:
            proofs = await prove_foreign_keys(conn, ctx.config.tenancy)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, TenancyError) as exc:
        logger.warning("cutover: foreign keys not proved: %s", describe(exc))
        return []
    return [proof_line(p) for p in proofs if not p.consistent]


async def shops_below(db: asyncpg.Pool | asyncpg.Connection, percentage: int) -> list[int]:
    """Shops in ``reads_on_tenant`` whose percentage bucket is below ``percentage``."""
    return [shop for shop, r in (await read_phases(db)).items()
            if r.phase == ph.READS_ON_TENANT and percentage_bucket(shop) < percentage]


async def cutover_shop(ctx: CutoverContext, shop: int) -> FenceResult:
    async with ctx.tenancy.pool.acquire() as control:
        record = await read_phase(control, shop)
        refusal = await _refusal(control, record, ctx.force, ctx.config.migration.readiness_window_s)
        if refusal is not None:
            return refusal
        tables = await active_tables(control, purpose="cut over")
        captured = await installed_tables(control)
        async with switch_sessions(ctx, shop) as (unified, tenant):
            await install_reverse_capture(tenant, captured)
            try:
                federated = await federate_shop(ctx.tenancy, shop)
            except FEDERATION_FAILURES as exc:
                logger.warning("shop %s: not cut over: federation failed: %s", shop, describe(exc))
                return FenceResult(
                    shop, FAILED, record.phase,
                    detail=f"shop {shop} could not be federated (its foreign tables on unified, which "
                           f"reads of its rows there need once it is cut over): {describe(exc)}; "
                           "nothing was switched")
            result = await switch(ctx, control, _plan(ctx, record, unified, tenant, tables))
            result.extra["federation"] = federated.as_dict()
            return result


@asynccontextmanager
async def switch_sessions(
    ctx: CutoverContext, shop: int
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    """Dedicated sessions on unified and on the shop's database (a switch holds session locks on them:
    never connections of a pool, whose reset would release the locks)."""
    unified = await asyncpg.connect(**unified_connect_kwargs(ctx.config))
    try:
        tenant = await connect_tenant_admin(ctx.tenancy.registry, ctx.tenancy.servers, shop)
        try:
            yield unified, tenant
        finally:
            await tenant.close()
    finally:
        await unified.close()


async def switch(ctx: CutoverContext, control: asyncpg.Connection, plan: SwitchPlan) -> FenceResult:
    """:func:`.switch.run_switch` with the ``[migration]`` deadlines."""
    section = ctx.config.migration
    return await run_switch(control, plan, fence_timeout_s=section.fence_timeout_ms / 1000,
                            ack_timeout_s=section.ack_timeout_ms / 1000, actor=ctx.actor)


def _plan(ctx: CutoverContext, record: ph.ShopPhase, unified: asyncpg.Connection,
          tenant: asyncpg.Connection, tables: list[TableInfo]) -> SwitchPlan:
    shop = record.shop_id

    async def drained(timeout_s: float) -> bool:
        if not await wait_drained(unified, shop, timeout_s=timeout_s):
            return False
        return not (await mirror_health(unified, shop)).degraded

    reserved: list[IdBlock] = []

    async def prepare() -> dict[str, Any]:
        reserved[:] = await reserve_id_blocks(unified, tenant, tables, ctx.config.migration.id_block)
        return {"id_blocks": [b.as_dict() for b in reserved]}

    async def on_flip(control: asyncpg.Connection) -> None:
        await record_blocks(control, shop, reserved)  # durable with the flip, before any tenant write

    return SwitchPlan(shop, record, ph.TENANT_PRIMARY, unified, tenant, source_is_unified=True,
                      drain=drained, tables=tables, prepare=prepare, action="cutover", on_flip=on_flip)


async def _refusal(
    control: asyncpg.Connection, record: ph.ShopPhase, force: bool, window_s: float
) -> FenceResult | None:
    shop = record.shop_id
    if record.phase == ph.TENANT_PRIMARY:
        return FenceResult(shop, ALREADY, record.phase, detail="its writes are on its database already")
    try:
        ph.check(record, ph.TENANT_PRIMARY)
    except IllegalTransition as exc:
        return FenceResult(shop, REFUSED, record.phase, detail=str(exc))
    if record.holding:
        return FenceResult(shop, REFUSED, record.phase, detail=f"a switch of shop {shop} is running")
    health = await mirror_health(control, shop)
    if health.degraded or health.dead_letters:
        return FenceResult(shop, REFUSED, record.phase,
                           detail=f"shop {shop}'s mirror is degraded ({health.reason or 'dead letters'}): "
                                  "replay its dead letters first")
    ready = (await readiness(control, [shop], window_s=window_s))[shop]
    seen = sum(c.count for c in ready.conflicts)
    if ready.ready:
        return None
    if force:
        logger.warning("shop %s: cut over with --force past %d kinds of statement (%d seen) that will now be "
                       "refused", shop, len(ready.conflicts), seen)
        await audit(control, shop_id=shop, action="cutover", status="forced",
                    detail=f"--force past {len(ready.conflicts)} kinds of statement ({seen} seen) that "
                           "cannot be placed on the shop's database: "
                           + ", ".join(sorted({c.kind for c in ready.conflicts})))
        return None
    return FenceResult(shop, REFUSED, record.phase, extra={"readiness": ready.as_dict()},
                       detail=f"{len(ready.conflicts)} kinds of statement ({seen} seen) could not be placed "
                              "on the shop's database once cut over (with global tables, other shops, or "
                              "naming no shop); see cutover --check, or --force (they then get an error)")


def _pause(result: FenceResult) -> str | None:
    return None if result.pause_s is None else f"writes held {result.pause_s * 1000:.0f} ms"
