"""Write cutover and rollback at the database level: the fenced switch, reverse mirroring, aborts, refusals.

The lifecycle bed with a mirror running in the test's loop (forward and
reverse workers). Shops 1-4 are backfilled and put in ``reads_on_tenant``
first. The proxies' side of the switch (holding, routing writes) is tested
with proxies in ``tests/integration/cutover/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import CutoverContext, cutover_shops
from pgtenantproxy.migration.cutover_report import ABORTED, ALREADY, DONE, REFUSED
from pgtenantproxy.migration.rollback import rollback_shops
from pgtenantproxy.tenancy.errors import UnknownTenantError
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed, differences

SHOPS = (1, 2, 3, 4)
FAST = {"fence_timeout_ms": 3000, "ack_timeout_ms": 1000}


@pytest.fixture(scope="module")
async def moved(lbed: MirrorBed) -> AsyncIterator[tuple[TenancyService, DualWriteService]]:
    """Shops 1-4 backfilled and reading from tenant; the mirror (both directions) running."""
    config = lbed.config(migration=FAST)
    mirror = await DualWriteService.open(config, run_worker=True)
    await mirror.start()
    tenancy = await TenancyService.open(config, pool_size=6)
    try:
        report = await backfill_shops(tenancy, list(SHOPS), wait=True)
        assert report.ok, report.as_dict()
        async with tenancy.pool.acquire() as conn:
            for shop in SHOPS:
                await transition(conn, shop, ph.READS_ON_TENANT, reason="test")
        yield tenancy, mirror
    finally:
        await tenancy.close()
        await mirror.close()


async def phase_of(tenancy: TenancyService, shop: int) -> str:
    return (await read_phase(tenancy.pool, shop)).phase


async def tenant_conn(lbed: MirrorBed, tenancy: TenancyService, shop: int) -> asyncpg.Connection:
    """The shop's own role on its tenant database (what the proxy uses)."""
    creds = await tenancy.credentials(shop)
    return await asyncpg.connect(**creds.connect_kwargs())


