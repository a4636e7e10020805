"""Fixtures of the migration lifecycle tests: the write-mirroring bed, brought back to "before backfill".

The bed (:mod:`tests.integration.dualwrite.bed`: a unified cluster, one tenant
server, shops 1-20 provisioned, pgbench-style tables tagged with ``shop_id``)
is created once for this package. :func:`fresh_start` resets it for a test
module: the seed rows in unified only, the tenant databases empty, capture on,
nothing queued, no write fence, no reverse capture, no strategy set through the
API, an empty audit log, every shop back in phase ``provisioned`` with no
backfill checkpoint, conflict or archive record, and no key facts (id blocks,
foreign-key proofs, key directory).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pgtenantproxy.dualwrite.capture import disable_capture
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.phases import PROVISIONED
from pgtenantproxy.lifecycle.store import force_phase
from tests.integration.dualwrite.bed import HERE, SHOPS, TABLES, MirrorBed, make_bed


async def fresh_start(bed: MirrorBed) -> None:
    """Seed rows in unified only, tenant databases empty, capture on, shops in ``provisioned``."""
    svc = await DualWriteService.open(bed.config(), run_worker=False)
    try:
        await svc.disable()
        conn = await bed.unified_admin()
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
            await conn.execute(
                "TRUNCATE pgtenantproxy.outbox, pgtenantproxy.dead_letters, pgtenantproxy.mirror_state,"
                " pgtenantproxy.backfill_progress, pgtenantproxy.write_fences,"
                " pgtenantproxy.cutover_conflicts, pgtenantproxy.retirement_archives,"
                " pgtenantproxy.read_overrides, pgtenantproxy.routing_state, pgtenantproxy.migration_log,"
                " pgtenantproxy.id_blocks, pgtenantproxy.fk_proofs, pgtenantproxy.key_directory,"
                " pgtenantproxy.key_directory_text"
            )
            await conn.execute("UPDATE pgtenantproxy.shop_phases SET fence = NULL, fence_until = NULL")
            for shop in SHOPS:
                await force_phase(conn, shop, PROVISIONED, reason="test bed reset")
        finally:
            await conn.close()
        await asyncio.gather(*(_empty_tenant(bed, s) for s in SHOPS))
        await bed.psql_file(HERE / "seed.sql")
        await svc.enable()
    finally:
        await svc.close()


async def _empty_tenant(bed: MirrorBed, shop: int) -> None:
    """The shop's tenant database without rows, reverse capture, fence or queued entries."""
    conn = await bed.shop_admin(shop)
    try:
        if await conn.fetchval("SELECT to_regclass('pgtenantproxy.capture_tables') IS NOT NULL"):
            await disable_capture(conn)
            await conn.execute("TRUNCATE pgtenantproxy.outbox, pgtenantproxy.dead_letters,"
                               " pgtenantproxy.mirror_state, pgtenantproxy.write_fences")
        await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        for seq in await conn.fetch(_SEQUENCES):  # a cutover's id block bounded them (MAXVALUE)
            await conn.execute(f"ALTER SEQUENCE {seq[0]} NO MAXVALUE")
    finally:
        await conn.close()


_SEQUENCES = """SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind = 'S' AND n.nspname = 'public'"""


@pytest.fixture(scope="package")
async def lifecycle_bed() -> AsyncIterator[MirrorBed]:
    bed = await make_bed()
    try:
        yield bed
    finally:
        bed.destroy()


@pytest.fixture(scope="module")
async def lbed(lifecycle_bed: MirrorBed) -> MirrorBed:
    """The bed at "before backfill" (see :func:`fresh_start`), once per test module."""
    await fresh_start(lifecycle_bed)
    return lifecycle_bed
