"""The SQL of verification: content checksums per key range, and row hashes per key (both sides).

A row's hash is ``hashtextextended(ROW(c1, c2, ...)::text, 0)`` over the
unified table's columns *by name*, so a tenant table whose columns are in
another order hashes the same. Text forms depend on session settings, so
both sides read under :data:`SESSION_SETTINGS` (UTC, ISO dates, exact floats,
postgres intervals). A range's checksum is ``(count(*), sum(hash))``: order
free, and a change, a missing or an extra row changes it (up to hash
collisions, which the per-key diff would then not see either).

Keys are jsonb array texts (:mod:`.keyranges`): canonical, so the same key
reads as the same string on both sides.

* :func:`unified_pass`: in the caller's (REPEATABLE READ) transaction, one
  pass over the shop's rows in key order that yields both the range
  boundaries (every ``every``-th key) and each range's checksum;
* :func:`range_sums`: a range's checksum (the tenant side);
* :func:`range_hashes` / :func:`key_hashes`: ``{key: hash}`` of a range, or of
  given keys (``None`` for a key that has no row).

``shop`` is None on the tenant side: its database holds the shop's rows only
(pinned by a CHECK), and any other row there is "extra" anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.migration.keyranges import KeyRange, key_json, range_condition, ranges
from pgtenantproxy.sqltext import ident

#: Both sides print values the same way under these.
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "extra_float_digits": "3",
    "IntervalStyle": "postgres",
}

#: ``(rows, sum of row hashes)`` of one range.
Checksum = tuple[int, Decimal]
EMPTY: Checksum = (0, Decimal(0))


@asynccontextmanager
async def comparable(conn: asyncpg.Connection, *, repeatable: bool = False) -> AsyncIterator[None]:
    """A read-only transaction under :data:`SESSION_SETTINGS` (``SET LOCAL``: nothing leaks), so row
    hashes read on either side compare."""
    isolation = "repeatable_read" if repeatable else "read_committed"
    async with conn.transaction(isolation=isolation, readonly=True):
        await conn.execute(set_local_sql())
        yield


def set_local_sql() -> str:
    """``SET LOCAL`` of :data:`SESSION_SETTINGS` (inside a transaction)."""
    return "; ".join(f"SET LOCAL {name} = '{value}'" for name, value in SESSION_SETTINGS.items())


def row_hash(table: TableInfo, alias: str = "") -> str:
    """``hashtextextended(ROW(a, b, ...)::text, 0)`` over every column, by name, in the unified order."""
    prefix = f"{alias}." if alias else ""
    cols = ", ".join(prefix + ident(c.name) for c in table.columns)
    return f"hashtextextended(ROW({cols})::text, 0)"


def shop_filter(table: TableInfo, param: str, alias: str = "") -> str:
    """The tenant column equal to a shop id passed as bigint, compared in the column's own type."""
    column = next((c for c in table.columns if c.name == table.tenant_column), None)
    cast = f"::text::{column.type_sql}" if column is not None else ""
    prefix = f"{alias}." if alias else ""
    return f"{prefix}{ident(table.tenant_column)} = {param}{cast}"


def unified_pass_sql(table: TableInfo) -> str:
    """``$1`` shop, ``$2`` every: per group of ``every`` rows in key order, its rows, sum and last key."""
    order = ", ".join(ident(c.name) for c in table.pk)
    return f"""SELECT (n - 1) / $2 AS r, count(*) AS rows, coalesce(sum(h), 0) AS sum,
                  min(k) FILTER (WHERE n % $2 = 0) AS upto
           FROM (SELECT row_number() OVER (ORDER BY {order}) AS n, {key_json(table)} AS k,
                        {row_hash(table)} AS h
                 FROM {table.name.sql} WHERE {shop_filter(table, '$1::bigint')}) s
           GROUP BY 1 ORDER BY 1"""


