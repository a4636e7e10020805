"""The key directory's and the foreign-key proofs' SQL against a real server, on tables built to break it.

A database of its own in the session's unified cluster (no tenant servers
needed): tables whose schema, table and column names need quoting, integer
keys of several shops interleaved at random (plus rows without a shop), uuid
and text keys, a composite key. The islands the SQL writes are compared with
the islands computed here in Python; the proofs with the rows inserted.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.config import TenancySection
from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.lifecycle.keys import read_fk_proofs
from pgtenantproxy.migration.fk_proofs import proof_line, prove_foreign_keys
from pgtenantproxy.migration.key_directory import forget_key_directory, write_key_directory
from pgtenantproxy.migration.readiness import readiness
from pgtenantproxy.sqltext import QualifiedName, ident
from pgtenantproxy.tenancy.control_schema import ensure_control_schema

SCHEMA = 'Odd "schema"'
SHOP = "shop id"  # the tenant column, with a space
ODD = TableInfo(
    label=f"{SCHEMA}.Rows; drop", name=QualifiedName(SCHEMA, "Rows; drop"), tenant_column=SHOP,
    columns=(ColumnInfo("Key", "bigint"), ColumnInfo(SHOP, "integer"), ColumnInfo("v", "text")),
    pk=(ColumnInfo("Key", "bigint"),),
)
UUIDS = TableInfo(
    label="public.tokens", name=QualifiedName("public", "tokens"), tenant_column=SHOP,
    columns=(ColumnInfo("id", "uuid"), ColumnInfo(SHOP, "integer")), pk=(ColumnInfo("id", "uuid"),),
)
CODES = TableInfo(
    label="public.codes", name=QualifiedName("public", "codes"), tenant_column=SHOP,
    columns=(ColumnInfo("code", "text"), ColumnInfo(SHOP, "integer")), pk=(ColumnInfo("code", "text"),),
)
PAIRS = TableInfo(
    label="public.pairs", name=QualifiedName("public", "pairs"), tenant_column=SHOP,
    columns=(ColumnInfo("a", "integer"), ColumnInfo("b", "integer"), ColumnInfo(SHOP, "integer")),
    pk=(ColumnInfo("a", "integer"), ColumnInfo("b", "integer")),
)
SCHEMA_SQL = f"""
CREATE SCHEMA {ident(SCHEMA)};
CREATE TABLE {ODD.name.sql} ("Key" bigint PRIMARY KEY, "{SHOP}" integer, v text);
CREATE TABLE tokens (id uuid PRIMARY KEY, "{SHOP}" integer NOT NULL);
CREATE TABLE codes (code text PRIMARY KEY, "{SHOP}" integer NOT NULL);
CREATE TABLE pairs (a integer, b integer, "{SHOP}" integer NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE plans (id integer PRIMARY KEY);
CREATE TABLE customers (id integer PRIMARY KEY, "{SHOP}" integer NOT NULL);
CREATE TABLE repairs (id integer PRIMARY KEY, "{SHOP}" integer NOT NULL,
                      "Customer Id" integer REFERENCES customers (id), plan_id integer REFERENCES plans (id));
CREATE TABLE notes (n integer, m integer, "{SHOP}" integer NOT NULL,
                    FOREIGN KEY (n, m) REFERENCES pairs (a, b));
"""
TENANCY = TenancySection(tenant_column=SHOP)


@pytest.fixture(scope="module")
async def db(unified: PgCluster) -> AsyncIterator[asyncpg.Connection]:
    name = f"key_facts_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(**unified.connect_kwargs())
    await admin.execute(f"CREATE DATABASE {name}")
    conn = await asyncpg.connect(**unified.connect_kwargs(database=name))
    try:
        await ensure_control_schema(conn)
        await conn.execute(SCHEMA_SQL)
        yield conn
    finally:
        await conn.close()
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


def islands(rows: list[tuple[int, int | None]], shop: int) -> list[tuple[int, int]]:
    """The oracle: maximal runs of ``shop``'s keys with no other row between them, in key order."""
    found: list[tuple[int, int]] = []
    start = last = None
    for key, owner in sorted(rows):
        if owner == shop:
            start = key if start is None else start
            last = key
        elif start is not None:
            found.append((start, last))  # type: ignore[arg-type]
            start = None
    if start is not None:
        found.append((start, last))  # type: ignore[arg-type]
    return found


async def test_integer_keys_become_exactly_the_islands_of_the_shop(db: asyncpg.Connection) -> None:
    rng = random.Random(7)
    rows: list[tuple[int, int | None]] = []
    key = -50
    while len(rows) < 4000:
        owner = rng.choice([1, 2, 3, 3, 3, None])
        for _ in range(rng.choice([1, 1, 2, 5, 30])):  # runs of one shop, some long, some single rows
            key += rng.choice([1, 1, 1, 7])
            rows.append((key, owner))
    await db.executemany(f'INSERT INTO {ODD.name.sql} ("Key", "{SHOP}") VALUES ($1, $2)', rows)

    async with db.transaction():
        written = await write_key_directory(db, [ODD, PAIRS], 3)
    want = islands(rows, 3)
    assert written.ranges == {ODD.label: len(want)} and written.not_routed == [PAIRS.label]
    got = await db.fetch("SELECT lower(keys) AS lo, upper(keys) - 1 AS hi, shop_id FROM "
                         "pgtenantproxy.key_directory WHERE tbl = $1 ORDER BY 1", ODD.label)
    assert [(r["lo"], r["hi"]) for r in got] == want and {r["shop_id"] for r in got} == {3}
    assert 50 < len(want) < 4000  # interleaved: many islands, but fewer than keys

    for key, owner in rows:  # every key of shop 3 is covered once, no other row's key at all
        covering = await db.fetchval("SELECT count(*) FROM pgtenantproxy.key_directory "
                                     "WHERE tbl = $1 AND keys @> $2::int8", ODD.label, key)
        assert covering == (1 if owner == 3 else 0), (key, owner)

    async with db.transaction():  # a second retirement of the same shop replaces its rows
        await write_key_directory(db, [ODD], 3)
    assert await db.fetchval("SELECT count(*) FROM pgtenantproxy.key_directory") == len(want)

    # Shop 3's rows leave, then shop 1 retires: its islands stop at shop 3's ranges as at its rows.
    await db.execute(f'DELETE FROM {ODD.name.sql} WHERE "{SHOP}" = 3')
    async with db.transaction():
        await write_key_directory(db, [ODD], 1)
    bounds: list[tuple[int, int | None]] = [(k, -1) for lo, hi in want for k in (lo, hi)]
    ones = islands([r for r in rows if r[1] != 3] + bounds, 1)
    got = await db.fetch("SELECT lower(keys) AS lo, upper(keys) - 1 AS hi FROM pgtenantproxy.key_directory "
                         "WHERE tbl = $1 AND shop_id = 1 ORDER BY 1", ODD.label)
    assert [(r["lo"], r["hi"]) for r in got] == ones
    assert len(ones) > len(islands([r for r in rows if r[1] != 3], 1))  # the bounds did split islands
    for key, owner in rows:
        shops = await db.fetchval("SELECT array_agg(shop_id) FROM pgtenantproxy.key_directory "
                                  "WHERE tbl = $1 AND keys @> $2::int8", ODD.label, key)
        assert shops == ([owner] if owner in (1, 3) else None), (key, owner)
    async with db.transaction():
        assert await forget_key_directory(db, 3) == len(want)
        assert await forget_key_directory(db, 1) == len(ones)


async def test_other_single_column_keys_are_listed_one_by_one_as_text(db: asyncpg.Connection) -> None:
    tokens = [(uuid.UUID(int=i * 7919), 1 + i % 2) for i in range(20)]
    codes = [("it's", 1), ('back\\slash "q"', 1), ("Z", 2)]
    await db.executemany(f'INSERT INTO tokens (id, "{SHOP}") VALUES ($1, $2)', tokens)
    await db.executemany(f'INSERT INTO codes (code, "{SHOP}") VALUES ($1, $2)', codes)
    async with db.transaction():
        written = await write_key_directory(db, [UUIDS, CODES], 1)
    assert written.keys == {UUIDS.label: 10, CODES.label: 2} and written.ranges == {}
    rows = await db.fetch("SELECT tbl, key, shop_id FROM pgtenantproxy.key_directory_text ORDER BY 1, 2")
    assert sorted((r["tbl"], r["key"]) for r in rows) == sorted(
        [(UUIDS.label, str(u)) for u, s in tokens if s == 1] + [(CODES.label, c) for c, s in codes if s == 1])
    assert {r["shop_id"] for r in rows} == {1}
    found = await db.fetchval("SELECT shop_id FROM pgtenantproxy.key_directory_text WHERE tbl = $1 AND key = "
                              "$2::uuid::text", UUIDS.label, tokens[0][0])
    assert found == 1
    async with db.transaction():
        assert await forget_key_directory(db, 1) == 12


async def test_foreign_keys_between_tenant_tables_are_proved_and_cross_shop_rows_named(
    db: asyncpg.Connection
) -> None:
    await db.execute(f"""
        INSERT INTO plans VALUES (1);
        INSERT INTO customers (id, "{SHOP}") SELECT i, 1 + i % 3 FROM generate_series(1, 30) i;
        INSERT INTO repairs (id, "{SHOP}", "Customer Id", plan_id)
            SELECT i, 1 + (i % 30) % 3, i % 30, 1 FROM generate_series(1, 300) i WHERE i % 30 <> 0;
        INSERT INTO repairs (id, "{SHOP}", "Customer Id") VALUES (1000, 2, NULL);
        INSERT INTO pairs (a, b, "{SHOP}") VALUES (1, 1, 1), (1, 2, 2);
        INSERT INTO notes (n, m, "{SHOP}") VALUES (1, 1, 1), (1, 2, 2), (NULL, 2, 3);
    """)
    proofs = {p.fk.child + "/" + ",".join(p.fk.child_cols): p for p in await prove_foreign_keys(db, TENANCY)}
    assert set(proofs) == {"public.repairs/Customer Id", "public.notes/n,m"}  # plans is not a tenant table
    assert all(p.consistent and p.cross_refs == 0 for p in proofs.values())
    assert proof_line(proofs["public.repairs/Customer Id"]) == (
        "foreign key public.repairs.Customer Id -> public.customers: 0 cross-shop references")

    await db.execute(f'INSERT INTO repairs (id, "{SHOP}", "Customer Id") VALUES (2001, 2, 5), (2000, 1, 5)')
    proofs = {p.fk.child: p for p in await prove_foreign_keys(db, TENANCY)}
    bad = proofs["public.repairs"]  # customer 5 belongs to shop 3
    assert not bad.consistent and bad.cross_refs == 2
    assert list(bad.samples) == [
        {"child_key": [2000], "child_shop": 1, "parent_shop": 3, "references": [5]},
        {"child_key": [2001], "child_shop": 2, "parent_shop": 3, "references": [5]},
    ]
    assert "cross-shop reference" in proof_line(bad) and "public.repairs [2000] (shop 1)" in proof_line(bad)
    assert proofs["public.notes"].consistent

    recorded = {p.fk.child: p for p in await read_fk_proofs(db)}
    assert not recorded["public.repairs"].consistent and recorded["public.repairs"].cross_refs == 2
    ready = (await readiness(db, [1]))[1]
    assert ready.ready and [p.fk.child for p in ready.cross_shop_foreign_keys] == ["public.repairs"]
    assert ready.as_dict()["foreign_keys"][0]["text"].startswith("foreign key public.notes.(n, m)")

    await db.execute("ALTER TABLE notes DROP CONSTRAINT notes_n_m_fkey")
    await prove_foreign_keys(db, TENANCY)
    assert [p.fk.child for p in await read_fk_proofs(db)] == ["public.repairs"]  # the stale proof is gone
