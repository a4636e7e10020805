"""Provisioning 50 shops across two tenant servers, isolation between shops, secrets at rest,
and a tenant schema migration applied to all of them with one broken tenant."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from pgtenantproxy.tenancy.errors import MigrationError, UnknownTenantError
from pgtenantproxy.tenancy.provisioning import ALREADY, ProvisionOutcome
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import TenancyBed

SHOPS = list(range(1, 51))


@pytest.fixture(scope="module")
async def svc(bed: TenancyBed) -> AsyncIterator[TenancyService]:
    service = await bed.service()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture(scope="module")
async def provisioned(svc: TenancyService) -> list[ProvisionOutcome]:
    return await svc.provision_many(SHOPS, concurrency=8)


async def marked_databases(bed: TenancyBed, server: str) -> list[str]:
    conn = await asyncpg.connect(**bed.tenant_of(server).connect_kwargs())
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database"
            " WHERE shobj_description(oid, 'pg_database') LIKE 'pgtenantproxy%'"
        )
    finally:
        await conn.close()
    return sorted(r[0] for r in rows)


async def test_fifty_shops_are_provisioned_and_spread(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    assert [o.status for o in provisioned] == ["provisioned"] * 50, [o.error for o in provisioned if not o.ok]
    per_server = Counter(o.server for o in provisioned)
    assert per_server == {"t1": 25, "t2": 25}
    for server in ("t1", "t2"):
        expected = sorted(f"shop_{o.shop_id}_db" for o in provisioned if o.server == server)
        assert await marked_databases(bed, server) == expected
    tenants = await svc.tenants()
    assert [(t.shop_id, t.state, t.step, t.error) for t in tenants] == [
        (s, "provisioned", None, None) for s in SHOPS
    ]
    steps = await svc.pool.fetch(
        "SELECT step, count(*) FROM pgtenantproxy.migration_log"
        " WHERE action = 'provision' AND status = 'done' GROUP BY step"
    )
    assert {r["step"]: r["count"] for r in steps} == {
        s: 50
        for s in ("place", "create_role", "create_database", "create_schema", "grant", "register", "verify")
    }


async def test_provisioning_again_is_a_no_op(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    before = await marked_databases(bed, "t1") + await marked_databases(bed, "t2")
    again = await svc.provision_many(SHOPS[:10], concurrency=4)
    assert {o.status for o in again} == {ALREADY}
    assert [o.server for o in again] == [o.server for o in provisioned[:10]]
    assert await marked_databases(bed, "t1") + await marked_databases(bed, "t2") == before


async def test_shop_role_is_confined_to_its_own_database(
    svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    one = await svc.credentials(1)
    two = await svc.credentials(2)
    # shop_user_1 cannot log in to shop_2_db, wherever shop 2 lives.
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(
            **{**one.connect_kwargs(), "host": two.host, "port": two.port, "database": two.database}
        )
    # On the same server the role exists, and CONNECT is what stops it.
    neighbour = next(o.shop_id for o in provisioned if o.server == one.server and o.shop_id != 1)
    other = await svc.credentials(neighbour)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await asyncpg.connect(**{**one.connect_kwargs(), "database": other.database})
    conn = await asyncpg.connect(**one.connect_kwargs())
    try:
        # Its catalog shows its own tables only; other databases' tables are out of reach.
        tables = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
        )
        assert len(tables) == 19
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="cross-database"):
            await conn.fetch(f"SELECT * FROM {other.database}.public.repairs")
        # It can write rows of its own shop only, and cannot change the schema or the pin.
        assert await conn.fetchval("INSERT INTO suppliers (name) VALUES ('s') RETURNING shop_id") == 1
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(f"INSERT INTO suppliers (shop_id, name) VALUES ({neighbour}, 'x')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE suppliers DROP CONSTRAINT pgtenantproxy_tenant_pin")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE mine (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM pgtenantproxy.tenant")
    finally:
        await conn.close()


async def test_no_password_is_stored_or_logged_in_clear(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    passwords = [(await svc.credentials(s)).password for s in SHOPS]
    assert len(set(passwords)) == 50 and all(len(p) >= 40 for p in passwords)
    rows = await svc.pool.fetch(
        "SELECT shop_id, password_enc, dsn_enc FROM pgtenantproxy.tenant_credentials ORDER BY shop_id"
    )
    for row, password in zip(rows, passwords, strict=True):
        for blob in (row["password_enc"], row["dsn_enc"]):
            assert password.encode() not in blob
            assert password[:12].encode() not in blob
    dump = subprocess.run(  # noqa: ASYNC221 (a short pg_dump; nothing else runs meanwhile)
        [str(bed.unified.bindir / "pg_dump"), "-d", "handyshop", "-n", "pgtenantproxy", "--data-only"],
        env=bed.unified.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tenant_credentials" in dump
    server_logs = "".join(c.logfile.read_text(errors="replace") for c in bed.tenants)
    assert "CREATE ROLE" in server_logs and "SCRAM-SHA-256$" in server_logs  # statements are logged...
    for secret in [*passwords, bed.key_hex]:
        assert secret not in dump
        assert secret not in server_logs  # ...but never with a password in them


# A migration that creates a new tenant table pins it to the shop it runs for.
PIN_NEW_TABLE = """
CREATE INDEX repairs_warranty ON repairs (warranty_months);
DO $$ BEGIN
    EXECUTE format('CREATE TABLE loyalty (shop_id integer NOT NULL DEFAULT %1$s CHECK (shop_id = %1$s),'
                   ' points integer)', current_setting('pgtenantproxy.shop_id')::integer);
