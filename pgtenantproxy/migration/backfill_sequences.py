"""After the copy: the tenant's serial and identity sequences moved past every id already handed out.

For each column of a copied table that owns a sequence on the tenant
(``pg_get_serial_sequence``: serial and identity columns alike), the tenant
sequence is set to ``greatest(max(column) on the tenant, what unified's
sequence has handed out)``. Unified's sequence is shared by every shop, so
this keeps ids assigned later on the tenant clear of ids unified has already
given to any shop, as well as of the copied rows. A sequence whose value would
be below its minimum is reset to the minimum, not yet called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.sqltext import ident

logger = logging.getLogger(__name__)

#: Each column of a table that owns a sequence (serial and identity alike), with the sequence.
OWNED_SEQUENCES = """
SELECT a.attname, pg_get_serial_sequence($1, a.attname) AS seq
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND pg_get_serial_sequence($1, a.attname) IS NOT NULL
ORDER BY a.attnum
"""
_HANDED_OUT = """
SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END FROM {seq} AS s
"""
_BOUNDS = "SELECT seqmin, seqincrement FROM pg_sequence WHERE seqrelid = $1::regclass"


@dataclass(frozen=True)
class SequenceMove:
    table: str
    column: str
    sequence: str
    value: int


async def handed_out(source: asyncpg.Connection, table: TableInfo, column: str) -> int | None:
    """The last value unified's sequence of ``table.column`` has handed out (None: no sequence)."""
    seq = await source.fetchval("SELECT pg_get_serial_sequence($1, $2)", table.name.sql, column)
    if seq is None:
        return None
    value = await source.fetchval(_HANDED_OUT.format(seq=seq))
    return int(value)


async def sync_sequences(
    source: asyncpg.Connection, target: asyncpg.Connection, tables: Sequence[TableInfo]
) -> list[SequenceMove]:
    """Move every sequence of ``tables`` on ``target`` past the copied ids and unified's ids."""
    moves: list[SequenceMove] = []
    for table in tables:
        for row in await target.fetch(OWNED_SEQUENCES, table.name.sql):
            column, seq = row["attname"], row["seq"]
            bounds = await target.fetchrow(_BOUNDS, seq)
            if bounds is None or bounds["seqincrement"] < 0:
                logger.info("%s: sequence %s counts down; left alone", table.label, seq)
                continue
            highest = await target.fetchval(f"SELECT max({ident(column)})::bigint FROM {table.name.sql}")
            unified = await handed_out(source, table, column)
            value = max(int(highest or 0), unified or 0)
            minimum = int(bounds["seqmin"])
            if value >= minimum:
                await target.execute("SELECT setval($1::regclass, $2, true)", seq, value)
            else:
                await target.execute("SELECT setval($1::regclass, $2, false)", seq, minimum)
            moves.append(SequenceMove(table.label, column, seq, max(value, minimum)))
    return moves
