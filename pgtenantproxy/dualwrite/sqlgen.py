"""The SQL the mirror runs for one table, built from its :class:`TableInfo` (pure functions).

Keys travel as the jsonb arrays the capture trigger recorded (``[42]``,
``[7, "a"]``), rows as ``to_jsonb(row)`` text, both by column *name*: a
target whose columns are in another order still gets every value in the
right column, and a target missing a column fails loudly (the entry is retried
and dead-lettered) instead of silently dropping data. Each value goes through
its type's text input, so enums, domains, arrays, numerics and timestamps
arrive exact.

* :func:`select_rows_sql` (source): ``$1`` shop (text), ``$2`` jsonb array of
  keys; one row per key with its ordinal and the row as jsonb text, or NULL
  when the key is gone (or belongs to another shop now). Keys are compared in
  the columns' own types (never as text: a timestamptz key prints differently
  under another TimeZone), one primary-key probe per key.
* :func:`upsert_sql` (target): ``$1`` jsonb array of rows; ``INSERT ... ON
  CONFLICT (primary key) DO UPDATE`` of every stored column (generated columns
  are left to the target; identity ``ALWAYS`` columns are written with
  ``OVERRIDING SYSTEM VALUE``), only where the existing row belongs to the same
  shop: a target that holds many shops (unified, when mirroring runs from a
  tenant database) never has another shop's row overwritten; the row count
  then falls short, which the applier reports as a conflict.
* :func:`delete_sql` (target): ``$1`` jsonb array of keys, ``$2`` shop (text);
  the rows are found by primary-key probes and deleted by ``ctid``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtenantproxy.sqltext import QualifiedName, ident


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_sql: str  # format_type() under search_path = pg_catalog: schema-qualified when not built in
    generated: bool = False
    identity_always: bool = False


@dataclass(frozen=True)
class TableInfo:
    """A captured table as the mirror needs it."""

    label: str  # "schema.table", as the capture trigger records it
    name: QualifiedName
    tenant_column: str
    columns: tuple[ColumnInfo, ...]
    pk: tuple[ColumnInfo, ...]
    references: frozenset[str] = frozenset()  # labels of captured tables this one has foreign keys to

    @property
    def stored_columns(self) -> tuple[ColumnInfo, ...]:
        return tuple(c for c in self.columns if not c.generated)


def _key_match(table: TableInfo, alias: str, key: str) -> str:
    """``x.a = (key ->> 0)::type AND ...``: a row matched to a jsonb key array, typed as the column."""
    return " AND ".join(
        f"{alias}.{ident(c.name)} = ({key} ->> {i})::{c.type_sql}" for i, c in enumerate(table.pk)
    )


def _shop_match(table: TableInfo, alias: str, param: str) -> str:
    """The tenant column equal to a shop id passed as text, compared in the column's own type."""
    column = next((c for c in table.columns if c.name == table.tenant_column), None)
    cast = f"::{column.type_sql}" if column is not None else ""
    return f"{alias}.{ident(table.tenant_column)} = {param}::text{cast}"


def _row_of(table: TableInfo, what: str, key: str, shop: str) -> str:
    """A scalar subquery: ``what`` of the shop's row with that key (a primary key probe, always)."""
    return (
        f"(SELECT {what} FROM {table.name.sql} AS x"
        f" WHERE {_key_match(table, 'x', key)} AND {_shop_match(table, 'x', shop)})"
    )


def select_rows_sql(table: TableInfo) -> str:
    # One correlated probe per key: the plan is a primary-key lookup whatever the table's size or
    # statistics (a join could be planned as a scan of the whole table).
    return (
        f"SELECT k.ord::int AS ord, {_row_of(table, 'to_jsonb(x)::text', 'k.key', '$1')} AS row"
        " FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS k(key, ord)"
    )


def upsert_sql(table: TableInfo) -> str:
    stored = table.stored_columns
    cols = ", ".join(ident(c.name) for c in stored)
    picked = ", ".join(f"r.{ident(c.name)}" for c in stored)
    keys = ", ".join(ident(c.name) for c in table.pk)
    key_names = {c.name for c in table.pk}
    updates = ", ".join(
        f"{ident(c.name)} = excluded.{ident(c.name)}" for c in stored if c.name not in key_names
    )
    overriding = " OVERRIDING SYSTEM VALUE" if any(c.identity_always for c in stored) else ""
    tenant = ident(table.tenant_column)
    action = f"DO UPDATE SET {updates} WHERE x.{tenant} = excluded.{tenant}" if updates else "DO NOTHING"
    return (
        f"INSERT INTO {table.name.sql} AS x ({cols}){overriding}"
        f" SELECT {picked} FROM jsonb_populate_recordset(NULL::{table.name.sql}, $1::jsonb) AS r"
        f" ON CONFLICT ({keys}) {action}"
    )


def upsert_counts_rows(table: TableInfo) -> bool:
    """True when :func:`upsert_sql` writes every row it is given (``DO UPDATE``), so a short count
    means a key held by another shop's row."""
    keys = {c.name for c in table.pk}
    return any(c.name not in keys for c in table.stored_columns)


def delete_sql(table: TableInfo) -> str:
    probes = _row_of(table, "x.ctid", "k.key", "$2")
    return (
        f"DELETE FROM {table.name.sql} AS t"
        f" WHERE t.ctid = ANY (ARRAY(SELECT {probes} FROM jsonb_array_elements($1::jsonb) AS k(key)))"
    )


def json_array(items: list[str]) -> str:
    """A JSON array of already-encoded JSON texts (no parsing, no re-encoding)."""
    return "[" + ",".join(items) + "]"


def dependency_order(tables: dict[str, TableInfo]) -> list[str]:
    """Labels with referenced tables first (Kahn); self references ignored, cycles broken by label."""
    pending = {label: {r for r in t.references if r != label and r in tables} for label, t in tables.items()}
    order: list[str] = []
    while pending:
        ready = sorted(label for label, deps in pending.items() if not deps)
        if not ready:  # a cycle: take the smallest label and carry on
            ready = [min(pending)]
        for label in ready:
            order.append(label)
            del pending[label]
        for deps in pending.values():
            deps.difference_update(ready)
    return order
