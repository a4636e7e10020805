"""Reading the unified tenant tables from the catalog into a :class:`CloneSpec`.

Tenant tables are the tables that have the tenant column (``[tenancy]
tenant_tables = "auto"``) or the listed ones; a reference table (``[[tenancy.reference_tables]]``:
shop databases hold a read-only copy of it) is never one, also under ``auto``. The catalog is read in one
REPEATABLE READ transaction with ``search_path = pg_catalog``, so every name
that ``format_type``/``pg_get_expr``/``pg_get_constraintdef``/``pg_get_indexdef``
print is schema-qualified. What is reproduced: column order, types (enums and
domains, arrays of them, extension types by ``CREATE EXTENSION``), collations,
defaults, stored generated columns, identity columns and serial/free-standing
sequences with their options, primary/unique/exclusion/check constraints,
foreign keys between tenant tables, indexes (partial and expression ones).

What is not: foreign keys to global tables (listed in
``CloneSpec.dropped_foreign_keys``: the global rows stay in unified), triggers
(tenant rows are copies of unified rows; re-firing triggers would change them),
row-level security, comments, storage options, and functions the app defined
itself. A default, check or index that calls such a function, a composite or
range type of the app's own, or a partitioned table stops the clone with a
:class:`CloneError` that names it, rather than producing a schema that differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.errors import CloneError
from pgtenantproxy.tenancy.schema_model import (
    CloneSpec,
    ColumnSpec,
    ConstraintSpec,
    DomainType,
    DroppedForeignKey,
    EnumType,
    IndexSpec,
    SequenceSpec,
    TableSpec,
)

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pgtenantproxy", "pg_toast")

_AUTO_TABLES = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> ALL($2::text[]) AND n.nspname NOT LIKE 'pg\\_%'
  AND n.nspname || '.' || c.relname <> ALL($3::text[])
ORDER BY n.nspname, c.relname
"""
_NAMED_TABLE = """
SELECT c.oid, n.nspname, c.relname, c.relkind::text, c.relpersistence::text,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $3
               AND a.attnum > 0 AND NOT a.attisdropped) AS has_column
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
"""
_COLUMNS = """
SELECT a.attrelid, a.attname, format_type(a.atttypid, a.atttypmod) AS type_sql, a.atttypid,
       a.attnotnull, a.attidentity::text, a.attgenerated::text,
       pg_get_expr(d.adbin, d.adrelid) AS default_sql,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_SEQUENCE_COLUMNS = """
s.oid AS seq_oid, sn.nspname AS seq_schema, s.relname AS seq_name, format_type(q.seqtypid, NULL) AS seq_type,
q.seqstart, q.seqincrement, q.seqmin, q.seqmax, q.seqcache, q.seqcycle
"""
_OWNED_SEQUENCES = f"""
SELECT d.refobjid AS table_oid, a.attname, d.deptype::text, {_SEQUENCE_COLUMNS}
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.deptype IN ('a', 'i') AND d.refobjid = ANY($1::oid[])
"""
_DEFAULT_SEQUENCES = f"""
SELECT DISTINCT {_SEQUENCE_COLUMNS}
FROM pg_attrdef ad
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                AND d.refclassid = 'pg_class'::regclass
JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence q ON q.seqrelid = s.oid
WHERE ad.adrelid = ANY($1::oid[])
"""
_TYPES = """
SELECT t.oid, n.nspname, t.typname, t.typtype::text, t.typelem, t.typlen, t.typbasetype,
       format_type(t.typbasetype, t.typtypmod) AS base_sql, t.typnotnull,
       pg_get_expr(t.typdefaultbin, 0) AS default_sql,
       ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) AS labels,
       ARRAY(SELECT k.conname || E'\\n' || pg_get_constraintdef(k.oid) FROM pg_constraint k
             WHERE k.contypid = t.oid AND k.contype = 'c' ORDER BY k.conname) AS checks,
       CASE WHEN t.typtype = 'd' AND t.typcollation <> 0 AND t.typcollation <> bt.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation,
       (SELECT x.extname FROM pg_depend dep JOIN pg_extension x ON x.oid = dep.refobjid
        WHERE dep.classid = 'pg_type'::regclass AND dep.objid = t.oid
          AND dep.refclassid = 'pg_extension'::regclass AND dep.deptype = 'e') AS extension
FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_collation co ON co.oid = t.typcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE t.oid = ANY($1::oid[])
"""
_CONSTRAINTS = """
SELECT k.conrelid, k.conname, k.contype::text, pg_get_constraintdef(k.oid) AS definition, k.confrelid,
       fn.nspname AS ref_schema, fc.relname AS ref_name
