"""Federated reads: the names the migration creates on unified and the proxy's rewrite reads.

For every shop whose rows live on its own database (``tenant_primary``,
``retired``), unified holds, through PostgreSQL's own ``postgres_fdw``:

* a foreign server :func:`server_name` (the shop's database; ``async_capable``),
  with a ``PUBLIC`` user mapping to a read-only login on that database;
* a schema :func:`shop_schema` with one foreign table per tenant table, named
  :func:`foreign_table` (the label ``schema.table`` as one identifier), with the
  columns and types unified's table has;
* in :data:`FDW_SCHEMA`, the guard :data:`GUARD_FUNCTION` (0A000 outside READ
  COMMITTED: a snapshot cannot span databases).

``pgtenantproxy.federation`` (control schema step 6) records, per shop, the
:func:`signature` of the tenant tables' columns its foreign tables were built
from. The proxy federates a shop only while that signature is unified's
current one (a schema change is picked up by the phase keeper, which rebuilds
them), so a rewritten read never names a column a foreign table lacks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import asyncpg

FDW_SCHEMA = "pgtenantproxy_fdw"
GUARD = "read_committed"
GUARD_FUNCTION = f"{FDW_SCHEMA}.{GUARD}"

#: table label (``schema.table``) -> ((column, type as format_type gives it), ...) in column order
Columns = Mapping[str, Sequence[tuple[str, str]]]

_COLUMNS = """
SELECT n.nspname || '.' || c.relname AS tbl,
       array_agg(a.attname::text ORDER BY a.attnum) AS names,
       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) AS types
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname || '.' || c.relname = ANY($1::text[]) AND c.relkind IN ('r', 'p')
GROUP BY 1
"""


def shop_schema(shop_id: int) -> str:
    """The schema on unified holding shop ``shop_id``'s foreign tables."""
    return f"{FDW_SCHEMA}_{int(shop_id)}"


def server_name(shop_id: int) -> str:
    """The foreign server on unified for shop ``shop_id``'s database."""
    return f"pgtenantproxy_shop_{int(shop_id)}"


def foreign_table(table: str) -> str:
    """The foreign table's name (in :func:`shop_schema`) for the tenant table labelled ``schema.table``."""
    return table if "." in table else f"public.{table}"


def signature(columns: Columns) -> str:
    """A digest of the tenant tables' columns and types (order matters: it is the tables' order)."""
    h = hashlib.sha256()
    for table in sorted(columns):
        h.update(table.encode() + b"\x00")
        for name, typ in columns[table]:
            h.update(name.encode() + b"\x01" + typ.encode() + b"\x02")
        h.update(b"\x03")
    return h.hexdigest()[:32]


async def read_columns(conn: asyncpg.Connection | asyncpg.Pool, tables: Iterable[str]) -> dict[str, tuple[
        tuple[str, str], ...]]:
    """Unified's columns (name, type) of each of ``tables`` (labels), in column order."""
    rows = await conn.fetch(_COLUMNS, sorted({foreign_table(t) for t in tables}))
    return {r["tbl"]: tuple(zip(r["names"], r["types"], strict=True)) for r in rows}


async def read_federation(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, str]:
    """shop -> the signature its foreign tables were built from."""
    rows = await conn.fetch("SELECT shop_id, signature FROM pgtenantproxy.federation")
    return {int(r["shop_id"]): r["signature"] for r in rows}


async def record_federation(conn: asyncpg.Connection, shop_id: int, sig: str, tables: int) -> None:
    await conn.execute(
        "INSERT INTO pgtenantproxy.federation (shop_id, signature, tables) VALUES ($1, $2, $3)"
        " ON CONFLICT (shop_id) DO UPDATE SET signature = EXCLUDED.signature, tables = EXCLUDED.tables,"
        " updated_at = clock_timestamp()", shop_id, sig, tables)


async def forget_federation(conn: asyncpg.Connection, shop_id: int) -> None:
    await conn.execute("DELETE FROM pgtenantproxy.federation WHERE shop_id = $1", shop_id)
