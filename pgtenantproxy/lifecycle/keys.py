"""Facts about keys that routing by key reads and the migration writes (control schema, step 5).

* **Id blocks** (``pgtenantproxy.id_blocks``): the ranges of a shared
  sequence's ids reserved for one shop's own database at its cutover (and
  every refill after). An id inside a shop's block was drawn on that shop's
  database: routing knows its shop without a lookup.
* **Foreign-key proofs** (``pgtenantproxy.fk_proofs``): for each foreign key
  between two tenant tables, whether the last check found every referencing
  row pointing at a row of the *same* shop. Only a consistent foreign key lets
  a pin follow it (``repairs.customer_id -> customers.id``).
* **The key directory** (``pgtenantproxy.key_directory`` for integer keys, as
  ranges; ``key_directory_text`` for other keys, one row each): the keys of
  shops whose rows left unified (retired), written in the retirement's own
  transaction, before the rows are deleted.

Tables are named by their label (``schema.table``), columns by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class IdBlockRecord:
    table: str
    column: str
    shop_id: int
    first: int
    last: int

    def holds(self, key: int) -> bool:
        return self.first <= key <= self.last


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """``child(child_cols) REFERENCES parent(parent_cols)``, as named in the unified catalog."""

    child: str
    name: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FkProof:
    fk: ForeignKey
    consistent: bool
    cross_refs: int = 0
    #: A few referencing rows that point at another shop's row: child key, child shop, parent shop.
    samples: tuple[dict[str, Any], ...] = field(default=())


async def record_id_blocks(
    conn: asyncpg.Connection, shop_id: int, blocks: Iterable[tuple[str, str, int, int]]
) -> None:
    """Record ``(table, column, first, last)`` blocks reserved for ``shop_id`` (idempotent)."""
    await conn.executemany(
        """INSERT INTO pgtenantproxy.id_blocks (tbl, col, shop_id, first_id, last_id)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tbl, col, first_id) DO UPDATE SET shop_id = excluded.shop_id,
               last_id = excluded.last_id, reserved_at = clock_timestamp()""",
        [(t, c, shop_id, first, last) for t, c, first, last in blocks],
    )


async def read_id_blocks(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[IdBlockRecord, ...]:
    if not await _exists(conn, "pgtenantproxy.id_blocks"):
        return ()
    rows = await conn.fetch("SELECT tbl, col, shop_id, first_id, last_id FROM pgtenantproxy.id_blocks "
                            "ORDER BY tbl, col, first_id")
    return tuple(IdBlockRecord(r["tbl"], r["col"], int(r["shop_id"]), int(r["first_id"]), int(r["last_id"]))
                 for r in rows)


async def record_fk_proof(conn: asyncpg.Connection, proof: FkProof) -> None:
    fk = proof.fk
    await conn.execute(
        """INSERT INTO pgtenantproxy.fk_proofs
               (child, name, child_cols, parent, parent_cols, consistent, cross_refs, samples)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
           ON CONFLICT (child, name) DO UPDATE SET child_cols = excluded.child_cols,
               parent = excluded.parent, parent_cols = excluded.parent_cols,
               consistent = excluded.consistent, cross_refs = excluded.cross_refs,
               samples = excluded.samples, checked_at = clock_timestamp()""",
        fk.child, fk.name, list(fk.child_cols), fk.parent, list(fk.parent_cols), proof.consistent,
        proof.cross_refs, json.dumps(list(proof.samples), default=str),
    )


async def read_fk_proofs(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[FkProof, ...]:
    if not await _exists(conn, "pgtenantproxy.fk_proofs"):
        return ()
    rows = await conn.fetch("SELECT child, name, child_cols, parent, parent_cols, consistent, cross_refs, "
                            "samples FROM pgtenantproxy.fk_proofs ORDER BY child, name")
    return tuple(
        FkProof(
            ForeignKey(r["child"], r["name"], tuple(r["child_cols"]), r["parent"], tuple(r["parent_cols"])),
            bool(r["consistent"]), int(r["cross_refs"]), tuple(json.loads(r["samples"])),
        )
        for r in rows
    )


async def _exists(conn: asyncpg.Connection | asyncpg.Pool, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
