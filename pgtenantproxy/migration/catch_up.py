"""Restore's catch-up: what a retired shop wrote to its own database since its archive, back into unified.

After retirement nothing records the shop's writes (its reverse capture is
removed), so the archive is only the state at retirement. Once the archive is
loaded into unified, :func:`catch_up` compares every row of the shop on both
sides (row hashes by key, :mod:`.checksums`), queues each key that differs in
the tenant database's outbox (the reverse capture, re-installed by then,
queues the writes that happen meanwhile the same way) and drains that outbox
into unified with the mirror's own :class:`~pgtenantproxy.dualwrite.apply.Applier`
(source: the tenant database; each key synced to its current row there, or
deleted from unified when the tenant no longer has it).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from pgtenantproxy.config import DualWriteSection
from pgtenantproxy.dualwrite.apply import Applier
from pgtenantproxy.dualwrite.catalog import Catalog
from pgtenantproxy.dualwrite.retry import RetryPolicy
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.migration.checksums import comparable, range_hashes
from pgtenantproxy.migration.keyranges import KeyRange

_QUEUE = """INSERT INTO pgtenantproxy.outbox (shop_id, tbl, pk, op)
            SELECT $1, $2, k::jsonb, 'U' FROM unnest($3::text[]) AS k"""


async def differing(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo, shop_id: int
) -> list[str]:
    """Every key of the shop whose row differs between the two sides (or exists on one only)."""
    a = await _hashes(unified, table, shop_id)
    b = await _hashes(tenant, table, None)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


async def catch_up(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, tables: Sequence[TableInfo], shop_id: int,
    section: DualWriteSection,
) -> int:
    """Queue and apply every differing key (tenant -> unified); returns how many keys were queued."""
    queued = 0
    for table in tables:
        keys = await differing(unified, tenant, table, shop_id)
        if keys:
            await tenant.execute(_QUEUE, shop_id, table.label, keys)
            queued += len(keys)
    applier = Applier(Catalog(), RetryPolicy.from_config(section), MirrorStats(),
                      batch_size=section.batch_size, replica=True)
    while True:
        result = await applier.run_batch(tenant, unified, shop_id)
        if result.claimed < section.batch_size:
            return queued


async def _hashes(conn: asyncpg.Connection, table: TableInfo, shop_id: int | None) -> dict[str, int]:
    async with comparable(conn):
        return await range_hashes(conn, table, KeyRange(), shop_id)