async def test_cutover_moves_the_writes_and_reverse_mirroring_keeps_unified_current(
    lbed: MirrorBed, moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, mirror = moved
    report = await cutover_shops(tenancy, [1], actor="test")
    (result,) = report.shops
    assert result.status == DONE, result.as_dict()
    assert result.pause_s is not None and result.pause_s > 0
    assert {"hold_acknowledged", "writers_done", "drained", "checked", "flip"} <= set(result.steps_ms)
    assert await phase_of(tenancy, 1) == ph.TENANT_PRIMARY
    app = await lbed.app()
    try:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await app.execute("UPDATE branches SET balance = balance + 1 WHERE shop_id = 1")
        assert refused.value.sqlstate == "55000" and "shop 1" in str(refused.value)
        await app.execute("UPDATE branches SET balance = balance + 1 WHERE shop_id = 2")  # others: as before
    finally:
        await app.close()
    tenant = await tenant_conn(lbed, tenancy, 1)
    try:
        branch = await tenant.fetchval("INSERT INTO branches (shop_id, name) VALUES (1, 'opened on tenant')"
                                       " RETURNING id")
        await tenant.execute("UPDATE accounts SET balance = balance - 7 WHERE shop_id = 1")
        await tenant.execute("DELETE FROM account_tags WHERE shop_id = 1")
    finally:
        await tenant.close()
    blocks = {b["table"]: b for b in result.extra["id_blocks"]}
    assert blocks["public.branches"]["first"] <= branch <= blocks["public.branches"]["last"]
    await _until(lambda: _identical(lbed, 1))
    assert not await mirror.tenancy.pool.fetchval(
        "SELECT count(*) FROM pgtenantproxy.outbox WHERE shop_id = 1"), "unified captured the reverse writes"


async def test_a_second_cutover_is_a_no_op_and_phases_before_reads_are_refused(
    moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = moved
    report = await cutover_shops(tenancy, [1, 9])
    assert [s.status for s in report.shops] == [ALREADY, REFUSED]
    assert "shop 9 is in phase provisioned" in (report.shops[1].detail or "")


async def test_readiness_conflicts_refuse_the_cutover_unless_forced(
    moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = moved
    await tenancy.pool.execute(
        "INSERT INTO pgtenantproxy.cutover_conflicts (shop_id, kind, fingerprint, sample, count)"
        " VALUES (2, 'global', 'fp-test', 'UPDATE plans SET name = $1; UPDATE branches ...', 3)")
    refused = (await cutover_shops(tenancy, [2])).shops[0]
    assert refused.status == REFUSED and "could not be placed on the shop's database" in (refused.detail or "")
    assert refused.extra["readiness"]["conflicts"][0]["fingerprint"] == "fp-test"
    assert await phase_of(tenancy, 2) == ph.READS_ON_TENANT
    forced = (await cutover_shops(tenancy, [2], force=True)).shops[0]
    assert forced.status == DONE, forced.as_dict()
    assert await phase_of(tenancy, 2) == ph.TENANT_PRIMARY
    recorded = await tenancy.pool.fetchval(
        "SELECT detail FROM pgtenantproxy.migration_log WHERE shop_id = 2 AND action = 'cutover'"
        " AND status = 'forced'")
    assert recorded is not None and "global" in recorded  # --force is in the audit log, with the kinds


async def test_a_long_transaction_times_the_fence_out_and_nothing_is_lost(
    lbed: MirrorBed, moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, mirror = moved
    app = await lbed.app()
    try:
        tx = app.transaction()
        await tx.start()
        await app.execute("UPDATE tellers SET balance = balance + 100 WHERE shop_id = 3")
        short = lbed.config(migration={"fence_timeout_ms": 800, "ack_timeout_ms": 500})
        result = (await cutover_shops(tenancy, [3], config=short)).shops[0]
        assert result.status == ABORTED, result.as_dict()
        assert "still open" in (result.detail or "")
        await tx.commit()  # the transaction that held the fence up commits normally
        await app.execute("UPDATE tellers SET balance = balance + 1 WHERE shop_id = 3")  # unified open again
    finally:
        await app.close()
    assert await phase_of(tenancy, 3) == ph.READS_ON_TENANT
    assert await mirror.wait_drained(timeout_s=30)
    assert await differences(lbed, (3,)) == {}


async def test_rollback_from_tenant_primary_brings_the_writes_back(
    lbed: MirrorBed, moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, mirror = moved
    ctx = CutoverContext(tenancy, tenancy.config, actor="test")
    (result,) = await rollback_shops(ctx, [1])
    assert result.status == DONE and result.phase == ph.READS_ON_TENANT, result.as_dict()
    app = await lbed.app()
    try:
        await app.execute("UPDATE branches SET balance = balance + 5 WHERE shop_id = 1")  # unified writes
    finally:
        await app.close()
    tenant = await tenant_conn(lbed, tenancy, 1)
    try:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await tenant.execute("UPDATE branches SET balance = 0 WHERE shop_id = 1")
        assert refused.value.sqlstate == "55000"
    finally:
        await tenant.close()
    assert await mirror.wait_drained(timeout_s=30)
    assert await differences(lbed, (1,)) == {}


async def test_rollback_walks_back_one_phase_per_command_down_to_unified(
    lbed: MirrorBed, moved: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = moved
    ctx = CutoverContext(tenancy, tenancy.config, actor="test")
    seen = []
    try:
        for _ in range(3):
            (result,) = await rollback_shops(ctx, [4])
            assert result.ok, result.as_dict()
            seen.append(await phase_of(tenancy, 4))
        assert seen == [ph.MIRRORING, ph.PROVISIONED, ph.UNIFIED]
        (again,) = await rollback_shops(ctx, [4])
        assert again.status == ALREADY
        with pytest.raises(UnknownTenantError):
            await tenancy.registry.refresh(4)
    finally:
        if await phase_of(tenancy, 4) == ph.UNIFIED:  # the module's bed keeps 20 provisioned shops
            assert (await tenancy.provision(4)).ok


async def _until(check: Any, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _identical(lbed: MirrorBed, shop: int) -> bool:
    return await differences(lbed, (shop,)) == {}
