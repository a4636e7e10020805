"""The readiness report predicts every wrong read before retirement: statements the proxies refused (0A000)
while a shop was ``tenant_primary`` block its retirement, within ``[migration] readiness_window_s``.

The rows are written as the proxies write them: ``pgtenantproxy.dispatch.conflicts.UPSERT`` (kind
``refused``), through asyncpg against the real unified cluster. The module's bed: shops 1-6 backfilled
and moved to ``tenant_primary`` by ``force_phase`` (standing in for the cutover, as in test_retire.py);
every test starts with an empty recorder and uses shops of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pgtenantproxy.admin.actions import BadRequest, parse_retire
from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.conflicts import UPSERT
from pgtenantproxy.lifecycle.phases import PROVISIONED, RETIRED, TENANT_PRIMARY
from pgtenantproxy.migration.readiness import REFUSED, readiness
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.retire_report import BLOCKED, WOULD_RETIRE
from pgtenantproxy.migration.retire_report import RETIRED as RETIRED_STATUS
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import MirrorBed
from tests.integration.migration.backfill_helpers import phases
from tests.integration.migration.test_retire import audit_steps, primary, table_counts, unified_rows

PRIMARY = (1, 2, 3, 4, 5, 6)
MULTI_SHOP = ("fp-multi-shop-update", "UPDATE accounts SET balance = balance + $1 WHERE shop_id IN ($2, $3)")
TOO_MANY = ("fp-federated-read", "SELECT sum(balance) FROM accounts WHERE shop_id = ANY($1)")
NO_SHOP = ("fp-no-shop", "SELECT count(*) FROM accounts")


@pytest.fixture(scope="module")
def config(lbed: MirrorBed, tmp_path_factory: pytest.TempPathFactory) -> Config:
    return lbed.config(migration={"archive_dir": str(tmp_path_factory.mktemp("archive"))})


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, config: Config) -> AsyncIterator[TenancyService]:
    svc = await TenancyService.open(config, pool_size=12)
    try:
        await primary(lbed, svc, PRIMARY)
        yield svc
    finally:
        await svc.close()


@pytest.fixture(autouse=True)
async def empty_recorder(lbed: MirrorBed) -> None:
    await unified(lbed, "TRUNCATE pgtenantproxy.cutover_conflicts")


async def unified(lbed: MirrorBed, sql: str, *args: object) -> None:
    conn = await lbed.unified_admin()
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def refused(lbed: MirrorBed, shop: int, statement: tuple[str, str], count: int) -> None:
    """What a proxy's recorder flushes after refusing ``statement`` ``count`` times (shop -1: no shop)."""
    conn = await lbed.unified_admin()
    try:
        await conn.executemany(UPSERT, [(shop, REFUSED, statement[0], statement[1], count)])
    finally:
        await conn.close()


