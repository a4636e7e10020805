"""What the tenant schema is made of, and the DDL that creates it for one shop.

:class:`CloneSpec` is plain data read from the unified catalog once
(:mod:`~pgtenantproxy.tenancy.schema_clone`); :func:`render_ddl` turns it into
one script for one shop, with no database at hand. Names in definitions are
schema-qualified (the catalog was read with ``search_path = pg_catalog``), so
the script means the same whatever the tenant's search_path is.

Order: schemas, extensions, enum and domain types (dependencies first),
free-standing sequences, tables with their columns, sequence ownership, then
primary/unique/exclusion constraints, checks, foreign keys (all tables exist
by then) and indexes. The tenant column keeps its type and nullability but is
pinned: ``DEFAULT <shop>`` and ``CONSTRAINT pgtenantproxy_tenant_pin CHECK
(<column> = <shop>)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtenantproxy.sqltext import QualifiedName, ident, literal

PIN_CONSTRAINT = "pgtenantproxy_tenant_pin"
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint", "numeric"})


@dataclass(frozen=True)
class EnumType:
    name: QualifiedName
    labels: tuple[str, ...]


@dataclass(frozen=True)
class DomainType:
    name: QualifiedName
    base_type: str
    collation: str | None
    default: str | None
    not_null: bool
    checks: tuple[tuple[str, str], ...]  # (constraint name, CHECK (...))


@dataclass(frozen=True)
class SequenceSpec:
    name: QualifiedName
    data_type: str
    start: int
    increment: int
    minvalue: int
    maxvalue: int
    cache: int
    cycle: bool
    owned_by: tuple[QualifiedName, str] | None = None

    def options(self) -> str:
        return (
            f"START WITH {self.start} INCREMENT BY {self.increment} MINVALUE {self.minvalue} "
            f"MAXVALUE {self.maxvalue} CACHE {self.cache} {'CYCLE' if self.cycle else 'NO CYCLE'}"
        )


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type_sql: str
    not_null: bool
    default: str | None = None
    collation: str | None = None
    identity: str = ""  # "" | "a" (ALWAYS) | "d" (BY DEFAULT)
    identity_sequence: SequenceSpec | None = None
    generated: str | None = None  # expression of a STORED generated column


@dataclass(frozen=True)
class TableSpec:
    name: QualifiedName
    columns: tuple[ColumnSpec, ...]
    unlogged: bool = False


@dataclass(frozen=True)
class ConstraintSpec:
    table: QualifiedName
    name: str
    kind: str  # p, u, x, c, f
    definition: str


@dataclass(frozen=True)
class IndexSpec:
    table: QualifiedName
    name: str
    definition: str  # CREATE [UNIQUE] INDEX ... as pg_get_indexdef gives it


@dataclass(frozen=True)
class DroppedForeignKey:
    """A foreign key from a tenant table to a global table: not reproduced in tenant databases."""

    table: QualifiedName
    name: str
    references: QualifiedName
    definition: str


@dataclass(frozen=True)
class CloneSpec:
    tenant_column: str
    tables: tuple[TableSpec, ...]
    schemas: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    enums: tuple[EnumType, ...] = ()
    domains: tuple[DomainType, ...] = ()
    sequences: tuple[SequenceSpec, ...] = ()
    constraints: tuple[ConstraintSpec, ...] = ()
    indexes: tuple[IndexSpec, ...] = ()
    dropped_foreign_keys: tuple[DroppedForeignKey, ...] = ()

    @property
    def table_names(self) -> tuple[QualifiedName, ...]:
        return tuple(t.name for t in self.tables)


def _shop_literal(column: ColumnSpec, shop_id: int) -> str:
    if column.type_sql in INTEGER_TYPES:
        return str(int(shop_id))
    return f"{literal(str(shop_id))}::{column.type_sql}"


def _column_sql(column: ColumnSpec, tenant_column: str, shop_id: int) -> str:
    parts = [ident(column.name), column.type_sql]
    if column.collation:
        parts.append(f"COLLATE {column.collation}")
    if column.name == tenant_column:
        parts.append(f"DEFAULT {_shop_literal(column, shop_id)}")
    elif column.generated is not None:
        parts.append(f"GENERATED ALWAYS AS ({column.generated}) STORED")
    elif column.identity:
        how = "ALWAYS" if column.identity == "a" else "BY DEFAULT"
        options = ""
        if column.identity_sequence is not None:
            seq = column.identity_sequence
            options = f" (SEQUENCE NAME {seq.name.sql} {seq.options()})"
        parts.append(f"GENERATED {how} AS IDENTITY{options}")
    elif column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.not_null:
        parts.append("NOT NULL")
    return " ".join(parts)


def _table_sql(table: TableSpec, tenant_column: str, shop_id: int) -> str:
    lines = [_column_sql(c, tenant_column, shop_id) for c in table.columns]
    pin = next(c for c in table.columns if c.name == tenant_column)
    lines.append(
        f"CONSTRAINT {PIN_CONSTRAINT} CHECK ({ident(tenant_column)} = {_shop_literal(pin, shop_id)})"
    )
    body = ",\n    ".join(lines)
    return f"CREATE {'UNLOGGED ' if table.unlogged else ''}TABLE {table.name.sql} (\n    {body}\n);"


def _domain_sql(domain: DomainType) -> str:
    parts = [f"CREATE DOMAIN {domain.name.sql} AS {domain.base_type}"]
    if domain.collation:
        parts.append(f"COLLATE {domain.collation}")
    if domain.default is not None:
        parts.append(f"DEFAULT {domain.default}")
    if domain.not_null:
        parts.append("NOT NULL")
    parts.extend(f"CONSTRAINT {ident(name)} {check}" for name, check in domain.checks)
    return " ".join(parts) + ";"


def render_ddl(spec: CloneSpec, shop_id: int) -> str:
    """The script that creates the tenant schema for ``shop_id`` (run it in one transaction)."""
    out: list[str] = [f"CREATE SCHEMA IF NOT EXISTS {ident(s)};" for s in spec.schemas]
    out += [f"CREATE EXTENSION IF NOT EXISTS {ident(e)};" for e in spec.extensions]
    out += [
        f"CREATE TYPE {e.name.sql} AS ENUM ({', '.join(literal(label) for label in e.labels)});"
        for e in spec.enums
    ]
    out += [_domain_sql(d) for d in spec.domains]
    out += [f"CREATE SEQUENCE {s.name.sql} AS {s.data_type} {s.options()};" for s in spec.sequences]
    out += [_table_sql(t, spec.tenant_column, shop_id) for t in spec.tables]
    out += [
        f"ALTER SEQUENCE {s.name.sql} OWNED BY {s.owned_by[0].sql}.{ident(s.owned_by[1])};"
        for s in spec.sequences
        if s.owned_by is not None
    ]
    for kinds in ("pux", "c", "f"):
        out += [
            f"ALTER TABLE {c.table.sql} ADD CONSTRAINT {ident(c.name)} {c.definition};"
            for c in spec.constraints
            if c.kind in kinds
        ]
    out += [f"{i.definition};" for i in spec.indexes]
    return "\n".join(out) + "\n"
