"""Id blocks: recorded by the cutover, refilled before they run out (by hand and by the phase keeper).

The lifecycle bed with a mirror running in the test's loop and ``[migration]
id_block = 20``, so each tenant-owned sequence of shop 1 gets a block of 10
ids at its cutover. Ids are drawn on the tenant with ``nextval`` (what an
insert does); unified's sequences are drawn the same way to check that unified
never hands out an id inside a recorded block.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.keys import IdBlockRecord, read_id_blocks
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import cutover_shops
from pgtenantproxy.migration.cutover_report import DONE
from pgtenantproxy.migration.id_refill import IdBlockRefiller, refill_id_blocks
from pgtenantproxy.migration.keeper import PhaseKeeper
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed

SHOP = 1
MIGRATION = {"id_block": 20, "fence_timeout_ms": 3000, "ack_timeout_ms": 1000,
             "id_block_refill_interval_s": 1}
KEYED = ("branches", "tellers", "accounts", "history", "categories")


@pytest.fixture(scope="module")
async def cut(lbed: MirrorBed) -> AsyncIterator[tuple[TenancyService, DualWriteService, dict[str, object]]]:
    """Shop 1 backfilled and cut over (its id blocks reserved); the mirror (both directions) running."""
    config = lbed.config(migration=MIGRATION)
    mirror = await DualWriteService.open(config, run_worker=True)
    await mirror.start()
    tenancy = await TenancyService.open(config, pool_size=6)
    try:
        assert (await backfill_shops(tenancy, [SHOP], wait=True)).ok
        async with tenancy.pool.acquire() as conn:
            await transition(conn, SHOP, ph.READS_ON_TENANT, reason="test")
        (result,) = (await cutover_shops(tenancy, [SHOP], actor="test")).shops
        assert result.status == DONE, result.as_dict()
        yield tenancy, mirror, result.extra
    finally:
        await tenancy.close()
        await mirror.close()


async def blocks(tenancy: TenancyService, table: str) -> list[IdBlockRecord]:
    found = await read_id_blocks(tenancy.pool)
    return [b for b in found if b.table == f"public.{table}" and b.column == "id"]


async def draw(conn: asyncpg.Connection, table: str, n: int) -> list[int]:
    """``n`` ids of ``table``'s own sequence on ``conn``'s database."""
    return [int(await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('public.{table}', 'id'))"))
            for _ in range(n)]


async def test_the_cutover_records_its_blocks_with_the_flip(
    cut: tuple[TenancyService, DualWriteService, dict[str, object]]
) -> None:
    tenancy, _, extra = cut
    reported = {(b["table"], b["column"], b["first"], b["last"]) for b in extra["id_blocks"]}  # type: ignore[attr-defined]
    recorded = {(b.table, b.column, b.first, b.last) for b in await read_id_blocks(tenancy.pool)}
    assert recorded == reported and {t for t, *_ in recorded} == {f"public.{t}" for t in KEYED}
    assert all(b.shop_id == SHOP and b.last - b.first + 1 == 10 for b in await read_id_blocks(tenancy.pool))
    phase = await read_phase(tenancy.pool, SHOP)
    flipped_at = await tenancy.pool.fetchval("SELECT max(reserved_at) FROM pgtenantproxy.id_blocks")
    assert phase.phase == ph.TENANT_PRIMARY and flipped_at <= phase.changed_at


async def test_a_block_used_past_refill_at_gets_the_next_block(
    lbed: MirrorBed, cut: tuple[TenancyService, DualWriteService, dict[str, object]]
) -> None:
    tenancy, _, _ = cut
    [old] = await blocks(tenancy, "branches")
    tenant = await lbed.shop_admin(SHOP)
    unified = await lbed.unified_admin()
    try:
        assert await draw(tenant, "branches", 8) == list(range(old.first, old.first + 8))
        assert await refill_id_blocks(tenancy, SHOP) == []  # 80 % used: not more than refill_at yet
        await draw(tenant, "branches", 1)
        [new] = await refill_id_blocks(tenancy, SHOP)  # 90 %: refilled, the other tables untouched
        assert (new.table, new.column, new.size) == ("public.branches", "id", 10) and new.first > old.last
        recorded = IdBlockRecord("public.branches", "id", SHOP, new.first, new.last)
        assert await blocks(tenancy, "branches") == [old, recorded]
        assert await draw(tenant, "branches", 1) == [new.first]  # the last id of the old block is skipped
        creds = await tenancy.credentials(SHOP)
        own = await asyncpg.connect(**creds.connect_kwargs())
        try:  # the application's insert on the shop's database (as its own role) lands in the new block
            branch = await own.fetchval("INSERT INTO branches (shop_id, name) VALUES ($1, 'refilled') "
                                        "RETURNING id", SHOP)
        finally:
            await own.close()
        assert new.first < branch <= new.last
        assert await refill_id_blocks(tenancy, SHOP) == []
        await assert_unified_avoids_the_blocks(tenancy, unified)
    finally:
        await tenant.close()
        await unified.close()


async def test_the_phase_keeper_refills_a_block_that_ran_out(
    lbed: MirrorBed, cut: tuple[TenancyService, DualWriteService, dict[str, object]]
) -> None:
    tenancy, mirror, _ = cut
    [old] = await blocks(tenancy, "tellers")
    tenant = await lbed.shop_admin(SHOP)
    try:
        await draw(tenant, "tellers", old.last - old.first + 1)
        with pytest.raises(asyncpg.PostgresError, match="reached maximum value"):
            await draw(tenant, "tellers", 1)
        keeper = PhaseKeeper(tenancy.pool, mirror.status, lambda shop: shop == SHOP, interval_s=0.1,
                             refiller=IdBlockRefiller(tenancy))
        task = asyncio.get_running_loop().create_task(keeper.run())
        try:
            deadline = asyncio.get_running_loop().time() + 15
            while len(await blocks(tenancy, "tellers")) < 2:
                assert asyncio.get_running_loop().time() < deadline, "the keeper did not refill"
                await asyncio.sleep(0.1)
        finally:
            keeper.stop()
            await asyncio.wait_for(task, 10)
        [_, new] = await blocks(tenancy, "tellers")
        assert await draw(tenant, "tellers", 1) == [new.first]
        assert keeper.refiller is not None and keeper.refiller.refilled == 1
    finally:
        await tenant.close()
    unified = await lbed.unified_admin()
    try:
        await assert_unified_avoids_the_blocks(tenancy, unified)
    finally:
        await unified.close()


async def assert_unified_avoids_the_blocks(tenancy: TenancyService, unified: asyncpg.Connection) -> None:
    """Unified's own ids (rows there and ids drawn now) are outside every recorded block of their table."""
    for table in KEYED:
        recorded = await blocks(tenancy, table)
        assert recorded, table
        drawn = await draw(unified, table, 25)
        ids = [r[0] for r in await unified.fetch(f"SELECT id FROM {table} WHERE shop_id <> $1", SHOP)]
        inside = [i for i in drawn + ids if any(b.holds(i) for b in recorded)]
        assert inside == [], (table, inside, recorded)
