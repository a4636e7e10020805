"""Retirement and restore against real clusters: dry run, the gate (phase, verification), archive
checksums, retire then restore (identical rows), a restore refused because the tenant moved on, and
``--all`` (pg_dump of the whole tables, TRUNCATE) last.

The module's bed: the seed rows plus history and account_tags rows, shops backfilled into their tenant
databases, then moved to ``tenant_primary`` by ``force_phase`` (standing in for the cutover). Reverse
capture, which restore installs in a tenant database, is removed again at the end so the next module's
reset can truncate the tenant tables.
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

from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle.phases import MIRRORING, RETIRED, TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration.archive import ArchiveError, shop_dir
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.retire_all import pg_dump_path
from pgtenantproxy.migration.retire_report import BLOCKED, WOULD_RETIRE
from pgtenantproxy.migration.retire_report import RETIRED as RETIRED_STATUS
from pgtenantproxy.migration.reverse_link import remove_reverse_capture, reverse_capture_installed
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import SHOPS, TABLES, MirrorBed, differences, shop_rows
from tests.integration.migration.backfill_helpers import phases

EXTRA_ROWS = """
SET pgtenantproxy.mirror_apply = on;
INSERT INTO history (shop_id, account_id, teller_id, delta)
    SELECT a.shop_id, a.id, (a.shop_id - 1) * 5 + 1, a.id % 7 FROM accounts a WHERE a.id % 5 = 0;
INSERT INTO account_tags (shop_id, account_id, tag)
    SELECT a.shop_id, a.id, t FROM accounts a, unnest(ARRAY['blue', 'red']) t WHERE a.id % 3 = 0;
