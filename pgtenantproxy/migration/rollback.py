"""Rollback: one step back from any phase, one command (``pgtenantproxy rollback --shop N``).

* ``retired -> tenant_primary``: restore the archived rows into unified
  (:mod:`.restore`);
* ``tenant_primary -> reads_on_tenant``: the reverse fence, :mod:`.switch`
  with the tenant database as the source (drain the reverse mirror, flip,
  close the tenant's write fence, open unified's); forward mirroring resumes;
* ``reads_on_tenant -> mirroring``: reads back to unified at once, by a
  ``deactivate`` read override (every proxy, via NOTIFY) and the phase;
* ``mirroring | backfilled | backfilling -> provisioned`` (also from
  ``degraded``/``failed`` in one of them): the tenant copy is emptied and the
  backfill checkpoints dropped; the outbox keeps the shop's entries for the
  next backfill;
* ``provisioned -> unified``: deprovision, the shop's database and role are
  dropped.

Every step is audited; nothing is lost at any of them: unified holds every
row of the shop until retirement, and after it the archive does.
Write capture as a whole is removed by ``pgtenantproxy dual-write disable``
(all shops at once, only when no shop is past ``reads_on_tenant``).
"""

from __future__ import annotations

from pgtenantproxy.dispatch.catalog import set_override
from pgtenantproxy.dualwrite.reverse import connect_tenant_admin, wait_reverse_drained
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration.checkpoints import forget
from pgtenantproxy.migration.cutover import CutoverContext, switch, switch_sessions
from pgtenantproxy.migration.cutover_report import ALREADY, DONE, REFUSED, FenceResult
from pgtenantproxy.migration.federation import unfederate_shop
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.switch import SwitchPlan
from pgtenantproxy.migration.tables import active_tables

#: Where one step back leads, by (effective) phase.
BACK = {
    ph.RETIRED: ph.TENANT_PRIMARY,
    ph.TENANT_PRIMARY: ph.READS_ON_TENANT,
    ph.READS_ON_TENANT: ph.MIRRORING,
    ph.MIRRORING: ph.PROVISIONED,
    ph.BACKFILLED: ph.PROVISIONED,
    ph.BACKFILLING: ph.PROVISIONED,
    ph.PROVISIONED: ph.UNIFIED,
}


async def rollback_shop(ctx: CutoverContext, shop: int) -> FenceResult:
    """One step back (see the module doc); REFUSED with why when there is none."""
    async with ctx.tenancy.pool.acquire() as control:
        record = await read_phase(control, shop)
    target = BACK.get(record.effective)
    if record.phase == ph.UNIFIED or target is None:
        return FenceResult(shop, ALREADY if record.phase == ph.UNIFIED else REFUSED, record.phase,
                           detail=f"shop {shop} is in phase {record.phase}: nothing to roll back")
    if record.holding:
        return FenceResult(shop, REFUSED, record.phase, detail=f"a switch of shop {shop} is running")
    if target == ph.TENANT_PRIMARY:
        restored = await restore_shop(ctx.tenancy, shop, config=ctx.config, actor=ctx.actor)
        return FenceResult(shop, DONE, ph.TENANT_PRIMARY, extra={"restore": restored.as_dict()})
    if target == ph.READS_ON_TENANT:
        return await _writes_back(ctx, record)
    if target == ph.MIRRORING:
        return await _reads_back(ctx, record)
    if target == ph.PROVISIONED:
        return await _copy_dropped(ctx, record)
    await unfederate_shop(ctx.tenancy, shop)  # its foreign tables and reader login go with its database
    if not await ctx.tenancy.deprovision(shop):
        raise MigrationError(f"shop {shop}: nothing to deprovision")
    return FenceResult(shop, DONE, ph.UNIFIED, detail="its database and role were dropped")


async def _reads_back(ctx: CutoverContext, record: ph.ShopPhase) -> FenceResult:
    async with ctx.tenancy.pool.acquire() as conn, conn.transaction():
        await set_override(conn, record.shop_id, False)
        await transition(conn, record.shop_id, ph.MIRRORING, expect_version=record.version,
                         reason="rollback: reads back to unified", actor=ctx.actor, action="rollback")
    return FenceResult(record.shop_id, DONE, ph.MIRRORING,
                       detail="reads deactivated (`reads clear --shop N` follows the strategy again)")


async def _copy_dropped(ctx: CutoverContext, record: ph.ShopPhase) -> FenceResult:
    shop = record.shop_id
    async with ctx.tenancy.pool.acquire() as control:
        tables = await active_tables(control, purpose="roll back")
        moved = await transition(control, shop, ph.PROVISIONED, expect_version=record.version,
                                 reason="rollback: tenant copy dropped", actor=ctx.actor, action="rollback")
        await forget(control, shop)
    tenant = await connect_tenant_admin(ctx.tenancy.registry, ctx.tenancy.servers, shop)
    try:
        names = ", ".join(t.name.sql for t in tables)
        if names:
            await tenant.execute(f"TRUNCATE {names}")
    finally:
        await tenant.close()
    return FenceResult(shop, DONE, moved.phase, detail=f"tenant copy emptied ({len(tables)} tables)")


async def _writes_back(ctx: CutoverContext, record: ph.ShopPhase) -> FenceResult:
    shop = record.shop_id
    async with ctx.tenancy.pool.acquire() as control:
        tables = await active_tables(control, purpose="roll back")
        async with switch_sessions(ctx, shop) as (unified, tenant):
            async def drained(timeout_s: float) -> bool:
                return await wait_reverse_drained(tenant, shop, timeout_s=timeout_s)

            plan = SwitchPlan(shop, record, ph.READS_ON_TENANT, unified, tenant, source_is_unified=False,
                              drain=drained, tables=tables, action="rollback")
            return await switch(ctx, control, plan)


async def rollback_shops(ctx: CutoverContext, shops: list[int]) -> list[FenceResult]:
    results = []
    for shop in dict.fromkeys(shops):
        result = await rollback_shop(ctx, shop)
        await audit(ctx.tenancy.pool, shop_id=shop, action="rollback", status=result.status,
                    detail=result.detail, actor=ctx.actor)
        results.append(result)
    return results
