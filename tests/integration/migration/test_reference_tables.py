"""Reference tables against real clusters: every shop database holds read-only copies of global tables.

The lifecycle bed (shops 1-20 provisioned) with two global tables added on unified for this module:
``public.device_models`` (copied whole, its ``secret`` column left out) and ``catalog.staff`` (filtered by
``shop_id``: each shop's copy holds its own rows; a schema the shop databases do not have; under
``tenant_tables = "auto"`` it would be a tenant table, being a reference table wins). Both are dropped again
at the end (the bed is shared by the package).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgtenantproxy.admin.report import gather_status
from pgtenantproxy.config import Config, ConfigError, ReferenceTable, parse_config
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.reference import TRIGGERS, reference_lag
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.metrics.control import ControlGauges
from pgtenantproxy.metrics.mirror import mirror_metrics
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.reference import DROPPED, FILLED, RECREATED, REFRESHED, ReferenceSync
from pgtenantproxy.migration.reference_catalog import read_definitions
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.tenancy.registry import connect_tenant
from pgtenantproxy.tenancy.schema_clone import discover_tenant_tables
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import SHOPS, MirrorBed

MODELS = "public.device_models"
STAFF = "catalog.staff"
TABLES = [MODELS, STAFF]
REFERENCES = [
    {"table": "device_models", "columns": ["id", "brand_id", "model"]},
    {"table": STAFF, "columns": ["id", "shop_id", "name", "role"], "shop_column": "shop_id"},
]
SETUP = """
CREATE TABLE device_models (id serial PRIMARY KEY, brand_id integer NOT NULL, model text NOT NULL,
                            secret text);
INSERT INTO device_models (brand_id, model, secret)
    SELECT b, 'model ' || b, 'hush' FROM generate_series(1, 5) b;
CREATE SCHEMA catalog;
CREATE TABLE catalog.staff (id integer PRIMARY KEY, shop_id integer NOT NULL, name text NOT NULL, role text,
                            password_hash text NOT NULL DEFAULT 'x');
INSERT INTO catalog.staff (id, shop_id, name, role)
    SELECT s * 10 + n, s, 'staff ' || s || '.' || n, 'tech'
    FROM generate_series(1, 20) s, generate_series(1, 3) n;
