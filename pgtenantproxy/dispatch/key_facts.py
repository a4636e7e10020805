"""What routing by key knows about the tenant tables, read with the routing catalog.

* each tenant table's single-column primary key and its kind (``int`` for
  int2/int4/int8, ``uuid``, ``text`` for text/varchar; other key types are not
  routed by key);
* the shop-consistent foreign keys between tenant tables
  (:mod:`pgtenantproxy.lifecycle.keys` proofs, single-column ones);
* the id blocks reserved for shops' own databases, per ``(table, column)``.

Immutable; rebuilt whole on each catalog refresh.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.lifecycle.keys import FkProof, read_fk_proofs, read_id_blocks

_KINDS = {20: "int", 21: "int", 23: "int", 2950: "uuid", 25: "text", 1043: "text"}

_FOREIGN_KEYS = """
SELECT cn.nspname || '.' || c.relname AS child, a.attname AS child_col,
       pn.nspname || '.' || p.relname AS parent, pa.attname AS parent_col
FROM pg_constraint f
JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_class p ON p.oid = f.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = f.conkey[1]
JOIN pg_attribute pa ON pa.attrelid = f.confrelid AND pa.attnum = f.confkey[1]
WHERE f.contype = 'f' AND cardinality(f.conkey) = 1
  AND cn.nspname || '.' || c.relname = ANY($1::text[]) AND pn.nspname || '.' || p.relname = ANY($1::text[])
"""

_PRIMARY_KEYS = """
SELECT n.nspname || '.' || c.relname AS tbl, a.attname AS col, a.atttypid::int AS typid, i.indisprimary,
       pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname) IS NOT NULL
           AS sequenced
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL
  AND n.nspname || '.' || c.relname = ANY($1::text[])
"""


@dataclass(frozen=True)
class KeyFacts:
    #: table label -> {column: kind} of its single-column unique keys (the primary key included)
    key_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    #: consistent foreign keys as (child, child column, parent, parent column)
    foreign_keys: frozenset[tuple[str, str, str, str]] = frozenset()
    #: (table, column) -> sorted ((first, last, shop), ...)
    blocks: dict[tuple[str, str], tuple[tuple[int, int, int], ...]] = field(default_factory=dict)
    #: key columns filled by a sequence (serial, identity): (table, column)
    sequenced: frozenset[tuple[str, str]] = frozenset()
    #: every single-column foreign key between tenant tables not proven inconsistent (proven or not yet
    #: checked): what the readiness recorder may count on once the cutover gate has proven them
    unrefuted: frozenset[tuple[str, str, str, str]] = frozenset()
    #: table label -> its primary key column (the key directory holds retired shops' primary keys)
    primary: dict[str, str] = field(default_factory=dict)

    def block_shop(self, table: str, column: str, key: int) -> int | None:
        """The shop whose id block holds ``key``, if any."""
        ranges = self.blocks.get((table, column))
        if not ranges:
            return None
        index = bisect.bisect_right(ranges, (key, float("inf"))) - 1
        if index >= 0:
            first, last, shop = ranges[index]
            if first <= key <= last:
                return shop
        return None

    def kind(self, table: str, column: str) -> str | None:
        """The kind of a single-column unique key (``int``, ``uuid``, ``text``), or None."""
        columns = self.key_columns.get(table)
        return columns.get(column) if columns is not None else None

    def is_key(self, table: str, column: str) -> bool:
        return self.kind(table, column) is not None

    def blocks_cover(self, table: str, column: str, shops: Iterable[int]) -> bool:
        """Is ``column`` filled by a sequence, and has every one of ``shops`` an id block of it (so the
        ids their databases drew are all inside recorded blocks)?"""
        if (table, column) not in self.sequenced:
            return False
        holders = {shop for _first, _last, shop in self.blocks.get((table, column), ())}
        return all(shop in holders for shop in shops)

    def consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        fks = self.foreign_keys
        return (a, a_col, b, b_col) in fks or (b, b_col, a, a_col) in fks

    def may_be_consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        fks = self.unrefuted
        return (a, a_col, b, b_col) in fks or (b, b_col, a, a_col) in fks


async def read_key_facts(conn: asyncpg.Connection, tenant_tables: frozenset[str]) -> KeyFacts:
    rows = await conn.fetch(_PRIMARY_KEYS, sorted(tenant_tables))
    columns: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["typid"] in _KINDS:
            columns.setdefault(r["tbl"], {})[r["col"]] = _KINDS[r["typid"]]
    sequenced = frozenset((r["tbl"], r["col"]) for r in rows if r["sequenced"])
    proofs = [p for p in await read_fk_proofs(conn) if len(p.fk.child_cols) == 1]
    fks = frozenset(_edge(p) for p in proofs
                    if p.consistent and p.fk.child in tenant_tables and p.fk.parent in tenant_tables)
    refuted = {_edge(p) for p in proofs if not p.consistent}
    declared = {(r["child"], r["child_col"], r["parent"], r["parent_col"])
                for r in await conn.fetch(_FOREIGN_KEYS, sorted(tenant_tables))}
    blocks: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for b in await read_id_blocks(conn):
        blocks.setdefault((b.table, b.column), []).append((b.first, b.last, b.shop_id))
    primary = {r["tbl"]: r["col"] for r in rows if r["indisprimary"] and r["typid"] in _KINDS}
    return KeyFacts(columns, fks, {k: tuple(sorted(v)) for k, v in blocks.items()}, sequenced,
                    frozenset(declared - refuted), primary)


def _edge(proof: FkProof) -> tuple[str, str, str, str]:
    fk = proof.fk
    return fk.child, fk.child_cols[0], fk.parent, fk.parent_cols[0]
