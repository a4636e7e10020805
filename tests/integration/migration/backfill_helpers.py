"""Helpers of the backfill tests: the control plane opened on the bed, phases, a mirror that follows them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed


@asynccontextmanager
async def control_plane(bed: MirrorBed) -> AsyncIterator[TenancyService]:
    async with await TenancyService.open(bed.config(), pool_size=12) as tenancy:
        yield tenancy


async def phases(bed: MirrorBed) -> dict[int, str]:
    conn = await bed.unified_admin()
    try:
        return {shop: record.phase for shop, record in (await read_phases(conn)).items()}
    finally:
        await conn.close()


@asynccontextmanager
async def following_mirror(bed: MirrorBed) -> AsyncIterator[DualWriteService]:
    """The mirror worker in the test's loop (it applies only to shops in a mirrored phase by itself)."""
    svc = await DualWriteService.open(bed.config(), run_worker=True)
    try:
        await svc.start()
        yield svc
    finally:
        await svc.close()


async def tenant_insert_ids(bed: MirrorBed, shop_id: int) -> dict[str, int]:
    """Insert one row without an id into each serial/identity table of the shop's tenant database."""
    conn = await bed.shop_admin(shop_id)
    try:
        async with conn.transaction():
            branch = await conn.fetchval(
                "INSERT INTO branches (shop_id, name) VALUES ($1, 'tenant-side') RETURNING id", shop_id)
            account = await conn.fetchval(
                "INSERT INTO accounts (shop_id, branch_id) VALUES ($1, $2) RETURNING id", shop_id, branch)
            history = await conn.fetchval(
                "INSERT INTO history (shop_id, account_id, delta) VALUES ($1, $2, 1) RETURNING id",
                shop_id, account)
            raise _Rollback({"branches": branch, "accounts": account, "history": history})
    except _Rollback as done:
        return done.ids
    finally:
        await conn.close()


class _Rollback(Exception):
    def __init__(self, ids: dict[str, int]) -> None:
        super().__init__("rolled back on purpose")
        self.ids = ids