def range_sums_sql(table: TableInfo, rng: KeyRange, *, shop: bool) -> tuple[str, list[str]]:
    """``count(*), sum(hash)`` of a range; parameters: ``$1`` shop (when ``shop``), then the bounds."""
    first = 2 if shop else 1
    cond, values = range_condition(table, rng, params=True, first=first)
    where = f"{shop_filter(table, '$1::bigint')} AND {cond}" if shop else cond
    sql = f"SELECT count(*) AS rows, coalesce(sum({row_hash(table)}), 0) AS sum FROM {table.name.sql}"
    return f"{sql} WHERE {where}", values


def range_hashes_sql(table: TableInfo, rng: KeyRange, *, shop: bool) -> tuple[str, list[str]]:
    """``key, hash`` of every row of a range (parameters as :func:`range_sums_sql`)."""
    first = 2 if shop else 1
    cond, values = range_condition(table, rng, params=True, first=first)
    where = f"{shop_filter(table, '$1::bigint')} AND {cond}" if shop else cond
    sql = f"SELECT {key_json(table)} AS k, {row_hash(table)} AS h FROM {table.name.sql}"
    return f"{sql} WHERE {where}", values


def key_hashes_sql(table: TableInfo, *, shop: bool) -> str:
    """``key, hash`` (NULL: no row) of the keys in the jsonb array ``$1`` (``$2`` shop when ``shop``).

    One primary-key probe per key, whatever the table's size.
    """
    match = " AND ".join(f"x.{ident(c.name)} = (k.key ->> {i})::{c.type_sql}" for i, c in enumerate(table.pk))
    if shop:
        match += f" AND {shop_filter(table, '$2::bigint', 'x')}"
    probe = f"(SELECT {row_hash(table, 'x')} FROM {table.name.sql} AS x WHERE {match})"
    return f"SELECT k.key::text AS k, {probe} AS h FROM jsonb_array_elements($1::jsonb) AS k(key)"


# --- running them -----------------------------------------------------------------


async def unified_pass(
    conn: asyncpg.Connection, table: TableInfo, shop_id: int, every: int
) -> tuple[list[KeyRange], list[Checksum]]:
    """The shop's ranges (boundaries every ``every`` keys) and each one's checksum, in one pass."""
    rows = await conn.fetch(unified_pass_sql(table), shop_id, every)
    keys = [str(r["upto"]) for r in rows if r["upto"] is not None]
    sums: list[Checksum] = [(int(r["rows"]), Decimal(r["sum"])) for r in rows]
    cut = ranges(keys)
    sums += [EMPTY] * (len(cut) - len(sums))  # the open-ended last range is empty when total % every == 0
    return cut, sums


def _shop_args(shop_id: int | None) -> list[int]:
    return [] if shop_id is None else [shop_id]


async def range_sums(
    conn: asyncpg.Connection, table: TableInfo, rng: KeyRange, shop_id: int | None
) -> Checksum:
    sql, values = range_sums_sql(table, rng, shop=shop_id is not None)
    row = await conn.fetchrow(sql, *_shop_args(shop_id), *values)
    assert row is not None
    return int(row["rows"]), Decimal(row["sum"])


async def range_hashes(
    conn: asyncpg.Connection, table: TableInfo, rng: KeyRange, shop_id: int | None
) -> dict[str, int]:
    sql, values = range_hashes_sql(table, rng, shop=shop_id is not None)
    return {str(r["k"]): int(r["h"]) for r in await conn.fetch(sql, *_shop_args(shop_id), *values)}


async def key_hashes(
    conn: asyncpg.Connection, table: TableInfo, keys: Sequence[str], shop_id: int | None
) -> dict[str, int | None]:
    """``{key: hash or None}`` for exactly the given keys."""
    if not keys:
        return {}
    args: list[object] = ["[" + ",".join(keys) + "]", *_shop_args(shop_id)]
    rows = await conn.fetch(key_hashes_sql(table, shop=shop_id is not None), *args)
    return {str(r["k"]): (None if r["h"] is None else int(r["h"])) for r in rows}
