"""Foreign-key proofs: does every row of a tenant table reference a row of its *own* shop?

Routing by key may let a pin follow a foreign key (``repairs.customer_id ->
customers.id``: the repair's shop is the customer's shop) only when no row
crosses shops through it. :func:`prove_foreign_keys` checks that on unified,
for every foreign key (``pg_constraint``, ``contype = 'f'``) whose child *and*
parent are tenant tables (:func:`~pgtenantproxy.tenancy.schema_clone.discover_tenant_tables`):
the child joined to the parent on the key's columns, the rows where
``child.shop IS DISTINCT FROM parent.shop`` are counted, and up to
:data:`MAX_SAMPLES` of them kept (the child's primary key as a jsonb array,
the child's shop, the parent's shop, the referenced values). A row whose key
columns are NULL references nothing and crosses nothing.

Every proof is recorded (:func:`pgtenantproxy.lifecycle.keys.record_fk_proof`;
``consistent`` = zero cross-shop references), and proofs of foreign keys that
no longer exist between tenant tables are removed, in one transaction after
all the counts were taken from one snapshot (REPEATABLE READ, read only). A
proof is a fact as of its ``checked_at``: verification (``pgtenantproxy
verify``) proves again at each run. A cross-shop reference never blocks
anything (verification's verdict and the cutover stay as they are): it means
that foreign key pins nothing.

Cost: one join of each child table with its parent over the whole tables
(hash or merge join), per foreign key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.lifecycle.keys import FkProof, ForeignKey, read_fk_proofs, record_fk_proof
from pgtenantproxy.sqltext import QualifiedName, ident
from pgtenantproxy.tenancy.schema_clone import discover_tenant_tables

MAX_SAMPLES = 5

_FOREIGN_KEYS = """
SELECT c.conname,
       cn.nspname AS child_schema, cc.relname AS child_table,
       pn.nspname AS parent_schema, pc.relname AS parent_table,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             ORDER BY k.n) AS child_cols,
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
             ORDER BY k.n) AS parent_cols,
       ARRAY(SELECT a.attname FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attnum = k.attnum
             WHERE i.indrelid = c.conrelid AND i.indisprimary AND a.attrelid = c.conrelid
             ORDER BY k.n) AS child_pk