FROM pg_constraint k
LEFT JOIN pg_class fc ON fc.oid = k.confrelid
LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
WHERE k.conrelid = ANY($1::oid[]) AND k.contype IN ('p', 'u', 'x', 'c', 'f')
ORDER BY k.conrelid, k.conname
"""
_INDEXES = """
SELECT i.indrelid, ic.relname, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY($1::oid[]) AND i.indisvalid
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                  AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x'))
ORDER BY i.indrelid, ic.relname
"""
_FUNCTIONS = """
SELECT DISTINCT p.oid::regprocedure::text AS function, x.extname
FROM pg_depend d
JOIN pg_proc p ON p.oid = d.refobjid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
LEFT JOIN pg_depend e ON e.classid = 'pg_proc'::regclass AND e.objid = p.oid
                     AND e.refclassid = 'pg_extension'::regclass AND e.deptype = 'e'
LEFT JOIN pg_extension x ON x.oid = e.refobjid
WHERE d.refclassid = 'pg_proc'::regclass AND pn.nspname <> 'pg_catalog' AND (
      (d.classid = 'pg_attrdef'::regclass
       AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = ANY($1::oid[])))
   OR (d.classid = 'pg_constraint'::regclass
       AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = ANY($1::oid[])))
   OR (d.classid = 'pg_class'::regclass
       AND d.objid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY($1::oid[]))))
"""


async def discover_tenant_tables(conn: asyncpg.Connection, tenancy: TenancySection) -> list[QualifiedName]:
    """The unified database's tenant tables, as configured (``auto`` or a list)."""
    return [QualifiedName(r["nspname"], r["relname"]) for r in await _table_rows(conn, tenancy)]


async def _table_rows(conn: asyncpg.Connection, tenancy: TenancySection) -> list[asyncpg.Record]:
    column = tenancy.tenant_column
    references = [r.table for r in tenancy.reference_tables]
    if tenancy.tenant_tables == "auto":
        rows = list(await conn.fetch(_AUTO_TABLES, column, list(SYSTEM_SCHEMAS), references))
        if not rows:
            raise CloneError(f"no table in the unified database has a column {column!r}")
        return rows
    rows = []
    for text in tenancy.tenant_tables:
        name = QualifiedName.parse(text)
        if str(name) in references:
            raise CloneError(f"[tenancy] tenant_tables: {name} is a reference table "
                             "([[tenancy.reference_tables]])")
        row = await conn.fetchrow(_NAMED_TABLE, name.schema, name.name, column)
        if row is None:
            raise CloneError(f"[tenancy] tenant_tables: table {name} does not exist in the unified database")
        if not row["has_column"]:
            raise CloneError(f"[tenancy] tenant_tables: table {name} has no column {column!r}")
        rows.append(row)
    return rows


async def read_clone_spec(conn: asyncpg.Connection, tenancy: TenancySection) -> CloneSpec:
    """Read everything the tenant schema needs from the unified catalog."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL search_path = pg_catalog")
        tables = await _table_rows(conn, tenancy)
        for row in tables:
            if row["relkind"] == "p":
                raise CloneError(f"{row['nspname']}.{row['relname']}: partitioned tables are not supported")
        names = {r["oid"]: QualifiedName(r["nspname"], r["relname"]) for r in tables}
        oids = list(names)
        extensions = await _function_extensions(conn, oids)
        columns = await conn.fetch(_COLUMNS, oids)
        enums, domains, type_extensions, type_schemas = await _types(conn, [c["atttypid"] for c in columns])
        identity, sequences = await _sequences(conn, oids, names)
        table_specs = _tables(tables, names, columns, identity)
        constraints, dropped = _constraints(await conn.fetch(_CONSTRAINTS, oids), names)
        indexes = [
            IndexSpec(names[r["indrelid"]], r["relname"], r["definition"])
            for r in await conn.fetch(_INDEXES, oids)
        ]
    schemas = {n.schema for n in names.values()} | type_schemas | {s.name.schema for s in sequences}
    schemas |= {s.name.schema for s in identity.values()}
    return CloneSpec(
        tenant_column=tenancy.tenant_column,
        tables=tuple(table_specs),
        schemas=tuple(sorted(schemas - {"public"})),
        extensions=tuple(sorted(extensions | type_extensions)),
        enums=tuple(enums),
        domains=tuple(domains),
        sequences=tuple(sequences),
        constraints=tuple(constraints),
        indexes=tuple(indexes),
        dropped_foreign_keys=tuple(dropped),
    )


async def _function_extensions(conn: asyncpg.Connection, oids: list[int]) -> set[str]:
    """Extensions whose functions defaults/checks/indexes call; refuse the app's own functions."""
    extensions = set()
    for row in await conn.fetch(_FUNCTIONS, oids):
        if row["extname"] is None:
            raise CloneError(
                f"a default, check constraint or index of a tenant table calls {row['function']}, "
                "a function the schema clone does not copy: create it in the tenant databases first, "
                "or drop the dependency"
            )
        extensions.add(row["extname"])
    return extensions


