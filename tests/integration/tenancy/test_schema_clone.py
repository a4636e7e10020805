"""The tenant schema, column by column, constraint by constraint, index by index, against unified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pgtenantproxy.config import TenancySection
from pgtenantproxy.tenancy.errors import CloneError
from pgtenantproxy.tenancy.schema_clone import read_clone_spec
from pgtenantproxy.tenancy.schema_model import PIN_CONSTRAINT
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import SCHEMA_SQL, TenancyBed, load_sql

SHOP = 3
GLOBAL_FKS = {
    ("users", "users_shop_id_fkey"),
    ("customers", "customers_shop_id_fkey"),
    ("devices", "devices_device_model_id_fkey"),
    ("repairs", "repairs_shop_id_fkey"),
    ("parts", "parts_brand_id_fkey"),
    ("shop_settings", "shop_settings_shop_id_fkey"),
}
COLUMNS = """
SELECT c.table_name, c.column_name, c.ordinal_position, c.data_type, c.udt_schema, c.udt_name,
       c.domain_schema, c.domain_name, c.character_maximum_length, c.numeric_precision, c.numeric_scale,
       c.is_nullable, c.column_default, c.is_identity, c.identity_generation, c.identity_start,
       c.identity_increment, c.identity_maximum, c.identity_minimum, c.identity_cycle,
       c.is_generated, c.generation_expression, c.collation_name
FROM information_schema.columns c
WHERE c.table_schema = 'public' AND c.table_name = ANY($1::text[])
ORDER BY c.table_name, c.ordinal_position
"""
CONSTRAINTS = """
SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS definition
FROM pg_constraint WHERE conrelid = ANY(SELECT to_regclass(t) FROM unnest($1::text[]) AS t)
ORDER BY 1, 2
"""
INDEXES = (
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY($1::text[]) ORDER BY 1, 2"
)
TYPES = """
SELECT t.typname, t.typtype::text, format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull,
       pg_get_expr(t.typdefaultbin, 0) AS default,
       ARRAY(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder) AS labels,
       ARRAY(SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = t.oid
             ORDER BY conname) AS checks
