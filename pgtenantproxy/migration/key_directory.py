"""The key directory: which retired shop owned a primary-key value, written when its rows leave unified.

Once a shop is retired its rows are gone from unified, so routing by key
(``UPDATE repairs SET ... WHERE id = $1``) cannot find the key's shop there.
Retirement (:mod:`.retire_shop`) therefore writes the shop's keys into the
control schema, in its own transaction, before the delete:

* a table whose primary key is one integer column (``smallint``, ``integer``,
  ``bigint``): ``pgtenantproxy.key_directory`` rows ``(tbl, keys int8range,
  shop_id)``, one per *island*: a maximal run of the shop's keys, in key order,
  with no row of any other shop of the same table between them. Computed in one
  statement over the whole table with the gaps-and-islands pattern
  (``row_number() OVER (ORDER BY pk) - row_number() OVER (PARTITION BY <the
  row is the shop's> ORDER BY pk)`` is constant along an island of the shop)
  and written as ``int8range(min, max, '[]')``. The rows of shops retired
  before are gone from the table, so both ends of each of their directory
  ranges take part as rows of "another shop": an island never spans a range of
  an earlier retired shop, and each key stays covered by its own shop only. A
  shop whose rows were inserted in bursts needs few ranges; a table whose
  shops interleave row by row needs about one range per row
  (``bench/key_directory_bench.py`` measures both);
* a table whose primary key is one column of another type (``uuid``, ``text``,
  ...): ``pgtenantproxy.key_directory_text`` rows ``(tbl, key, shop_id)``, one
  per key, the key as ``pk::text`` under the verification's text settings
  (:data:`~.checksums.SESSION_SETTINGS`: UTC, ISO dates), so a reader casting a
  parameter to text under the same settings finds it;
* a table with a composite primary key: nothing. Such a table is not routed by
  key (its statements carry the shop column, or go by foreign keys).

Tables are named by their capture label (``schema.table``).

**Invariant.** After retirement, every key of the shop that existed when it was
retired is covered by a directory row of that shop (a range that contains it,
or its text row). A range of shop S contained no key of another shop at
retirement time (it is an island in the retirement's snapshot); a key written
later inside it (by another shop, in unified) is found in unified first, or
confirmed on the databases, by whoever reads the directory. The directory rows
of a shop are replaced at each retirement and removed when the shop is
restored (its rows are back in unified).

Every SQL text that names a table or column is built through
:func:`~pgtenantproxy.sqltext.ident` / ``QualifiedName.sql``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.migration.checksums import set_local_sql
from pgtenantproxy.sqltext import ident

#: Key types written as ranges (``format_type`` spelling).
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})

RANGES = "ranges"
TEXT = "text"
NOT_ROUTED = "composite key"

_FORGET_RANGES = "DELETE FROM pgtenantproxy.key_directory WHERE shop_id = $1"
_FORGET_TEXT = "DELETE FROM pgtenantproxy.key_directory_text WHERE shop_id = $1"


@dataclass
class DirectoryWrite:
    """What one retirement wrote into the key directory, per table label."""

    ranges: dict[str, int] = field(default_factory=dict)  # int8range rows
    keys: dict[str, int] = field(default_factory=dict)  # key_directory_text rows
    not_routed: list[str] = field(default_factory=list)  # composite primary keys: nothing written

    def as_dict(self) -> dict[str, Any]:
        return {"ranges": self.ranges, "text_keys": self.keys, "not_routed_by_key": self.not_routed}


def kind(table: TableInfo) -> str:
    """How ``table``'s keys go into the directory: :data:`RANGES`, :data:`TEXT` or :data:`NOT_ROUTED`."""
    if len(table.pk) != 1:
        return NOT_ROUTED
    return RANGES if table.pk[0].type_sql in INTEGER_TYPES else TEXT


def _shop_column(table: TableInfo) -> ColumnInfo | None:
    return next((c for c in table.columns if c.name == table.tenant_column), None)


def _is_shop(table: TableInfo, alias: str) -> str:
    """``alias.shop = $3::text::<the column's type>`` (the shop id passed as text)."""
    column = _shop_column(table)
    cast = f"::{column.type_sql}" if column is not None else ""
    return f"{alias}.{ident(table.tenant_column)} = $3::text{cast}"


def islands_sql(table: TableInfo) -> str:
    """Insert the shop's islands of ``table`` as ranges: ``$1`` label, ``$2`` shop (bigint), ``$3`` shop
    (text). Runs over the whole table: every other row, of any shop, bounds an island, and so do both
    ends of every directory range of another shop (the rows of shops retired before)."""
    pk = ident(table.pk[0].name)
    return (
        "INSERT INTO pgtenantproxy.key_directory (tbl, keys, shop_id)"
        " SELECT $1, int8range(min(s.k), max(s.k), '[]'), $2::bigint"
        " FROM (SELECT u.k, u.mine,"
        " row_number() OVER (ORDER BY u.k) - row_number() OVER (PARTITION BY u.mine ORDER BY u.k) AS island"
        f" FROM (SELECT x.{pk}::int8 AS k, coalesce({_is_shop(table, 'x')}, false) AS mine"
        f" FROM {table.name.sql} AS x"
        " UNION ALL SELECT b.k, false FROM pgtenantproxy.key_directory AS d,"
        " LATERAL (VALUES (lower(d.keys)), (upper(d.keys) - 1)) AS b(k)"
        " WHERE d.tbl = $1 AND d.shop_id <> $2) AS u) AS s"
        " WHERE s.mine GROUP BY s.island"
    )


def text_keys_sql(table: TableInfo) -> str:
    """Insert the shop's keys of ``table`` as text: ``$1`` label, ``$2`` shop (bigint), ``$3`` shop (text)."""
    pk = ident(table.pk[0].name)
    return (
        "INSERT INTO pgtenantproxy.key_directory_text (tbl, key, shop_id)"
        f" SELECT $1, x.{pk}::text, $2::bigint FROM {table.name.sql} AS x WHERE {_is_shop(table, 'x')}"
        " ON CONFLICT DO NOTHING"
    )


async def forget_key_directory(conn: asyncpg.Connection, shop_id: int) -> int:
    """Remove every directory row of ``shop_id`` (in the caller's transaction); how many."""
    ranges = await conn.execute(_FORGET_RANGES, shop_id)
    texts = await conn.execute(_FORGET_TEXT, shop_id)
    return int(ranges.split()[-1]) + int(texts.split()[-1])


async def write_key_directory(
    conn: asyncpg.Connection, tables: Sequence[TableInfo], shop_id: int
) -> DirectoryWrite:
    """Replace ``shop_id``'s directory rows by its keys as they are in the caller's snapshot.

    Call it inside the transaction that deletes the rows, before the delete.
    Sets the text-form settings (``SET LOCAL``) for the rest of that transaction.
    """
    out = DirectoryWrite()
    await forget_key_directory(conn, shop_id)
    await conn.execute(set_local_sql())
    for table in tables:
        how = kind(table)
        if how == NOT_ROUTED:
            out.not_routed.append(table.label)
        elif how == RANGES:
            status = await conn.execute(islands_sql(table), table.label, shop_id, str(shop_id))
            out.ranges[table.label] = int(status.split()[-1])
        else:
            status = await conn.execute(text_keys_sql(table), table.label, shop_id, str(shop_id))
            out.keys[table.label] = int(status.split()[-1])
    return out