FROM pg_constraint c
JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace
JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE c.contype = 'f'
ORDER BY cn.nspname, cc.relname, c.conname
"""
_STALE = """DELETE FROM pgtenantproxy.fk_proofs
            WHERE (child, name) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))"""


class _Found:
    """A foreign key between two tenant tables, with what its proof needs."""

    def __init__(self, row: asyncpg.Record) -> None:
        self.child = QualifiedName(row["child_schema"], row["child_table"])
        self.parent = QualifiedName(row["parent_schema"], row["parent_table"])
        self.fk = ForeignKey(str(self.child), row["conname"], tuple(row["child_cols"]), str(self.parent),
                             tuple(row["parent_cols"]))
        self.child_pk: tuple[str, ...] = tuple(row["child_pk"])


def _cross_refs(found: _Found, shop: str) -> str:
    """``FROM child c JOIN parent p ON <key> WHERE c.shop IS DISTINCT FROM p.shop``."""
    pairs = zip(found.fk.child_cols, found.fk.parent_cols, strict=True)
    on = " AND ".join(f"c.{ident(a)} = p.{ident(b)}" for a, b in pairs)
    column = ident(shop)
    return (f" FROM {found.child.sql} AS c JOIN {found.parent.sql} AS p ON {on}"
            f" WHERE c.{column} IS DISTINCT FROM p.{column}")


def count_sql(found: _Found, shop: str) -> str:
    return "SELECT count(*)" + _cross_refs(found, shop)


def samples_sql(found: _Found, shop: str) -> str:
    refs = ", ".join(f"c.{ident(a)}" for a in found.fk.child_cols)
    key = ", ".join(f"c.{ident(a)}" for a in found.child_pk)
    column = ident(shop)
    return (f"SELECT {f'jsonb_build_array({key})::text' if key else 'NULL::text'} AS child_key,"
            f" c.{column}::text AS child_shop, p.{column}::text AS parent_shop,"
            f" jsonb_build_array({refs})::text AS refs" + _cross_refs(found, shop)
            + f" ORDER BY {key or refs} LIMIT {MAX_SAMPLES:d}")


async def prove_foreign_keys(conn: asyncpg.Connection, tenancy: TenancySection) -> list[FkProof]:
    """Prove and record every foreign key between two tenant tables (see the module doc)."""
    proofs: list[FkProof] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        tables = set(await discover_tenant_tables(conn, tenancy))
        found = [f for f in map(_Found, await conn.fetch(_FOREIGN_KEYS)) if f.child in tables
                 and f.parent in tables]
        for f in found:
            crossing = int(await conn.fetchval(count_sql(f, tenancy.tenant_column)))
            samples = ([_sample(r) for r in await conn.fetch(samples_sql(f, tenancy.tenant_column))]
                       if crossing else [])
            proofs.append(FkProof(f.fk, crossing == 0, crossing, tuple(samples)))
    async with conn.transaction():
        for proof in proofs:
            await record_fk_proof(conn, proof)
        await conn.execute(_STALE, [p.fk.child for p in proofs], [p.fk.name for p in proofs])
    return proofs


async def foreign_key_proofs(
    conn: asyncpg.Connection | asyncpg.Pool, tenancy: TenancySection | None
) -> list[FkProof]:
    """Fresh proofs (``tenancy`` given: :func:`prove_foreign_keys`) or the last ones recorded."""
    if tenancy is None:
        return list(await read_fk_proofs(conn))
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as one:
            return await prove_foreign_keys(one, tenancy)
    return await prove_foreign_keys(conn, tenancy)


def _shop(text: str | None) -> int | str | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def _sample(row: asyncpg.Record) -> dict[str, Any]:
    return {"child_key": None if row["child_key"] is None else json.loads(row["child_key"]),
            "child_shop": _shop(row["child_shop"]), "parent_shop": _shop(row["parent_shop"]),
            "references": json.loads(row["refs"])}


# --- reporting -------------------------------------------------------------------------------
def fk_label(fk: ForeignKey) -> str:
    """``public.repairs.customer_id -> public.customers`` (several columns in parentheses)."""
    cols = fk.child_cols[0] if len(fk.child_cols) == 1 else f"({', '.join(fk.child_cols)})"
    return f"{fk.child}.{cols} -> {fk.parent}"


def proof_line(proof: FkProof) -> str:
    """One line: ``foreign key public.repairs.customer_id -> public.customers: 0 cross-shop references``."""
    what = "reference" if proof.cross_refs == 1 else "references"
    line = f"foreign key {fk_label(proof.fk)}: {proof.cross_refs} cross-shop {what}"
    if proof.consistent:
        return line
    shown = "; ".join(
        f"{proof.fk.child} {json.dumps(s.get('child_key'))} (shop {s.get('child_shop')}) -> "
        f"{proof.fk.parent} {json.dumps(s.get('references'))} (shop {s.get('parent_shop')})"
        for s in proof.samples)
    return f"{line} (it pins nothing), e.g. {shown}"


def proof_lines(proofs: Sequence[FkProof]) -> list[str]:
    return [proof_line(p) for p in proofs]


def proof_dict(proof: FkProof) -> dict[str, Any]:
    fk = proof.fk
    return {"child": fk.child, "name": fk.name, "child_columns": list(fk.child_cols), "parent": fk.parent,
            "parent_columns": list(fk.parent_cols), "consistent": proof.consistent,
            "cross_shop_references": proof.cross_refs, "samples": list(proof.samples),
            "text": proof_line(proof)}