FROM pg_type t WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd') ORDER BY 1
"""
SEQUENCES = """
SELECT sequence_name, data_type, start_value, minimum_value, maximum_value, increment, cycle_option
FROM information_schema.sequences
WHERE sequence_schema = 'public' AND sequence_name = ANY($1::text[]) ORDER BY 1
"""


@pytest.fixture(scope="module")
async def svc(bed: TenancyBed) -> AsyncIterator[TenancyService]:
    service = await bed.service()
    try:
        outcome = await service.provision(SHOP)
        assert outcome.status == "provisioned", outcome.error
        yield service
    finally:
        await service.close()


@pytest.fixture(scope="module")
async def both(
    bed: TenancyBed, svc: TenancyService
) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    creds = await svc.credentials(SHOP)
    unified = await asyncpg.connect(**bed.unified.connect_kwargs(database="handyshop"))
    tenant = await svc.servers.get(creds.server).connect(creds.database)
    try:
        yield unified, tenant
    finally:
        await unified.close()
        await tenant.close()


async def tenant_table_names(svc: TenancyService) -> list[str]:
    return [t.name for t in await svc.tenant_tables()]


def rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


async def test_columns_match_the_source_one_by_one(svc: TenancyService, both: Any) -> None:
    unified, tenant = both
    tables = await tenant_table_names(svc)
    assert len(tables) == 19
    source, clone = rows(await unified.fetch(COLUMNS, tables)), rows(await tenant.fetch(COLUMNS, tables))
    assert len(source) == len(clone) > 100
    for src, dst in zip(source, clone, strict=True):
        if src["column_name"] == "shop_id":
            assert dst["column_default"] == str(SHOP), src["table_name"]
            src, dst = {**src, "column_default": None}, {**dst, "column_default": None}
        assert dst == src


async def test_constraints_are_reproduced_and_the_shop_is_pinned(svc: TenancyService, both: Any) -> None:
    unified, tenant = both
    tables = await tenant_table_names(svc)
    source = {
        (r["table_name"], r["conname"]): r["definition"] for r in await unified.fetch(CONSTRAINTS, tables)
    }
    clone = {
        (r["table_name"], r["conname"]): r["definition"] for r in await tenant.fetch(CONSTRAINTS, tables)
    }
    pins = {k: v for k, v in clone.items() if k[1] == PIN_CONSTRAINT}
    assert pins == {(t, PIN_CONSTRAINT): f"CHECK ((shop_id = {SHOP}))" for t in tables}
    dropped = {k for k in source if k not in clone}
    assert dropped == GLOBAL_FKS
    assert {k: v for k, v in source.items() if k not in GLOBAL_FKS} == {
        k: v for k, v in clone.items() if k[1] != PIN_CONSTRAINT
    }
    template = await svc.template()
    assert {(d.table.name, d.name) for d in template.spec.dropped_foreign_keys} == GLOBAL_FKS


async def test_indexes_types_and_sequences_are_reproduced(svc: TenancyService, both: Any) -> None:
    unified, tenant = both
    tables = await tenant_table_names(svc)
    source_indexes = rows(await unified.fetch(INDEXES, tables))
    assert any("WHERE" in r["indexdef"] for r in source_indexes)  # partial
    assert any("lower(" in r["indexdef"] for r in source_indexes)  # expression
    assert rows(await tenant.fetch(INDEXES, tables)) == source_indexes
    assert rows(await tenant.fetch(TYPES)) == rows(await unified.fetch(TYPES))
    sequences = [
        r[0]
        for r in await tenant.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace"
        )
    ]
    assert "invoice_number_seq" in sequences and "customers_id_seq" in sequences
    assert rows(await tenant.fetch(SEQUENCES, sequences)) == rows(await unified.fetch(SEQUENCES, sequences))


async def test_the_clone_behaves_like_the_source(svc: TenancyService) -> None:
    conn = await asyncpg.connect(**(await svc.credentials(SHOP)).connect_kwargs())
    try:
        customer = await conn.fetchrow(
            "INSERT INTO customers (name, phone) VALUES ('Ada', '1') RETURNING id, shop_id"
        )
        assert (customer["id"], customer["shop_id"]) == (100, SHOP)  # identity START WITH 100, pinned shop
        with pytest.raises(asyncpg.GeneratedAlwaysError):
            await conn.execute("INSERT INTO customers (id, name) VALUES (1, 'x')")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO customers (shop_id, name) VALUES (4, 'x')")
        with pytest.raises(asyncpg.CheckViolationError):  # domain check
            await conn.execute("INSERT INTO suppliers (name, email) VALUES ('x', 'not-an-email')")
        with pytest.raises(asyncpg.UniqueViolationError):  # composite unique
            await conn.execute("INSERT INTO customers (name, phone) VALUES ('Bob', '1')")
        await conn.execute(
            "INSERT INTO devices (customer_id, imei) VALUES ($1, '123456789012345')", customer["id"]
        )
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # FK among tenant tables (composite)
            await conn.execute("INSERT INTO devices (customer_id) VALUES (999999)")
        # FK to a global table is gone: a device model id that only unified knows is accepted.
        await conn.execute(
            "INSERT INTO devices (customer_id, device_model_id) VALUES ($1, 12345)", customer["id"]
        )
        repair = await conn.fetchval(
            "INSERT INTO repairs (customer_id, price) VALUES ($1, 10) RETURNING id", customer["id"]
        )
        invoice = await conn.fetchrow(
            "INSERT INTO invoices (repair_id, total, due_on) VALUES ($1, 10, current_date) RETURNING number",
            repair,
        )
        assert invoice["number"] == "INV-1000"  # free-standing sequence with its START
        await conn.execute(
            "INSERT INTO invoice_lines (invoice_id, line_no, description, amount)"
            " SELECT id, 1, 'x', 12.34 FROM invoices"
        )
        assert await conn.fetchval("SELECT amount_cents FROM invoice_lines") == 1234  # generated column
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="repairs_customer_id_fkey"):
            await conn.execute("DELETE FROM customers")  # no cascade from customers to repairs, as in unified
    finally:
        await conn.close()


async def test_listed_tenant_tables_and_unsupported_features(bed: TenancyBed) -> None:
    admin = await asyncpg.connect(**bed.unified.connect_kwargs())
    try:
        await admin.execute("DROP DATABASE IF EXISTS clone_scratch")
        await admin.execute("CREATE DATABASE clone_scratch")
    finally:
        await admin.close()
    load_sql(bed.unified, SCHEMA_SQL, "clone_scratch")
    conn = await asyncpg.connect(**bed.unified.connect_kwargs(database="clone_scratch"))
    try:
        spec = await read_clone_spec(conn, TenancySection(tenant_tables=("customers", "public.devices")))
        assert [str(t) for t in spec.table_names] == ["public.customers", "public.devices"]
        assert {c.name for c in spec.constraints if c.kind == "f"} == {
            "customers_referred_by_fkey",
            "devices_customer_fk",
        }
        assert {d.name for d in spec.dropped_foreign_keys} == {
            "customers_shop_id_fkey",
            "devices_device_model_id_fkey",
        }
        with pytest.raises(CloneError, match="does not exist"):
            await read_clone_spec(conn, TenancySection(tenant_tables=("nope",)))
        with pytest.raises(CloneError, match="has no column"):
            await read_clone_spec(conn, TenancySection(tenant_tables=("plans",)))
        await conn.execute(
            "CREATE FUNCTION make_name() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;"
            "ALTER TABLE suppliers ALTER COLUMN name SET DEFAULT make_name()"
        )
        with pytest.raises(CloneError, match=r"make_name\(\)"):
            await read_clone_spec(conn, TenancySection())
    finally:
        await conn.close()
