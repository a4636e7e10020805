"""Per-table backfill checkpoints in ``pgtenantproxy.backfill_progress`` (control schema v3).

One row per (shop, table): ``pending`` once the shop's run has counted the
table in its snapshot, ``copying`` while its chunks go (rows and bytes so far),
``done`` once the tenant transaction holding the copy has committed. A re-run
after a crash skips ``done`` tables and copies the others again from scratch
(the tenant side of a table is cleared in the same transaction as its copy, so
nothing is duplicated). A fresh backfill (from ``provisioned``) forgets the
shop's old rows first: checkpoints describe the current attempt only.

:func:`shop_progress` is the summary ``pgtenantproxy status`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import asyncpg

PENDING = "pending"
COPYING = "copying"
DONE = "done"

Db: TypeAlias = "asyncpg.Connection | asyncpg.Pool"



@dataclass(frozen=True)
class Checkpoint:
    table: str
    status: str
    rows_total: int | None
    rows_copied: int
    bytes_copied: int


@dataclass(frozen=True)
class ShopProgress:
    """A shop's backfill as ``status`` shows it."""

    shop_id: int
    rows_copied: int
    rows_total: int
    tables_done: int
    tables_total: int
    updated_at: datetime | None

    @property
    def done(self) -> bool:
        return self.tables_total > 0 and self.tables_done == self.tables_total

    def as_dict(self) -> dict[str, object]:
        return {"rows_copied": self.rows_copied, "rows_total": self.rows_total,
                "tables_done": self.tables_done, "tables_total": self.tables_total,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


async def forget(db: Db, shop_id: int) -> None:
    """Drop the shop's checkpoints (a fresh backfill starts)."""
    await db.execute("DELETE FROM pgtenantproxy.backfill_progress WHERE shop_id = $1", shop_id)


async def read(db: Db, shop_id: int) -> dict[str, Checkpoint]:
    rows = await db.fetch(
        "SELECT tbl, status, rows_total, rows_copied, bytes_copied FROM pgtenantproxy.backfill_progress"
        " WHERE shop_id = $1",
        shop_id,
    )
    return {
        r["tbl"]: Checkpoint(r["tbl"], r["status"], r["rows_total"], int(r["rows_copied"]),
                             int(r["bytes_copied"]))
        for r in rows
    }


async def plan(db: Db, shop_id: int, totals: Sequence[tuple[str, int]]) -> None:
    """Record the tables still to copy (``pending``, their row count in this run's snapshot)."""
    await db.executemany(
        "INSERT INTO pgtenantproxy.backfill_progress AS p (shop_id, tbl, status, rows_total)"
        " VALUES ($1, $2, 'pending', $3)"
        " ON CONFLICT (shop_id, tbl) DO UPDATE SET status = 'pending', rows_total = excluded.rows_total,"
        " rows_copied = 0, bytes_copied = 0, started_at = NULL, finished_at = NULL,"
        " updated_at = clock_timestamp()",
        [(shop_id, table, rows) for table, rows in totals],
    )


async def copying(db: Db, shop_id: int, table: str, rows: int, nbytes: int) -> None:
    """The table's copy so far (its tenant transaction is still open)."""
    await db.execute(
        "UPDATE pgtenantproxy.backfill_progress SET status = 'copying', rows_copied = $3, bytes_copied = $4,"
        " started_at = coalesce(started_at, clock_timestamp()), updated_at = clock_timestamp()"
        " WHERE shop_id = $1 AND tbl = $2",
        shop_id, table, rows, nbytes,
    )


async def done(db: Db, shop_id: int, table: str, rows: int, nbytes: int) -> None:
    """The table's copy is committed on the tenant."""
    await db.execute(
        "UPDATE pgtenantproxy.backfill_progress SET status = 'done', rows_copied = $3, bytes_copied = $4,"
        " started_at = coalesce(started_at, clock_timestamp()), finished_at = clock_timestamp(),"
        " updated_at = clock_timestamp() WHERE shop_id = $1 AND tbl = $2",
        shop_id, table, rows, nbytes,
    )


async def shop_progress(db: Db, shop_ids: Sequence[int] | None = None) -> dict[int, ShopProgress]:
    """Per shop with checkpoints: rows copied / counted, tables done / planned (for ``status``)."""
    rows = await db.fetch(
        "SELECT shop_id, sum(rows_copied) AS copied, sum(coalesce(rows_total, 0)) AS total,"
        " count(*) FILTER (WHERE status = 'done') AS done, count(*) AS tables, max(updated_at) AS at"
        " FROM pgtenantproxy.backfill_progress WHERE $1::bigint[] IS NULL OR shop_id = ANY($1::bigint[])"
        " GROUP BY shop_id ORDER BY shop_id",
        None if shop_ids is None else list(shop_ids),
    )
    return {
        int(r["shop_id"]): ShopProgress(int(r["shop_id"]), int(r["copied"]), int(r["total"]), int(r["done"]),
                                        int(r["tables"]), r["at"])
        for r in rows
    }