async def test_statements_refused_on_the_shop_block_its_retirement(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    await refused(lbed, 1, MULTI_SHOP, 3)
    await refused(lbed, 1, MULTI_SHOP, 2)  # a later flush adds to the count
    await refused(lbed, 1, TOO_MANY, 1)
    await refused(lbed, 2, NO_SHOP, 9)  # another shop's statement is not shop 1's
    before = await table_counts(lbed)
    report = await retire_shops(tenancy, [1], config=config)
    [shop] = report.shops
    assert shop.status == BLOCKED and not report.ok
    assert shop.reasons == [
        "2 kinds of statement (6 seen) touching shop 1 were refused by the proxies (0A000) in the last 24 h: "
        "they would be refused after its retirement too, when a rollback needs a restore first; "
        "see retire --shop 1 --check, or --force"]
    assert [(c.fingerprint, c.count) for c in shop.refused_statements] == [
        ("fp-multi-shop-update", 5), ("fp-federated-read", 1)]
    assert shop.verification is None  # the gate stopped before verifying
    assert await table_counts(lbed) == before and (await phases(lbed))[1] == TENANT_PRIMARY
    assert await audit_steps(lbed, 1, "retire") == []


async def test_a_statement_naming_no_shop_blocks_every_shop(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    await refused(lbed, -1, NO_SHOP, 7)
    report = await retire_shops(tenancy, [1, 2], config=config, dry_run=True)
    assert [s.status for s in report.shops] == [BLOCKED, BLOCKED]
    for shop in report.shops:
        assert f"1 kind of statement (7 seen) touching shop {shop.shop_id} were refused" in shop.reasons[0]
        assert [c.fingerprint for c in shop.refused_statements] == ["fp-no-shop"]


async def test_a_statement_refused_before_the_window_does_not_block(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    await refused(lbed, 3, MULTI_SHOP, 4)
    await refused(lbed, -1, NO_SHOP, 2)
    await unified(lbed, "UPDATE pgtenantproxy.cutover_conflicts SET last_seen = clock_timestamp()"
                        " - interval '20 minutes', first_seen = clock_timestamp() - interval '1 day'")
    within = await retire_shops(tenancy, [3], config=config, dry_run=True)  # the window: 24 h by default
    assert within.shops[0].status == BLOCKED
    short = lbed.config(migration={"archive_dir": config.migration.archive_dir, "readiness_window_s": 600})
    dry = await retire_shops(tenancy, [3], config=short, dry_run=True)
    assert dry.shops[0].status == WOULD_RETIRE and dry.shops[0].refused_statements == []
    report = await retire_shops(tenancy, [3], config=short)
    assert report.ok and report.shops[0].status == RETIRED_STATUS and not report.shops[0].forced
    assert (await phases(lbed))[3] == RETIRED
    assert "forced" not in {status for _, status in await audit_steps(lbed, 3, "retire")}


async def test_force_retires_past_refused_statements_and_audits_it(
    lbed: MirrorBed, tenancy: TenancyService, config: Config
) -> None:
    await refused(lbed, 4, MULTI_SHOP, 2)
    await refused(lbed, -1, NO_SHOP, 5)
    report = await retire_shops(tenancy, [4], config=config, force=True, actor="test")
    [shop] = report.shops
    assert shop.status == RETIRED_STATUS and report.ok, shop.as_dict()
    assert all(rows == [] for rows in (await unified_rows(lbed, 4)).values())
    assert (await phases(lbed))[4] == RETIRED
    assert shop.forced and [c["fingerprint"] for c in shop.as_dict()["refused_statements"]] == [
        "fp-no-shop", "fp-multi-shop-update"]
    assert "--force: 2 kinds of statement (7 seen) touching shop 4 were refused" in shop.warnings[0]
    steps = await audit_steps(lbed, 4, "retire")
    assert steps[:2] == [("gate", "forced"), ("started", "running")] and steps[-1] == ("done", "done")
    conn = await lbed.unified_admin()
    try:
        detail = await conn.fetchval("SELECT detail FROM pgtenantproxy.migration_log WHERE shop_id = 4"
                                     " AND action = 'retire' AND status = 'forced'")
    finally:
        await conn.close()
    assert detail == ("--force past 2 kinds of statement (7 seen) refused while it was tenant_primary, "
                      "refused once retired too: fp-no-shop x5, fp-multi-shop-update x2")


async def test_retire_check_lists_the_refused_statements(
    lbed: MirrorBed, tenancy: TenancyService, config: Config, tmp_path: Path
) -> None:
    await refused(lbed, 5, MULTI_SHOP, 12)
    await refused(lbed, -1, NO_SHOP, 1)
    archive = config.migration.archive_dir
    path = lbed.write_config(tmp_path / "config.toml", migration={"archive_dir": archive})
    env = {**os.environ, **lbed.environ(), "COLUMNS": "400"}  # no table cell wraps

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pgtenantproxy", "retire", *args, "--config", str(path)]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    before = await table_counts(lbed)
    check = await asyncio.to_thread(cli, "--shop", "5", "--check")
    assert check.returncode == 1, check.stderr
    out = check.stdout
    assert "blocked" in out and "see retire --shop 5 --check, or --force" in out
    assert "shop 5: refused (0A000) while it was tenant_primary, and would be refused after" in out
    for fingerprint, sample in (MULTI_SHOP, NO_SHOP):
        assert fingerprint in out and sample in out
    assert "12" in out and "last seen" in out
    as_json = await asyncio.to_thread(cli, "--shop", "5", "--check", "--json")
    data = json.loads(as_json.stdout)
    assert data["dry_run"] and data["blocked"] == [5]
    statements = data["shops"][0]["refused_statements"]
    assert [(s["fingerprint"], s["sample"], s["count"]) for s in statements] == [
        (*MULTI_SHOP, 12), (*NO_SHOP, 1)]
    assert all(s["last_seen"] and s["kind"] == REFUSED for s in statements)
    forced = await asyncio.to_thread(cli, "--shop", "5", "--check", "--force")
    assert forced.returncode == 0, forced.stdout
    assert "shop 5: would retire with --force past these statements" in forced.stdout
    assert await table_counts(lbed) == before and (await phases(lbed))[5] == TENANT_PRIMARY


async def test_the_readiness_report_shows_refused_statements_without_gating_the_cutover(
    lbed: MirrorBed, tenancy: TenancyService
) -> None:
    await refused(lbed, 6, TOO_MANY, 3)
    await refused(lbed, -1, NO_SHOP, 2)
    report = await readiness(tenancy.pool, [6, 7], window_s=86400)
    cut_over, other = report[6], report[7]
    assert (await phases(lbed))[7] == PROVISIONED
    assert cut_over.ready and not cut_over.retirable  # 'refused' gates retirement, never the cutover
    assert [c.fingerprint for c in cut_over.refused] == ["fp-federated-read", "fp-no-shop"]  # most seen first
    assert cut_over.refused_lines()[0].startswith("would be refused after retirement too: 3 seen, last ")
    assert cut_over.refused_lines()[0].endswith(f"fp-federated-read: {TOO_MANY[1]}")
    assert cut_over.as_dict()["refused"][0]["count"] == 3 and cut_over.as_dict()["retirable"] is False
    assert other.ready and other.refused == [] and other.conflicts == []  # only tenant_primary shops


def test_the_admin_api_takes_force_for_retirement() -> None:
    assert parse_retire({"shop_ids": [4], "force": True}) == ([4], False, True)
    assert parse_retire({"all": True, "dry_run": True}) == (None, True, False)
    with pytest.raises(BadRequest, match="force must be true or false"):
        parse_retire({"shop_ids": [4], "force": "yes"})
