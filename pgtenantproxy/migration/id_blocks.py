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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.backfill_sequences import OWNED_SEQUENCES as _OWNED
from pgtenantproxy.tenancy.sql import ident

logger = logging.getLogger(__name__)

_TYPE_MAX = "SELECT seqmax, seqincrement FROM pg_sequence WHERE seqrelid = $1::regclass"


@dataclass(frozen=True)
class IdBlock:
    table: str
    column: str
    first: int  # the first id the tenant hands out
    last: int  # the last one (its MAXVALUE)

    def as_dict(self) -> dict[str, object]:
        return {"table": self.table, "column": self.column, "first": self.first, "last": self.last}


async def reserve_id_blocks(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, tables: Sequence[TableInfo], block: int
) -> list[IdBlock]:
    """Reserve a block per tenant-owned sequence (see the module doc); returns what was reserved."""
    reserved: list[IdBlock] = []
    for table in tables:
        for row in await tenant.fetch(_OWNED, table.name.sql):
            shared = await unified.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name.sql,
                                            row["attname"])
            if shared is None:
                continue  # unified hands out no ids for this column: nothing to keep apart
            reserved.append(await _reserve(unified, tenant, table, row["attname"], shared, row["seq"], block))
    return reserved


async def _reserve(
    unified: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo, column: str,
    shared: str, own: str, block: int,
) -> IdBlock:
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
    await tenant.execute(f"ALTER SEQUENCE {own} MAXVALUE {end} RESTART WITH {first}")
    logger.info("%s.%s: ids %d..%d reserved for the tenant database", table.label, column, first, end)
    return IdBlock(table.label, column, first, end)
