"""At cutover: a block of ids in each shared sequence, reserved for the shop's own database.

Unified's serial and identity sequences are shared by every shop. Once a
shop writes to its own database, ids drawn there must never be drawn by
unified for another shop, or reverse mirroring would bring two rows with one
key into unified (the apply fails, the shop degrades). So for each sequence
the tenant owns, the cutover moves unified's sequence ``block`` ids ahead in
one statement (``setval(seq, nextval(seq) + block)``: ``v`` is the value our
``nextval`` drew) and gives the tenant the upper half of the gap,
``(v + block/2, v + block]``, as a bounded sequence (``MAXVALUE``): the lower
half absorbs ids other sessions drew between our ``nextval`` and ``setval``
(microseconds apart). A shop that uses up its block gets PostgreSQL's own
"reached maximum value of sequence" error, never a silent collision; the
sequence type's maximum caps the block.

**Recorded.** Every block is recorded in ``pgtenantproxy.id_blocks``
(:func:`pgtenantproxy.lifecycle.keys.record_id_blocks`, via :func:`record_blocks`)
before the shop's database can hand out an id from it: a cutover records its
blocks in the transaction that flips the shop to ``tenant_primary``
(:mod:`.cutover`), a refill (:mod:`.id_refill`) records the next block before it
moves the tenant's sequence into it. Routing by key reads the record: an id
inside a shop's block was drawn on that shop's database. A recorded block the
tenant never used (a flip that failed after the reservation) is harmless: unified
never hands out its ids either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.keys import record_id_blocks
from pgtenantproxy.migration.backfill_sequences import OWNED_SEQUENCES as _OWNED
from pgtenantproxy.sqltext import QualifiedName, ident

logger = logging.getLogger(__name__)

_TYPE_MAX = "SELECT seqmax, seqincrement FROM pg_sequence WHERE seqrelid = $1::regclass"
_NAME = """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.oid = $1::regclass"""


@dataclass(frozen=True)
class IdBlock:
    table: str
    column: str
    first: int  # the first id the tenant hands out
    last: int  # the last one (its MAXVALUE)

    def as_dict(self) -> dict[str, object]:
        return {"table": self.table, "column": self.column, "first": self.first, "last": self.last}

    @property
    def size(self) -> int:
        return self.last - self.first + 1


async def record_blocks(conn: asyncpg.Connection, shop_id: int, blocks: Sequence[IdBlock]) -> None:
    """Record ``blocks`` as reserved for ``shop_id`` in the control schema (idempotent)."""
    if blocks:
        await record_id_blocks(conn, shop_id, [(b.table, b.column, b.first, b.last) for b in blocks])


async def reserve_id_blocks(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, tables: Sequence[TableInfo], block: int
) -> list[IdBlock]:
    """Reserve a block per tenant-owned sequence (see the module doc); returns what was reserved.

    The caller records the blocks (:func:`record_blocks`) before the tenant hands out ids."""
    reserved: list[IdBlock] = []
    for table in tables:
        for row in await tenant.fetch(_OWNED, table.name.sql):
            shared = await shared_sequence(unified, table, row["attname"])
            if shared is None:
                continue  # unified hands out no ids for this column: nothing to keep apart
            claimed = await claim_block(unified, tenant, table, row["attname"], shared, block)
            await apply_block(tenant, await sequence_name(tenant, row["seq"]), claimed)
            reserved.append(claimed)
    return reserved


async def shared_sequence(unified: asyncpg.Connection, table: TableInfo, column: str) -> str | None:
    """Unified's sequence of ``table.column`` (a regclass text, quoted as needed), or None."""
    seq = await unified.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name.sql, column)
    return None if seq is None else str(seq)


async def claim_block(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo, column: str,
    shared: str, block: int,
) -> IdBlock:
    """Move unified's sequence ``block`` ids ahead; the tenant's share of the gap (not applied yet)."""
    bounds = await unified.fetchrow(_TYPE_MAX, shared)
    assert bounds is not None
    if int(bounds["seqincrement"]) != 1:
        raise MigrationError(f"{table.label}.{column}: sequence {shared} does not count up by 1; "
                             "reserve ids for the shop by hand")
    ceiling = int(bounds["seqmax"])
    end = int(await unified.fetchval(
        "SELECT setval($1::regclass, least(nextval($1::regclass) + $2, $3))", shared, block, ceiling))
    highest = int(await tenant.fetchval(f"SELECT coalesce(max({ident(column)}), 0)::bigint FROM "
                                        f"{table.name.sql}"))
    first = max(end - block // 2, highest) + 1
    if first > end:
        raise MigrationError(f"{table.label}.{column}: no ids left to reserve below the maximum of {shared}")
    return IdBlock(table.label, column, first, end)


async def sequence_name(conn: asyncpg.Connection, regclass: str) -> QualifiedName:
    """A sequence named by a regclass text (``pg_get_serial_sequence``), as a name to quote."""
    row = await conn.fetchrow(_NAME, regclass)
    assert row is not None
    return QualifiedName(row["nspname"], row["relname"])


async def apply_block(tenant: asyncpg.Connection, own: QualifiedName, block: IdBlock) -> None:
    """The tenant's sequence ``own`` hands out ``block`` from now on (ids left in its previous block
    are skipped: unified's sequence is past them already, so nobody draws them)."""
    await tenant.execute(f"ALTER SEQUENCE {own.sql} MAXVALUE {block.last:d} RESTART WITH {block.first:d}")
    logger.info("%s.%s: ids %d..%d reserved for the tenant database", block.table, block.column, block.first,
                block.last)