END $$;
"""


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def test_migration_on_fifty_tenants_reports_exactly_the_broken_one(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome], tmp_path: Path
) -> None:
    broken = 13
    creds = await svc.credentials(broken)
    admin = await svc.servers.get(creds.server).connect(creds.database)
    try:  # the broken tenant already has the column the migration adds
        await admin.execute("ALTER TABLE repairs ADD COLUMN warranty_months integer")
    finally:
        await admin.close()
    migrations = write_migrations(
        tmp_path / "m",
        {
            "0001_warranty.sql": "ALTER TABLE repairs ADD COLUMN warranty_months integer NOT NULL DEFAULT 3;",
            "0002_loyalty.sql": PIN_NEW_TABLE,
        },
    )
    report = await svc.migrate_schema(migrations, concurrency=8)
    assert len(report.results) == 50
    assert [r.shop_id for r in report.failed] == [broken]
    failure = report.failed[0]
    assert (
        failure.error is not None
        and failure.error.startswith("0001_warranty")
        and "already exists" in failure.error
    )
    assert failure.version == 0 and failure.applied == ()
    assert {r.version for r in report.results if r.ok} == {2}
    assert all(r.applied == (1, 2) for r in report.results if r.ok)
    versions = {t.shop_id: t.schema_version for t in await svc.tenants()}
    assert versions == {s: (0 if s == broken else 2) for s in SHOPS}

    # The shop role can use what the migration created (default privileges).
    conn = await asyncpg.connect(**(await svc.credentials(5)).connect_kwargs())
    try:
        assert await conn.fetchval("INSERT INTO loyalty (points) VALUES (1) RETURNING shop_id") == 5
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO loyalty (shop_id, points) VALUES (6, 1)")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'repairs' AND column_name = 'warranty_months'"
            )
            == 1
        )
    finally:
        await conn.close()

    # Re-running applies nothing new; after a repair the broken tenant catches up.
    again = await svc.migrate_schema(migrations)
    assert again.applied == 0 and [r.shop_id for r in again.failed] == [broken]
    admin = await svc.servers.get(creds.server).connect(creds.database)
    try:
        await admin.execute("ALTER TABLE repairs DROP COLUMN warranty_months")
    finally:
        await admin.close()
    fixed = await svc.migrate_schema(migrations, shop_ids=[broken])
    assert [(r.shop_id, r.applied, r.error) for r in fixed.results] == [(broken, (1, 2), None)]


async def test_an_edited_migration_is_refused_before_any_tenant_is_touched(
    svc: TenancyService, provisioned: list[ProvisionOutcome], tmp_path: Path
) -> None:
    recorded = "SELECT count(*) FROM pgtenantproxy.tenant_migrations WHERE version = 1"
    assert await svc.pool.fetchval(recorded) == 1
    before = await svc.pool.fetchval("SELECT max(updated_at) FROM pgtenantproxy.tenant_provisions")
    edited = write_migrations(tmp_path / "m", {"0001_warranty.sql": "ALTER TABLE repairs ADD COLUMN w int;"})
    with pytest.raises(MigrationError, match="changed after version 1 was recorded"):
        await svc.migrate_schema(edited)
    assert await svc.pool.fetchval("SELECT max(updated_at) FROM pgtenantproxy.tenant_provisions") == before


async def test_a_shop_provisioned_later_starts_at_the_latest_version(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    known = await svc.pool.fetchval("SELECT max(version) FROM pgtenantproxy.tenant_migrations")
    outcome = await svc.provision(51)
    assert outcome.status == "provisioned", outcome.error
    status = {t.shop_id: t for t in await svc.tenants()}[51]
    assert status.schema_version == known == 2
    creds = await svc.credentials(51)
    admin = await svc.servers.get(creds.server).connect(creds.database)
    try:
        rows = await admin.fetch("SELECT version, baseline FROM pgtenantproxy.schema_migrations ORDER BY 1")
    finally:
        await admin.close()
    assert [(r["version"], r["baseline"]) for r in rows] == [(1, True), (2, True)]


async def test_deprovision_removes_everything(
    bed: TenancyBed, svc: TenancyService, provisioned: list[ProvisionOutcome]
) -> None:
    creds = await svc.credentials(50)
    assert await svc.deprovision(50) is True
    assert "shop_50_db" not in await marked_databases(bed, creds.server)
    admin = await svc.servers.get(creds.server).connect()
    try:
        assert await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'shop_user_50'") == 0
    finally:
        await admin.close()
    svc.registry.invalidate()
    with pytest.raises(UnknownTenantError):
        await svc.credentials(50)
    assert {t.shop_id: t.state for t in await svc.tenants()}[50] == "deprovisioned"
    assert await svc.deprovision(50) is False
    again = await svc.provision(50)
    assert again.status == "provisioned"
