"""``harden`` on the unified database: the tenant column of a row cannot change, one owner per
shop, owners have a shop; rows that already break a rule are reported, not trampled."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.tenancy.hardening import OWNER_CHECK, OWNER_INDEX, TRIGGER
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import SCHEMA_SQL, TenancyBed, load_sql

DB = "harden_db"
APP_PASSWORD = "app-harden-secret"


@pytest.fixture(scope="module")
async def svc(bed: TenancyBed) -> AsyncIterator[TenancyService]:
    admin = await asyncpg.connect(**bed.unified.connect_kwargs())
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB}")
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'harden_app'"):
            await admin.execute(f"CREATE ROLE harden_app LOGIN PASSWORD '{APP_PASSWORD}'")
    finally:
        await admin.close()
    load_sql(bed.unified, SCHEMA_SQL, DB)
    conn = await asyncpg.connect(**bed.unified.connect_kwargs(database=DB))
    try:
        await conn.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO harden_app;"
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO harden_app"
        )
        # Rows that break the owner rules before hardening.
        await conn.execute(
            "INSERT INTO users (shop_id, email, name, role) VALUES"
            " (5, 'second-owner@example.test', 'Second owner', 'owner'),"
            " (NULL, 'lost-owner@example.test', 'Lost owner', 'owner')"
        )
    finally:
        await conn.close()
    service = await bed.service(unified={"database": DB})
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
async def app(bed: TenancyBed, svc: TenancyService) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        **bed.unified.connect_kwargs(user="harden_app", password=APP_PASSWORD, database=DB)
    )
    try:
        yield conn
    finally:
        await conn.close()


async def test_existing_violations_are_reported_and_block_only_their_rule(
    svc: TenancyService, app: asyncpg.Connection
) -> None:
    report = await svc.harden()
    assert len(report.protected_tables) == 19
    assert not report.ok and report.installed == []
    by_rule = {v.rule: v for v in report.violations}
    dup_keys = await svc.pool.fetch("SELECT id FROM users WHERE shop_id = 5 AND role = 'owner' ORDER BY id")
    assert by_rule["one owner per shop"].shop_id == 5
    assert by_rule["one owner per shop"].keys == tuple(str(r["id"]) for r in dup_keys)
    lost = await svc.pool.fetchval("SELECT id FROM users WHERE email = 'lost-owner@example.test'")
    assert by_rule["owners have a shop"].keys == (str(lost),)
    assert "second-owner" not in str(report.violations)  # keys only, never other columns
    assert await svc.pool.fetchval("SELECT to_regclass($1)", OWNER_INDEX) is None
    triggers = await svc.pool.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = $1", TRIGGER)
    assert triggers == 19


async def test_the_tenant_column_of_a_row_cannot_change(svc: TenancyService, app: asyncpg.Connection) -> None:
    await svc.harden()  # idempotent; the triggers do not depend on the owner rules
    with pytest.raises(
        asyncpg.IntegrityConstraintViolationError, match=r"shop_id of an existing row of public\.repairs"
    ):
        await app.execute("UPDATE repairs SET shop_id = 2 WHERE shop_id = 1")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match=r"public\.users"):
        await app.execute("UPDATE users SET shop_id = NULL WHERE shop_id = 1")
    # Other updates, and updates that set the same value, go through.
    assert await app.execute("UPDATE repairs SET status = 'ready' WHERE shop_id = 1") != "UPDATE 0"
    assert await app.execute("UPDATE repairs SET shop_id = shop_id WHERE shop_id = 2") != "UPDATE 0"
    await app.execute("INSERT INTO suppliers (shop_id, name) VALUES (1, 'new')")
    await app.execute("DELETE FROM suppliers WHERE shop_id = 1")


async def test_after_fixing_the_rows_the_owner_rules_are_installed(
    svc: TenancyService, app: asyncpg.Connection
) -> None:
    await svc.pool.execute(
        "DELETE FROM users WHERE email IN ('second-owner@example.test', 'lost-owner@example.test')"
    )
    report = await svc.harden()
    assert report.ok and sorted(report.installed) == sorted([OWNER_INDEX, OWNER_CHECK])
    with pytest.raises(asyncpg.UniqueViolationError, match=OWNER_INDEX):
        await app.execute(
            "INSERT INTO users (shop_id, email, name, role) VALUES (1, 'o2@x.test', 'o', 'owner')"
        )
    with pytest.raises(asyncpg.CheckViolationError, match=OWNER_CHECK):
        await app.execute(
            "INSERT INTO users (shop_id, email, name, role) VALUES (NULL, 'o3@x.test', 'o', 'owner')"
        )
    await app.execute("INSERT INTO users (shop_id, email, name, role) VALUES (1, 's@x.test', 's', 'staff')")
    again = await svc.harden()
    assert again.ok and again.installed == [] and sorted(again.present) == sorted([OWNER_INDEX, OWNER_CHECK])
    assert await svc.pool.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = $1", TRIGGER) == 19
