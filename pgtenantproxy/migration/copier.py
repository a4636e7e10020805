"""One table of one shop, copied from the unified snapshot into the tenant database by COPY.

:func:`plan_table` counts the shop's rows in the source snapshot and, when
there are more than ``every``, cuts them into primary-key ranges of ``every``
rows (:mod:`.keyranges`); a shop that fits one chunk is copied by one plain
scan, without key order. :func:`copy_table`
then, inside the tenant transaction the caller opened (with
``session_replication_role = replica``, so foreign keys and user triggers stay
quiet), deletes whatever the table holds (a re-run after a crash starts clean:
no duplicates) and pipes each range::

    source: COPY (SELECT cols FROM t WHERE shop = N AND <range> ORDER BY pk) TO STDOUT (FORMAT binary)
    target: COPY t (cols) FROM STDIN (FORMAT binary)

through a bounded queue (the source is paused while the target lags behind).
Generated columns are left out (the target computes them). Binary COPY is
used unless a column holds an array or composite of a user-defined type, whose
binary form carries type OIDs that differ between databases: such tables go
in text format. Both COPY statuses are compared, so a truncated stream can
never pass for a complete one (the pipe also fails the target's COPY when the
source's fails). The throttle is paid before each range, for the rows it
holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.keyranges import KeyRange, boundaries, key_columns, range_condition, ranges
from pgtenantproxy.migration.throttle import TokenBucket
from pgtenantproxy.sqltext import ident, literal

PIPE_DEPTH = 8  # COPY data messages buffered between the source and the target
FIRST_USER_OID = 16384

_OID_BOUND_COLUMNS = """
SELECT count(*) FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type b ON b.oid = t.typbasetype
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
  AND (coalesce(nullif(b.typelem, 0), nullif(t.typelem, 0)) >= $2
       OR t.typtype = 'c' OR b.typtype = 'c')
"""

#: ``(rows, bytes)`` copied of the table so far, after each range.
ChunkCallback = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class TablePlan:
    table: TableInfo
    rows_total: int
    keys: list[str]  # every ``every``-th key of the shop, in key order
    every: int
    binary: bool

    @property
    def label(self) -> str:
        return self.table.label

    def chunks(self) -> list[tuple[KeyRange, int]]:
        """The key ranges to copy, with the rows each holds in the snapshot."""
        last = self.rows_total - self.every * len(self.keys)
        return [(rng, self.every if i < len(self.keys) else last) for i, rng in enumerate(ranges(self.keys))]


async def plan_table(source: asyncpg.Connection, table: TableInfo, shop_id: int, every: int) -> TablePlan:
    total = int(await source.fetchval(
        f"SELECT count(*) FROM {table.name.sql} WHERE {_shop_condition(table, shop_id)}"))
    keys: list[str] = []
    if total > every:  # several ranges; a shop that fits one chunk is copied by one plain scan
        total, keys = await boundaries(source, table, shop_id, every)
    oid_bound = await source.fetchval(_OID_BOUND_COLUMNS, table.name.sql, FIRST_USER_OID)
    return TablePlan(table, total, keys, every, binary=not oid_bound)


def _shop_condition(table: TableInfo, shop_id: int) -> str:
    column = next((c for c in table.columns if c.name == table.tenant_column), None)
    cast = f"::{column.type_sql}" if column is not None else ""
    return f"{ident(table.tenant_column)} = {literal(str(shop_id))}::text{cast}"


def select_sql(plan: TablePlan, shop_id: int, rng: KeyRange) -> str:
    """The source side of one range: the shop's rows, stored columns only, in key order."""
    table = plan.table
    cols = ", ".join(ident(c.name) for c in table.stored_columns)
    if rng.after is None and rng.upto is None:
        return f"SELECT {cols} FROM {table.name.sql} WHERE {_shop_condition(table, shop_id)}"
    where, _ = range_condition(table, rng, params=False)
    return (f"SELECT {cols} FROM {table.name.sql} WHERE {_shop_condition(table, shop_id)} AND {where}"
            f" ORDER BY {key_columns(table)}")


async def copy_table(
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    plan: TablePlan,
    shop_id: int,
    *,
    throttle: TokenBucket,
    on_chunk: ChunkCallback,
) -> tuple[int, int]:
    """Replace the table's rows on ``target`` (inside its open transaction); returns ``(rows, bytes)``."""
    await target.execute(f"DELETE FROM {plan.table.name.sql}")
    rows = nbytes = 0
    for rng, expected in plan.chunks():
        await throttle.acquire(expected)
        copied, size = await pipe(source, target, plan, select_sql(plan, shop_id, rng))
        rows += copied
        nbytes += size
        await on_chunk(rows, nbytes)
    return rows, nbytes


async def pipe(
    source: asyncpg.Connection, target: asyncpg.Connection, plan: TablePlan, query: str
) -> tuple[int, int]:
    """``COPY (query) TO STDOUT`` on ``source`` into ``COPY table FROM STDIN`` on ``target``."""
    fmt = "binary" if plan.binary else "text"
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=PIPE_DEPTH)
    size = 0

    async def sink(data: bytes) -> None:
        nonlocal size
        size += len(data)
        await queue.put(data)

    producer = asyncio.ensure_future(source.copy_from_query(query, output=sink, format=fmt))
    try:
        status_in = await target.copy_to_table(
            plan.table.name.name, schema_name=plan.table.name.schema, source=_drain(queue, producer),
            columns=[c.name for c in plan.table.stored_columns], format=fmt,
        )
    except BaseException:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        raise
    sent, received = _count(await producer), _count(status_in)
    if sent != received:
        raise MigrationError(
            f"{plan.label}: the source sent {sent} rows but the tenant database took {received}"
        )
    return received, size


async def _drain(queue: asyncio.Queue[bytes], producer: asyncio.Future[str]) -> AsyncIterator[bytes]:
    """The queued COPY data until the producer is done (re-raising its failure: the target COPY fails)."""
    while True:
        if queue.empty() and producer.done():
            producer.result()
            return
        getter: asyncio.Future[bytes] = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {getter, producer}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            yield getter.result()
        else:
            getter.cancel()


def _count(status: str) -> int:
    """Rows of a ``COPY n`` command status."""
    return int(status.split()[-1])
