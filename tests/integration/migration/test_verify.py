"""Verification against real clusters: identical shops, rows changed, missing and extra behind the
mirror's back, a composite key, many small ranges, and continuous writes (no false alarm).

The module's bed: the seed rows (plus history and account_tags rows) in unified, mirrored into every
tenant by a running mirror worker (a "touch" of every row goes through capture), every shop in phase
``mirroring``. Tests that damage a tenant repair it before they end.
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

import pytest

from pgtenantproxy.dualwrite.catalog import read_tables
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.phases import MIRRORING, PROVISIONED
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration import checksums as cs
from pgtenantproxy.migration.keyranges import boundaries, ranges
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.migration.verify_report import ShopVerification, TableVerification, VerificationReport
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import SHOPS, TABLES, MirrorBed, run_pgbench

EXTRA_ROWS = """
INSERT INTO history (shop_id, account_id, teller_id, delta)
    SELECT a.shop_id, a.id, (a.shop_id - 1) * 5 + 1, a.id % 7 FROM accounts a WHERE a.id % 5 = 0;
INSERT INTO account_tags (shop_id, account_id, tag)
    SELECT a.shop_id, a.id, t FROM accounts a, unnest(ARRAY['blue', 'red']) t WHERE a.id % 3 = 0;
"""


@pytest.fixture(scope="module")
async def mirror(lbed: MirrorBed) -> AsyncIterator[DualWriteService]:
    """Every row mirrored, the worker left running, every shop in ``mirroring``."""
    svc = await DualWriteService.open(lbed.config(), run_worker=True)
    try:
        conn = await lbed.unified_admin()
        try:
            await conn.execute(EXTRA_ROWS)
            for table in TABLES:  # a touch: every row through capture, so the worker copies it
                await conn.execute(f"UPDATE {table} SET shop_id = shop_id")
            for shop in SHOPS:
                await force_phase(conn, shop, MIRRORING, reason="verification tests")
        finally:
            await conn.close()
        await svc.start()
        assert await svc.wait_drained(timeout_s=60)
        yield svc
    finally:
        await svc.close()


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, mirror: DualWriteService) -> AsyncIterator[TenancyService]:
    svc = await TenancyService.open(lbed.config(), pool_size=12)
    try:
        yield svc
    finally:
        await svc.close()


async def verify(tenancy: TenancyService, lbed: MirrorBed, shops: list[int] | None,
                 **migration: Any) -> VerificationReport:
    return await verify_shops(tenancy, shops, config=lbed.config(migration=migration))


def table_of(shop: ShopVerification, label: str) -> TableVerification:
    return next(t for t in shop.tables if t.table == label)


async def on_tenant(lbed: MirrorBed, shop_id: int, sql: str, *args: Any) -> Any:
    """Run ``sql`` in the shop's tenant database as its server's admin (behind the mirror's back)."""
    conn = await lbed.shop_admin(shop_id)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def unified_value(lbed: MirrorBed, sql: str, *args: Any) -> Any:
    conn = await lbed.unified_admin()
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def run_cli(lbed: MirrorBed, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = lbed.write_config(tmp_path / "config.toml", migration={"verify_rechecks": 1})
    return subprocess.run(
        [sys.executable, "-m", "pgtenantproxy", "verify", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False,
    )


async def test_every_mirrored_shop_verifies_identical_and_is_audited(
    lbed: MirrorBed, tenancy: TenancyService
) -> None:
    report = await verify(tenancy, lbed, None)
    assert [s.shop_id for s in report.shops] == list(SHOPS)
    assert report.identical and report.status == "identical", report.to_json()
    shop = report.shops[6]
    assert {t.table for t in shop.tables} == {f"public.{t}" for t in TABLES}
    assert table_of(shop, "public.accounts").rows_unified == 50
    tags = table_of(shop, "public.account_tags")
    assert tags.rows_tenant == tags.rows_unified > 0
    assert all(t.rows_unified == t.rows_tenant for t in shop.tables)
    assert shop.drained and not shop.degraded
    logged = await unified_value(
        lbed, "SELECT count(*) FROM pgtenantproxy.migration_log"
              " WHERE action = 'verify' AND status = 'identical' AND detail LIKE '6 tables%'")
    assert logged >= len(SHOPS)


async def test_cli_json_reports_identical_and_exits_zero(lbed: MirrorBed, mirror: DualWriteService,
                                                         tmp_path: Path) -> None:
    done = await asyncio.to_thread(run_cli, lbed, tmp_path, "--shop", "2", "--shop", "5", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert data["identical"] is True and [s["shop_id"] for s in data["shops"]] == [2, 5]
    assert data["shops"][0]["tables"][0]["missing"] == {"count": 0, "keys": []}


async def test_a_row_changed_in_a_tenant_database_is_reported_with_its_key(
    lbed: MirrorBed, tenancy: TenancyService, tmp_path: Path
) -> None:
    account = await unified_value(lbed, "SELECT min(id) + 17 FROM accounts WHERE shop_id = 3")
    await on_tenant(lbed, 3, "UPDATE accounts SET balance = balance + 1 WHERE id = $1", account)
    try:
        report = await verify(tenancy, lbed, [3], verify_rechecks=1)
        shop = report.shops[0]
        assert shop.status == "different" and not report.identical
        accounts = table_of(shop, "public.accounts")
        assert accounts.keys["changed"].keys == [f"[{account}]"]
        assert accounts.count("missing") == accounts.count("extra") == 0
        assert accounts.differing_ranges.count == 1 and accounts.rechecks == 1
        assert [t.status for t in shop.tables if t.table != "public.accounts"] == ["identical"] * 5
        done = await asyncio.to_thread(run_cli, lbed, tmp_path, "--shop", "3")
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"public.accounts changed: [{account}]" in done.stdout and "different" in done.stdout
    finally:
        await on_tenant(lbed, 3, "UPDATE accounts SET balance = balance - 1 WHERE id = $1", account)
    assert (await verify(tenancy, lbed, [3])).identical


async def test_a_missing_row_and_an_extra_row_are_reported(lbed: MirrorBed, tenancy: TenancyService) -> None:
    teller = await unified_value(lbed, "SELECT max(id) FROM tellers WHERE shop_id = 4")
    saved = await on_tenant(lbed, 4, "DELETE FROM tellers t WHERE id = $1 RETURNING to_jsonb(t)::text",
                            teller)
    extra = await on_tenant(lbed, 4, "INSERT INTO categories (id, shop_id, name)"
                                     " VALUES (90004, 4, 'sneaked in') RETURNING id")
    try:
        shop = (await verify(tenancy, lbed, [4], verify_rechecks=1)).shops[0]
        tellers, categories = table_of(shop, "public.tellers"), table_of(shop, "public.categories")
        assert tellers.keys["missing"].keys == [f"[{teller}]"]
        assert tellers.rows_tenant == tellers.rows_unified - 1
        assert categories.keys["extra"].keys == [f"[{extra}]"]
        assert categories.rows_tenant == categories.rows_unified + 1
        assert shop.total("changed") == 0 and shop.status == "different"
        assert "1 missing; 1 extra" in shop.summary()
    finally:
        await on_tenant(lbed, 4, "DELETE FROM categories WHERE id = $1", extra)
        await on_tenant(lbed, 4, "INSERT INTO tellers SELECT * FROM jsonb_populate_record(NULL::tellers, $1)",
                        saved)
    assert (await verify(tenancy, lbed, [4])).identical


async def test_composite_keys_over_many_small_ranges(lbed: MirrorBed, tenancy: TenancyService) -> None:
    tags = await unified_value(
        lbed, "SELECT jsonb_agg(jsonb_build_array(account_id, tag) ORDER BY account_id, tag)::text"
              " FROM account_tags WHERE shop_id = 6")
    changed, gone = json.loads(tags)[5], json.loads(tags)[20]
    await on_tenant(lbed, 6, "UPDATE account_tags SET added_at = added_at - interval '1 day'"
                             " WHERE account_id = $1 AND tag = $2", *changed)
    saved = await on_tenant(lbed, 6, "DELETE FROM account_tags t WHERE account_id = $1 AND tag = $2"
                                     " RETURNING to_jsonb(t)::text", *gone)
    try:
        shop = (await verify(tenancy, lbed, [6], verify_chunk_rows=3, verify_rechecks=1)).shops[0]
        tagged = table_of(shop, "public.account_tags")
        assert tagged.ranges == tagged.rows_unified // 3 + 1  # the last range is open-ended
        assert tagged.differing_ranges.count == 2
        assert tagged.keys["changed"].keys == [json.dumps(changed)]
        assert tagged.keys["missing"].keys == [json.dumps(gone)]
        accounts = table_of(shop, "public.accounts")
        assert accounts.ranges == 50 // 3 + 1 and accounts.status == "identical"
    finally:
        await on_tenant(lbed, 6, "UPDATE account_tags SET added_at = added_at + interval '1 day'"
                                 " WHERE account_id = $1 AND tag = $2", *changed)
        await on_tenant(lbed, 6, "INSERT INTO account_tags SELECT * FROM jsonb_populate_record("
                                 "NULL::account_tags, $1)", saved)
    assert (await verify(tenancy, lbed, [6], verify_chunk_rows=3)).identical


async def test_shops_without_a_tenant_copy_are_refused_or_skipped(
    lbed: MirrorBed, tenancy: TenancyService, tmp_path: Path
) -> None:
    done = await asyncio.to_thread(run_cli, lbed, tmp_path, "--shop", "999")
    assert done.returncode == 2 and "shop 999 is in phase unified" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, 20, PROVISIONED, reason="verification tests")
        report = await verify(tenancy, lbed, None)
        assert 20 not in [s.shop_id for s in report.shops] and len(report.shops) == len(SHOPS) - 1
        assert [s.phase for s in (await verify(tenancy, lbed, [20])).shops] == [PROVISIONED]
    finally:
        await force_phase(conn, 20, MIRRORING, reason="verification tests")
        await conn.close()


async def test_no_false_alarm_under_continuous_writes(
    lbed: MirrorBed, tenancy: TenancyService, mirror: DualWriteService
) -> None:
    async def verify_while_writing() -> VerificationReport:
        await asyncio.sleep(1.0)  # pgbench is running by now
        return await verify(tenancy, lbed, None, verify_chunk_rows=20, jobs=10)

    _, report = await asyncio.gather(run_pgbench(lbed, seconds=5, clients=3), verify_while_writing())
    assert report.identical, report.to_json()
    assert all(s.drained for s in report.shops)
    assert await mirror.wait_drained(timeout_s=60)
    assert (await verify(tenancy, lbed, None, verify_rechecks=0)).identical


async def test_a_tenant_database_that_cannot_be_read_is_an_error(
    lbed: MirrorBed, tenancy: TenancyService
) -> None:
    await on_tenant(lbed, 8, "ALTER TABLE history RENAME COLUMN delta TO delta_renamed")
    try:
        shop = (await verify(tenancy, lbed, [8])).shops[0]
        assert shop.status == "error" and not shop.identical
        history = table_of(shop, "public.history")
        assert history.status == "error" and "delta" in (history.error or "")
        assert table_of(shop, "public.accounts").status == "identical"
    finally:
        await on_tenant(lbed, 8, "ALTER TABLE history RENAME COLUMN delta_renamed TO delta")


async def test_the_checksum_pass_cuts_the_same_ranges_as_keyranges_boundaries(
    lbed: MirrorBed, tenancy: TenancyService
) -> None:
    async with tenancy.pool.acquire() as conn:
        tables = await read_tables(conn)
        for label in ("public.account_tags", "public.accounts"):
            for every in (1, 3, 7, 1000):
                total, keys = await boundaries(conn, tables[label], 6, every)
                cut, sums = await cs.unified_pass(conn, tables[label], 6, every)
                assert cut == ranges(keys) and len(sums) == len(cut)
                assert sum(n for n, _ in sums) == total > 0
                assert all(n == every for n, _ in sums[:-1]) and sums[-1][0] == total % every