GRANT USAGE ON SCHEMA catalog TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON device_models, catalog.staff TO app_user;
GRANT USAGE ON SEQUENCE device_models_id_seq TO app_user;
"""
TEARDOWN = """
DROP TABLE IF EXISTS device_models, catalog.staff CASCADE;
DROP SCHEMA IF EXISTS catalog CASCADE;
TRUNCATE pgtenantproxy.reference_changes, pgtenantproxy.reference_state;
"""


def ref_config(bed: MirrorBed, references: list[dict[str, Any]] | None = None, **tenancy: Any) -> Config:
    listed = REFERENCES if references is None else references
    return bed.config(tenancy={"reference_tables": listed, **tenancy})


@pytest.fixture(scope="module")
async def ref(lbed: MirrorBed) -> AsyncIterator[tuple[TenancyService, ReferenceSync]]:
    conn = await lbed.unified_admin()
    try:
        await conn.execute(SETUP)
    finally:
        await conn.close()
    config = ref_config(lbed)
    tenancy = await TenancyService.open(config, pool_size=8)
    try:
        yield tenancy, ReferenceSync(tenancy, lambda: config)
    finally:
        await ReferenceSync(tenancy, lambda: ref_config(lbed, [])).run_once()  # copies and triggers gone
        await tenancy.close()
        conn = await lbed.unified_admin()
        try:
            await conn.execute(TEARDOWN)
        finally:
            await conn.close()


async def on_unified(bed: MirrorBed, sql: str, *args: Any) -> Any:
    """As the application; a script of several statements when there are no arguments."""
    conn = await bed.app()
    try:
        return await (conn.fetch(sql, *args) if args else conn.execute(sql))
    finally:
        await conn.close()


async def copy_rows(bed: MirrorBed, shop: int, table: str) -> list[tuple[Any, ...]]:
    conn = await bed.shop_admin(shop)
    try:
        return [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        await conn.close()


async def wanted(bed: MirrorBed, shop: int, table: str) -> list[tuple[Any, ...]]:
    if table == MODELS:
        sql = "SELECT id, brand_id, model FROM device_models WHERE $1::int IS NOT NULL ORDER BY id"
        return [tuple(r) for r in await on_unified(bed, sql, shop)]
    sql = "SELECT id, shop_id, name, role FROM catalog.staff WHERE shop_id = $1 ORDER BY id"
    return [tuple(r) for r in await on_unified(bed, sql, shop)]


async def lags(tenancy: TenancyService) -> dict[int, float]:
    return await reference_lag(tenancy.pool, TABLES)


async def test_copies_hold_the_listed_columns_and_filtered_ones_only_the_shops_rows(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, sync = ref
    shop_db = await lbed.shop_admin(3)  # a table of that name that is not a copy (say, an old tenant clone)
    try:
        await shop_db.execute("CREATE TABLE device_models (id integer PRIMARY KEY, secret text);"
                              "INSERT INTO device_models VALUES (99, 'leaked')")
    finally:
        await shop_db.close()
    assert await lags(tenancy) == {}  # no copies yet: no shop may use them
    report = await sync.run_once()
    assert report.ok, report.errors()
    assert sorted(report.installed) == sorted(TABLES)
    assert {(r.shop_id, r.table) for r in report} == {(s, t) for s in SHOPS for t in TABLES}
    assert {r.action for r in report if (r.shop_id, r.table) != (3, MODELS)} == {FILLED}
    replaced = next(r for r in report if (r.shop_id, r.table) == (3, MODELS))
    assert replaced.action == RECREATED and "not a reference copy" in (replaced.detail or "")
    for shop in (1, 3, 20):
        for table in TABLES:
            assert await copy_rows(lbed, shop, table) == await wanted(lbed, shop, table)
    assert len(await copy_rows(lbed, 7, STAFF)) == 3
    conn = await lbed.shop_admin(1)
    try:
        columns = await conn.fetch(
            "SELECT c.oid::regclass::text AS t, array_agg(a.attname::text ORDER BY a.attnum) AS cols,"
            " pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE c.oid IN ('device_models'::regclass, 'catalog.staff'::regclass) GROUP BY c.oid")
    finally:
        await conn.close()
    assert {r["t"]: r["cols"] for r in columns} == {
        "device_models": ["id", "brand_id", "model"], "catalog.staff": ["id", "shop_id", "name", "role"]}
    assert {r["owner"] for r in columns} == {lbed.tenant.superuser}
    assert await lags(tenancy) == dict.fromkeys(SHOPS, 0.0)
    again = await sync.run_once()  # nothing changed: nothing to do, no shop database touched
    assert again.ok and not again.installed and {r.action for r in again} == {"current"}
    # a reference table is never a tenant table, also under tenant_tables = "auto"
    async with tenancy.pool.acquire() as conn:
        with_refs = {str(t) for t in await discover_tenant_tables(conn, tenancy.config.tenancy)}
        without = {str(t) for t in await discover_tenant_tables(conn, lbed.config().tenancy)}
    assert STAFF in without and STAFF not in with_refs


async def test_the_shop_role_can_read_the_copies_but_not_write_them(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    conn = await connect_tenant(tenancy.registry, 4)
    try:
        assert await conn.fetchval("SELECT count(*) FROM device_models m JOIN catalog.staff s"
                                   " ON s.id % 5 + 1 = m.brand_id") == 3
        for sql in ("INSERT INTO device_models VALUES (100, 1, 'x')", "UPDATE device_models SET model = 'x'",
                    "DELETE FROM catalog.staff", "TRUNCATE device_models",
                    "UPDATE catalog.staff SET name = 'x' WHERE id = 41"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_changes_on_unified_reach_every_copy(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, sync = ref
    await on_unified(lbed, """
        INSERT INTO device_models (brand_id, model) VALUES (6, 'new');
        UPDATE device_models SET model = 'renamed' WHERE id = 2;
        UPDATE device_models SET secret = 'not copied, not logged' WHERE id = 3;
        DELETE FROM device_models WHERE id = 4;
        UPDATE catalog.staff SET name = 'moved', shop_id = 3 WHERE id = 21;  -- shop 2 -> shop 3
        UPDATE catalog.staff SET id = 999 WHERE id = 52;                      -- a key change
        INSERT INTO catalog.staff (id, shop_id, name) VALUES (1000, 9, 'hired');""")
    await asyncio.sleep(0.05)
    before = await lags(tenancy)
    assert set(before) == set(SHOPS) and all(lag > 0 for lag in before.values()), before
    report = await sync.run_once()
    assert report.ok, report.errors()
    assert {r.action for r in report if r.table == MODELS} == {REFRESHED}
    assert {r.shop_id for r in report if r.table == STAFF and r.action == REFRESHED} == set(SHOPS)
    assert await lags(tenancy) == dict.fromkeys(SHOPS, 0.0)
    for shop in SHOPS:
        for table in TABLES:
            assert await copy_rows(lbed, shop, table) == await wanted(lbed, shop, table), (shop, table)
    assert (21, 3, "moved", "tech") in await copy_rows(lbed, 3, STAFF)
    assert 999 in [r[0] for r in await copy_rows(lbed, 5, STAFF)]
    # the same lag in `pgtenantproxy status` and in the metrics
    async with tenancy.pool.acquire() as conn:
        status = await gather_status(conn, tenancy.config)
    assert {s.shop_id: s.reference_lag_seconds for s in status.shops if s.shop_id in SHOPS} == \
        dict.fromkeys(SHOPS, 0.0)
    gauges = ControlGauges(tenancy.pool, reference_tables=lambda: TABLES)
    await gauges.poll()
    families = {f.name: f for f in mirror_metrics(None, gauges, limit=5)}
    assert len(families["pgtenantproxy_reference_lag_seconds"].samples) == 5
    assert families["pgtenantproxy_reference_copies_shops"].samples[0].value == len(SHOPS)
    # a TRUNCATE empties every copy; the rows inserted after it arrive too
    await on_unified(lbed, "TRUNCATE device_models; INSERT INTO device_models (id, brand_id, model)"
                           " VALUES (1, 1, 'only')")
    assert (await sync.run_once()).ok
    for shop in SHOPS:
        assert await copy_rows(lbed, shop, MODELS) == [(1, 1, "only")]
    assert await lags(tenancy) == dict.fromkeys(SHOPS, 0.0)
    async with tenancy.pool.acquire() as conn:  # every change applied by every shop: pruned
        assert await conn.fetchval("SELECT count(*) FROM pgtenantproxy.reference_changes") == 0


async def test_the_size_guard_refuses_a_table_too_big(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    await on_unified(lbed, "INSERT INTO device_models (brand_id, model)"
                           " SELECT b, 'm' FROM generate_series(1, 4) b;"
                           "INSERT INTO catalog.staff (id, shop_id, name)"
                           " VALUES (2001, 8, 'a'), (2002, 8, 'b')")
    async with tenancy.pool.acquire() as conn:  # shop 7's copies are to be made again
        await conn.execute("DELETE FROM pgtenantproxy.reference_state WHERE shop_id = 7")
    small = ref_config(lbed, reference_max_rows=4)
    report = await ReferenceSync(tenancy, lambda: small).run_once()
    assert not report.ok
    errors = {(r.shop_id, r.table): r.error or "" for r in report}
    assert "public.device_models: unified holds 5 rows, more than [tenancy] reference_max_rows (4)" \
        in errors[(7, MODELS)]
    assert "public.device_models: its copy would hold 5 rows" in errors[(1, MODELS)]
    assert "catalog.staff: unified holds 5 rows for its largest shop" in errors[(7, STAFF)]
    assert "reference_max_rows" in report.table_errors[MODELS] and STAFF in report.table_errors
    lag = await lags(tenancy)
    assert 7 not in lag  # no copies: shop 7 may not use them
    assert 8 in lag and lag[8] > 0  # shop 8's copies were not refreshed past the limit: they lag
    report = await ReferenceSync(tenancy, lambda: tenancy.config).run_once()
    assert report.ok, report.errors()
    assert await lags(tenancy) == dict.fromkeys(SHOPS, 0.0)


async def test_verification_compares_the_copies(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    report = await verify_shops(tenancy, [4], config=tenancy.config)
    tables = {t.table: t for t in report.shops[0].tables}
    assert tables[MODELS].identical and tables[STAFF].identical, report.to_json()
    assert tables[STAFF].rows_tenant == tables[STAFF].rows_unified == 3
    shop_db = await lbed.shop_admin(4)
    try:
        await shop_db.execute("UPDATE device_models SET model = 'tampered' WHERE id = 1;"
                              "DELETE FROM catalog.staff WHERE id = 41")
    finally:
        await shop_db.close()
    await on_unified(lbed, "UPDATE device_models SET model = 'in flight' WHERE id = 2")  # not a difference
    report = await verify_shops(tenancy, [4], config=tenancy.config)
    tables = {t.table: t for t in report.shops[0].tables}
    assert tables[MODELS].status == "different" and tables[MODELS].keys["changed"].keys == ["[1]"]
    assert tables[STAFF].status == "different" and tables[STAFF].keys["missing"].keys == ["[41]"]


async def test_backfill_fills_the_shops_copies(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    async with tenancy.pool.acquire() as conn:
        await conn.execute("DELETE FROM pgtenantproxy.reference_state WHERE shop_id = 6")
    assert 6 not in await lags(tenancy)
    report = await backfill_shops(tenancy, [6], config=tenancy.config)
    assert report.ok, report
    assert (await lags(tenancy))[6] == 0.0
    assert await copy_rows(lbed, 6, STAFF) == await wanted(lbed, 6, STAFF)


async def test_the_cli_syncs_and_reports(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync], tmp_path: Path) -> None:
    path = lbed.write_config(tmp_path / "config.toml")
    with path.open("a") as f:
        for entry in REFERENCES:
            f.write("[[tenancy.reference_tables]]\n")
            f.write("".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items()))
    env = {**os.environ, **lbed.environ()}

    def cli(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "pgtenantproxy", "reference", *args, "--json",
                               "--config", str(path)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    await on_unified(lbed, "INSERT INTO device_models (brand_id, model) VALUES (7, 'by cli')")
    synced = await asyncio.to_thread(cli, "sync")
    assert synced["ok"] and {c["action"] for c in synced["copies"] if c["table"] == MODELS} == {REFRESHED}
    status = await asyncio.to_thread(cli, "status")
    assert status["tables"] == TABLES
    assert {(c["shop_id"], c["table"]) for c in status["copies"]} == {(s, t) for s in SHOPS for t in TABLES}
    assert not any(c["missing"] or c["pending"] for c in status["copies"])


async def test_definition_errors_name_the_table(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    broken = ref_config(lbed, [*REFERENCES, {"table": "plans", "columns": ["name"]},
                               {"table": "nowhere", "columns": ["id"]},
                               {"table": "branches", "columns": ["id", "shop_id"], "shop_column": "shop_id"}])
    report = await ReferenceSync(tenancy, lambda: broken).run_once([1])
    assert "public.plans: its primary key column(s) id are not listed" in report.table_errors["public.plans"]
    assert "public.nowhere: no such table" in report.table_errors["public.nowhere"]
    assert "public.branches: write capture is on for it as a tenant table" in \
        report.table_errors["public.branches"]
    assert {r.table for r in report if r.error is None} == set(TABLES)  # the others carry on
    found = await read_definitions(tenancy.pool, [ReferenceTable(STAFF, ("id", "nope"))])
    assert "catalog.staff: no column 'nope'" in str(found[STAFF])
    with pytest.raises(ConfigError, match=r"also listed in \[tenancy\] tenant_tables"):
        parse_config(lbed.config_data(tenancy={"reference_tables": REFERENCES,
                                               "tenant_tables": ["branches", "device_models"]}), environ={})


async def test_a_table_no_longer_listed_loses_its_copies_and_triggers(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, _ = ref
    only_models = ref_config(lbed, REFERENCES[:1])
    report = await ReferenceSync(tenancy, lambda: only_models).run_once()
    assert report.ok, report.errors()
    assert report.removed == [STAFF]
    assert {r.shop_id for r in report if r.table == STAFF and r.action == DROPPED} == set(SHOPS)
    conn = await lbed.shop_admin(2)
    try:
        assert await conn.fetchval("SELECT to_regclass('catalog.staff')") is None
    finally:
        await conn.close()
    async with tenancy.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'catalog.staff'::regclass"
                                   " AND tgname = ANY($1::text[])", list(TRIGGERS)) == 0
    assert await reference_lag(tenancy.pool, [MODELS]) == dict.fromkeys(SHOPS, 0.0)
    assert await lags(tenancy) == {}


async def test_a_table_that_is_not_a_copy_is_kept_on_a_shop_writing_on_its_own_database(
        lbed: MirrorBed, ref: tuple[TenancyService, ReferenceSync]) -> None:
    tenancy, sync = ref
    shop_db = await lbed.shop_admin(2)
    try:
        await shop_db.execute("DROP TABLE device_models; CREATE TABLE device_models (id integer PRIMARY KEY)")
    finally:
        await shop_db.close()
    async with tenancy.pool.acquire() as conn:
        await conn.execute("DELETE FROM pgtenantproxy.reference_state WHERE shop_id = 2")
        await force_phase(conn, 2, ph.TENANT_PRIMARY, reason="test")
    try:
        report = await sync.run_once([2])
        error = next(r.describe() for r in report if r.table == MODELS)
        assert error.startswith("shop 2: public.device_models: failed: the shop's database has a table "
                                "public.device_models that is not a reference copy")
        assert "(phase tenant_primary)" in error
        assert 2 not in await lags(tenancy)
    finally:
        async with tenancy.pool.acquire() as conn:
            await force_phase(conn, 2, ph.PROVISIONED, reason="test")
    report = await sync.run_once([2])
    assert report.ok and {r.action for r in report if r.table == MODELS} == {RECREATED}