INSERT INTO categories (shop_id, parent_id, name) SELECT shop_id, id, 'child' FROM categories;
RESET pgtenantproxy.mirror_apply;
"""
FIRST = (1, 2, 3, 4, 5, 6)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="module")
def config(lbed: MirrorBed, archive_dir: Path) -> Config:
    return lbed.config(migration={"archive_dir": str(archive_dir)})


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, config: Config) -> AsyncIterator[TenancyService]:
    conn = await lbed.unified_admin()
    try:
        await conn.execute(EXTRA_ROWS)
    finally:
        await conn.close()
    svc = await TenancyService.open(config, pool_size=12)
    try:
        await primary(lbed, svc, FIRST)
        yield svc
    finally:
        await svc.close()
        await _remove_reverse_capture(lbed)


async def primary(lbed: MirrorBed, tenancy: TenancyService, shops: tuple[int, ...]) -> None:
    """Backfill ``shops`` and move them to ``tenant_primary`` (as a cutover would)."""
    report = await backfill_shops(tenancy, list(shops), wait=True)
    assert report.ok, report.as_dict()
    conn = await lbed.unified_admin()
    try:
        for shop in shops:
            await force_phase(conn, shop, TENANT_PRIMARY, reason="stands in for the cutover")
    finally:
        await conn.close()
    assert await differences(lbed, shops) == {}


async def _remove_reverse_capture(lbed: MirrorBed) -> None:
    for shop in SHOPS:
        conn = await lbed.shop_admin(shop)
        try:
            await remove_reverse_capture(conn)
        finally:
            await conn.close()


async def unified_rows(lbed: MirrorBed, shop: int) -> dict[str, list[str]]:
    conn = await lbed.unified_admin()
    try:
        return {t: await shop_rows(conn, t, shop) for t in TABLES}
    finally:
        await conn.close()


async def table_counts(lbed: MirrorBed) -> dict[str, int]:
    conn = await lbed.unified_admin()
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


async def on_tenant(lbed: MirrorBed, shop: int, sql: str, *args: Any) -> Any:
    conn = await lbed.shop_admin(shop)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def audit_steps(lbed: MirrorBed, shop: int, action: str) -> list[tuple[str, str]]:
    conn = await lbed.unified_admin()
    try:
        rows = await conn.fetch("SELECT step, status FROM pgtenantproxy.migration_log"
                                " WHERE shop_id = $1 AND action = $2 ORDER BY id", shop, action)
        return [(r["step"], r["status"]) for r in rows]
    finally:
        await conn.close()


async def test_dry_run_prints_the_plan_and_changes_nothing(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, archive_dir: Path
) -> None:
    before, phases_before = await table_counts(lbed), await phases(lbed)
    report = await retire_shops(tenancy, [1, 2], config=config, dry_run=True)
    assert report.ok and report.dry_run
    assert [s.status for s in report.shops] == [WOULD_RETIRE, WOULD_RETIRE]
    one = report.shops[0]
    assert one.rows == {f"public.{t}": len(rows) for t, rows in (await unified_rows(lbed, 1)).items()}
    assert one.rows["public.accounts"] == 50 and one.rows["public.history"] > 0
    assert one.verification is not None and one.verification.startswith("identical")
    assert await table_counts(lbed) == before
    assert await phases(lbed) == phases_before
    assert await asyncio.to_thread(lambda: list(archive_dir.iterdir())) == []


async def test_a_shop_not_in_tenant_primary_is_blocked(tenancy: TenancyService, config: Config) -> None:
    report = await retire_shops(tenancy, [7], config=config)
    [shop] = report.shops
    assert shop.status == BLOCKED and not report.ok
    assert "phase provisioned" in shop.reasons[0] and "tenant_primary" in shop.reasons[0]


async def test_retire_then_restore_gives_identical_rows(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, archive_dir: Path
) -> None:
    want = await unified_rows(lbed, 2)
    others = await unified_rows(lbed, 1)
    report = await retire_shops(tenancy, [2], config=config)
    [shop] = report.shops
    assert shop.status == RETIRED_STATUS, shop.as_dict()
    assert shop.total_rows == sum(len(r) for r in want.values()) and shop.bytes > 0
    assert (await phases(lbed))[2] == RETIRED
    assert all(rows == [] for rows in (await unified_rows(lbed, 2)).values())
    assert await unified_rows(lbed, 1) == others  # only the shop's rows left
    files = sorted(p.name for p in shop_dir(archive_dir, 2).iterdir())
    assert files == sorted([f"public.{t}.copy" for t in TABLES] + ["manifest.json"])
    assert ("archived", "done") in await audit_steps(lbed, 2, "retire")

    result = await restore_shop(tenancy, 2, config=config)
    assert result.total_rows == shop.total_rows
    assert await unified_rows(lbed, 2) == want
    assert await differences(lbed, (2,)) == {}
    assert (await phases(lbed))[2] == TENANT_PRIMARY
    conn = await lbed.shop_admin(2)
    try:
        assert await reverse_capture_installed(conn)
    finally:
        await conn.close()
    assert [s for s, _ in await audit_steps(lbed, 2, "restore")] == [
        "started", "loaded", "caught up", "retired -> tenant_primary", "done"]


async def test_the_verify_gate_blocks_a_shop_with_one_changed_row(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, archive_dir: Path
) -> None:
    want = await unified_rows(lbed, 3)
    await on_tenant(lbed, 3, "UPDATE accounts SET balance = balance + 1 WHERE id = 105")
    try:
        report = await retire_shops(tenancy, [3], config=config)
    finally:
        await on_tenant(lbed, 3, "UPDATE accounts SET balance = balance - 1 WHERE id = 105")
    [shop] = report.shops
    assert shop.status == BLOCKED
    assert "verification" in shop.reasons[0] and "public.accounts: 1 changed" in shop.reasons[0]
    assert await unified_rows(lbed, 3) == want
    assert (await phases(lbed))[3] == TENANT_PRIMARY
    assert not shop_dir(archive_dir, 3).exists()


async def test_a_damaged_archive_is_refused_by_restore(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, archive_dir: Path
) -> None:
    want = await unified_rows(lbed, 4)
    assert (await retire_shops(tenancy, [4], config=config)).ok
    path = shop_dir(archive_dir, 4) / "public.accounts.copy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    damaged = r"damaged: public\.accounts\.copy has sha256 .*nothing was changed"
    with pytest.raises(ArchiveError, match=damaged):
        await restore_shop(tenancy, 4, config=config)
    assert all(rows == [] for rows in (await unified_rows(lbed, 4)).values())
    assert (await phases(lbed))[4] == RETIRED
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    await restore_shop(tenancy, 4, config=config)
    assert await unified_rows(lbed, 4) == want


async def test_restore_catches_up_with_what_the_tenant_wrote_after_retirement(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    assert (await retire_shops(tenancy, [5], config=config)).ok
    await on_tenant(lbed, 5, "UPDATE branches SET name = 'renamed after retirement' WHERE shop_id = 5")
    await on_tenant(lbed, 5, "DELETE FROM account_tags WHERE shop_id = 5")
    await on_tenant(lbed, 5, "INSERT INTO categories (shop_id, name) VALUES (5, 'new after retirement')")
    restored = await restore_shop(tenancy, 5, config=config)
    assert restored.caught_up >= 3, restored.as_dict()
    assert (await phases(lbed))[5] == TENANT_PRIMARY
    assert await differences(lbed, (5,)) == {}
    names = [r for r in (await unified_rows(lbed, 5))["branches"] if "renamed after retirement" in r]
    assert names, "the tenant's rename did not reach unified"


async def test_the_cli_dry_run_prints_json_and_restore_refuses_a_shop_not_retired(
    lbed: MirrorBed, archive_dir: Path, tmp_path: Path
) -> None:
    path = lbed.write_config(tmp_path / "config.toml", migration={"archive_dir": str(archive_dir)})
    env = {**os.environ, **lbed.environ()}
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pgtenantproxy", *args, "--config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    dry = await asyncio.to_thread(cli, "retire", "--shop", "3", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert data["dry_run"] and data["would_retire"] == [3]
    assert data["shops"][0]["rows"]["public.accounts"] == 50
    refused = await asyncio.to_thread(cli, "restore", "--shop", "3")
    assert refused.returncode == 2
    assert "shop 3 is in phase tenant_primary; only a retired shop is restored" in refused.stderr


async def test_retire_all_dumps_and_truncates_once_every_shop_is_retired(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    await primary(lbed, tenancy, tuple(s for s in SHOPS if s not in FIRST))
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, 6, MIRRORING, reason="one shop not cut over yet")
    finally:
        await conn.close()
    partial = await retire_shops(tenancy, None, config=config, dry_run=True)
    assert not partial.every_shop_retired and partial.dump is None
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, 6, TENANT_PRIMARY, reason="cut over")
    finally:
        await conn.close()
    want = await unified_rows(lbed, 1)

    report = await retire_shops(tenancy, None, config=config)
    assert report.ok, report.as_dict()
    assert report.every_shop_retired and len(report.with_status(RETIRED_STATUS)) == len(SHOPS)
    assert report.dump is not None and report.truncated == [f"public.{t}" for t in _order(report.truncated)]
    assert set(await table_counts(lbed)) == set(TABLES) and not any((await table_counts(lbed)).values())
    assert set((await phases(lbed)).values()) == {RETIRED}
    pg_restore = str(Path(pg_dump_path()).with_name("pg_restore"))
    listing = (await asyncio.to_thread(subprocess.run, [pg_restore, "--list", report.dump.path],
                                       capture_output=True, text=True, check=True)).stdout
    assert all(f"TABLE DATA public {t}" in listing for t in TABLES)
    await restore_shop(tenancy, 1, config=config)  # the per-shop archives still work after --all
    assert await unified_rows(lbed, 1) == want


def _order(labels: list[str]) -> list[str]:
    return [label.removeprefix("public.") for label in labels]
