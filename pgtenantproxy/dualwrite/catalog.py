"""What the mirror knows about the captured tables, read from the source catalog and cached.

The list of tables comes from ``pgtenantproxy.capture_tables`` (what
``dual-write enable`` installed), their columns, key types and foreign keys
from ``pg_catalog``, read with ``search_path = pg_catalog`` so that every
type name is schema-qualified and means the same on the target. The source's
definition is the reference: a target that lacks a column fails the apply.

The cache lives ``ttl_s`` (schema changes on the source are picked up within
that time) and is dropped at once by :meth:`Catalog.invalidate`, which the
worker calls whenever applying or reading failed, so a retry never runs on a
stale picture.
"""

from __future__ import annotations

import time

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo, dependency_order
from pgtenantproxy.sqltext import QualifiedName

_TABLES = """
SELECT t.tbl, t.schema_name, t.table_name, t.tenant_column, t.pk_columns,
       to_regclass(quote_ident(t.schema_name) || '.' || quote_ident(t.table_name))::oid AS oid
FROM pgtenantproxy.capture_tables t ORDER BY t.tbl
"""
_COLUMNS = """
SELECT a.attrelid AS oid, a.attname, format_type(a.atttypid, a.atttypmod) AS type_sql,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
FROM pg_attribute a
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_REFERENCES = """
SELECT conrelid AS oid, confrelid AS ref FROM pg_constraint
WHERE contype = 'f' AND conrelid = ANY($1::oid[]) AND confrelid = ANY($1::oid[])
"""


class Catalog:
    """Captured tables by label, with their apply order; refreshed after ``ttl_s``."""

    def __init__(self, *, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._tables: dict[str, TableInfo] = {}
        self._order: list[str] = []
        self._loaded_at: float | None = None

    def invalidate(self) -> None:
        self._loaded_at = None

    @property
    def order(self) -> list[str]:
        """Labels, referenced tables first."""
        return self._order

    async def tables(self, conn: asyncpg.Connection) -> dict[str, TableInfo]:
        now = time.monotonic()
        if self._loaded_at is None or now - self._loaded_at > self.ttl_s:
            self._tables = await read_tables(conn)
            self._order = dependency_order(self._tables)
            self._loaded_at = now
        return self._tables


async def read_tables(conn: asyncpg.Connection) -> dict[str, TableInfo]:
    """Every captured table that still exists on ``conn``'s database."""
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL search_path = pg_catalog")
        rows = [r for r in await conn.fetch(_TABLES) if r["oid"] is not None]
        oids = [r["oid"] for r in rows]
        columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
        for c in await conn.fetch(_COLUMNS, oids):
            column = ColumnInfo(c["attname"], c["type_sql"], c["generated"], c["identity_always"])
            columns[c["oid"]].append(column)
        refs: dict[int, set[int]] = {oid: set() for oid in oids}
        for f in await conn.fetch(_REFERENCES, oids):
            refs[f["oid"]].add(f["ref"])
    label_of = {r["oid"]: r["tbl"] for r in rows}
    tables: dict[str, TableInfo] = {}
    for r in rows:
        by_name = {c.name: c for c in columns[r["oid"]]}
        if not all(k in by_name for k in r["pk_columns"]):
            continue  # the key changed since enable: "dual-write enable" again (entries stay queued)
        tables[r["tbl"]] = TableInfo(
            label=r["tbl"],
            name=QualifiedName(r["schema_name"], r["table_name"]),
            tenant_column=r["tenant_column"],
            columns=tuple(columns[r["oid"]]),
            pk=tuple(by_name[k] for k in r["pk_columns"]),
            references=frozenset(label_of[o] for o in refs[r["oid"]]),
        )
    return tables