def _sequence(row: asyncpg.Record, owned_by: tuple[QualifiedName, str] | None = None) -> SequenceSpec:
    return SequenceSpec(
        name=QualifiedName(row["seq_schema"], row["seq_name"]),
        data_type=row["seq_type"],
        start=row["seqstart"],
        increment=row["seqincrement"],
        minvalue=row["seqmin"],
        maxvalue=row["seqmax"],
        cache=row["seqcache"],
        cycle=row["seqcycle"],
        owned_by=owned_by,
    )


async def _sequences(
    conn: asyncpg.Connection, oids: list[int], names: dict[int, QualifiedName]
) -> tuple[dict[tuple[int, str], SequenceSpec], list[SequenceSpec]]:
    """Identity sequences by (table oid, column), and the other sequences to create."""
    identity: dict[tuple[int, str], SequenceSpec] = {}
    plain: dict[int, SequenceSpec] = {}
    for row in await conn.fetch(_OWNED_SEQUENCES, oids):
        if row["deptype"] == "i":
            identity[(row["table_oid"], row["attname"])] = _sequence(row)
        else:
            plain[row["seq_oid"]] = _sequence(row, (names[row["table_oid"]], row["attname"]))
    for row in await conn.fetch(_DEFAULT_SEQUENCES, oids):
        plain.setdefault(row["seq_oid"], _sequence(row))
    return identity, sorted(plain.values(), key=lambda s: s.name)


def _tables(
    tables: Sequence[asyncpg.Record],
    names: dict[int, QualifiedName],
    columns: Sequence[asyncpg.Record],
    identity: dict[tuple[int, str], SequenceSpec],
) -> list[TableSpec]:
    by_table: dict[int, list[ColumnSpec]] = {oid: [] for oid in names}
    for c in columns:
        generated = c["attgenerated"] or ""
        by_table[c["attrelid"]].append(
            ColumnSpec(
                name=c["attname"],
                type_sql=c["type_sql"],
                not_null=c["attnotnull"],
                default=None if generated else c["default_sql"],
                collation=c["collation"],
                identity=c["attidentity"] or "",
                identity_sequence=identity.get((c["attrelid"], c["attname"])),
                generated=c["default_sql"] if generated == "s" else None,
            )
        )
    return [
        TableSpec(names[r["oid"]], tuple(by_table[r["oid"]]), unlogged=r["relpersistence"] == "u")
        for r in tables
    ]


def _constraints(
    rows: Sequence[asyncpg.Record], names: dict[int, QualifiedName]
) -> tuple[list[ConstraintSpec], list[DroppedForeignKey]]:
    kept: list[ConstraintSpec] = []
    dropped: list[DroppedForeignKey] = []
    for r in rows:
        table = names[r["conrelid"]]
        if r["contype"] == "f" and r["confrelid"] not in names:
            ref = QualifiedName(r["ref_schema"], r["ref_name"])
            dropped.append(DroppedForeignKey(table, r["conname"], ref, r["definition"]))
        else:
            kept.append(ConstraintSpec(table, r["conname"], r["contype"], r["definition"]))
    return kept, dropped


async def _types(
    conn: asyncpg.Connection, type_oids: Sequence[int]
) -> tuple[list[EnumType], list[DomainType], set[str], set[str]]:
    """Enums and domains the columns use (dependencies first), extensions, schemas."""
    info: dict[int, Any] = {}
    frontier = set(type_oids)
    while frontier:
        rows = await conn.fetch(_TYPES, list(frontier))
        info.update({r["oid"]: r for r in rows})
        frontier = set()
        for r in rows:
            if r["nspname"] in ("pg_catalog", "information_schema") or r["extension"]:
                continue
            for dep in (r["typelem"], r["typbasetype"]):
                if dep and dep not in info:
                    frontier.add(dep)
    enums: list[EnumType] = []
    domains: list[DomainType] = []
    extensions: set[str] = set()
    schemas: set[str] = set()
    done: set[int] = set()

    def visit(oid: int) -> None:
        if oid in done or oid not in info:
            return
        done.add(oid)
        r = info[oid]
        if r["nspname"] in ("pg_catalog", "information_schema"):
            return
        if r["extension"]:
            extensions.add(r["extension"])
            return
        if r["typelem"] and r["typlen"] == -1:
            visit(r["typelem"])
            return
        name = QualifiedName(r["nspname"], r["typname"])
        if r["typtype"] == "e":
            enums.append(EnumType(name, tuple(r["labels"])))
        elif r["typtype"] == "d":
            visit(r["typbasetype"])
            checks = tuple((c.split("\n", 1)[0], c.split("\n", 1)[1]) for c in r["checks"])
            domains.append(DomainType(name, r["base_sql"], r["collation"], r["default_sql"], r["typnotnull"],
                                      checks))
        else:
            raise CloneError(f"type {name} (kind {r['typtype']!r}) is not supported by the schema clone")
        schemas.add(r["nspname"])

    for oid in type_oids:
        visit(oid)
    return enums, domains, extensions, schemas
