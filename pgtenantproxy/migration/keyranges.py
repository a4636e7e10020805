"""A shop's rows of one table cut into primary-key ranges (for backfill chunks and verification).

A key travels as the jsonb array of its primary-key values, in key-column
order (``[42]``, ``[7, "a"]``), the form the capture trigger records, and is
compared in the columns' own types (``(a, b) > ((k ->> 0)::int, (k ->> 1)::text)``),
so the ranges mean the same on the unified and the tenant side.

:func:`boundaries` reads, in one index-ordered pass, every ``every``-th key of
the shop; :func:`ranges` turns them into half-open ranges ``(after, upto]``
that cover the whole key space: the first starts at the beginning, the last
runs to the end, so a row outside the keys seen (an extra row on the other
side) still falls into exactly one range.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.sqltext import ident, literal


@dataclass(frozen=True)
class KeyRange:
    """Keys ``> after`` and ``<= upto`` (jsonb array text; ``None``: unbounded on that side)."""

    after: str | None = None
    upto: str | None = None

    def __str__(self) -> str:
        return f"({self.after or '-inf'}, {self.upto or '+inf'}]"


def key_columns(table: TableInfo) -> str:
    """``"a", "b"``: the primary-key columns, in order."""
    return ", ".join(ident(c.name) for c in table.pk)


def key_json(table: TableInfo, alias: str = "") -> str:
    """``jsonb_build_array(a, b)::text``: a row's key in its travelling form."""
    prefix = f"{alias}." if alias else ""
    return f"jsonb_build_array({', '.join(prefix + ident(c.name) for c in table.pk)})::text"


def _typed_key(table: TableInfo, key_sql: str) -> str:
    parts = [f"(({key_sql}) ->> {i})::{c.type_sql}" for i, c in enumerate(table.pk)]
    return f"ROW({', '.join(parts)})"


def range_condition(
    table: TableInfo, rng: KeyRange, *, params: bool, first: int = 1
) -> tuple[str, list[str]]:
    """``ROW(pk) > after AND ROW(pk) <= upto``: with ``$first..`` parameters or with literals.

    Returns the SQL (``TRUE`` for the whole key space) and the parameter values
    (jsonb text) to pass when ``params``.
    """
    row = f"ROW({key_columns(table)})"
    terms: list[str] = []
    values: list[str] = []
    for op, bound in ((">", rng.after), ("<=", rng.upto)):
        if bound is None:
            continue
        if params:
            ref = f"${first + len(values)}::jsonb"
            values.append(bound)
        else:
            ref = f"{literal(bound)}::jsonb"
        terms.append(f"{row} {op} {_typed_key(table, ref)}")
    return (" AND ".join(terms) or "TRUE"), values


async def boundaries(
    conn: asyncpg.Connection, table: TableInfo, shop_id: int, every: int
) -> tuple[int, list[str]]:
    """``(rows of the shop, every every-th key in key order)`` as seen by ``conn``'s snapshot."""
    tenant = ident(table.tenant_column)
    rows = await conn.fetch(
        f"""SELECT n, k FROM (
                SELECT row_number() OVER (ORDER BY {key_columns(table)}) AS n, {key_json(table)} AS k,
                       count(*) OVER () AS total
                FROM {table.name.sql} WHERE {tenant} = $1) s
            WHERE n % $2 = 0 OR n = total ORDER BY n""",
        shop_id, every,
    )
    if not rows:
        return 0, []
    total = int(rows[-1]["n"])
    keys = [str(r["k"]) for r in rows if int(r["n"]) % every == 0]
    return total, keys


def ranges(keys: list[str]) -> list[KeyRange]:
    """Ranges ``(-inf, k1], (k1, k2], ..., (kn, +inf)`` covering every key."""
    out: list[KeyRange] = []
    after: str | None = None
    for key in keys:
        out.append(KeyRange(after, key))
        after = key
    out.append(KeyRange(after, None))
    return out
