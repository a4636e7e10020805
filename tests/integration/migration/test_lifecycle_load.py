"""The whole lifecycle under continuous pgbench load through two proxy instances (20 shops).

Backfill every shop, reads to the tenant databases, then, with pgbench writing
to all 20 shops through both proxies (TPC-B-like transactions, BEGIN ... END,
one shop each): cut over every shop, roll one back (writes, then reads), with
zero failed transactions. Afterwards both sides are identical (forward and
reverse mirroring drained), and one shop is retired and restored identically.
The write pause of each cutover is printed (measured, not asserted).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgtenantproxy.dualwrite.reverse import connect_tenant_admin, reverse_pending, wait_reverse_drained
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import CutoverContext, cutover_shops
from pgtenantproxy.migration.cutover_report import DONE
from pgtenantproxy.migration.drain import wait_drained
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.rollback import rollback_shops
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.app import AppThread, wait_until
from tests.integration.dualwrite.bed import DATABASE, SHOPS, MirrorBed, differences
from tests.integration.migration.test_phases import app_config

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("lifecycle.pgbench")
SETTINGS: dict[str, dict[str, Any]] = {
    "routing": {"strategy": "tenant"},
    "migration": {"fence_timeout_ms": 5000, "ack_timeout_ms": 2000, "keeper_interval_ms": 100},
}


@pytest.fixture(scope="module")
def proxies(lbed: MirrorBed) -> Iterator[tuple[AppThread, AppThread]]:
    """Two proxy instances; the first runs the mirror (both directions) and the phase keeper."""
    with AppThread(app_config(lbed, **SETTINGS), mirror=True) as first, \
            AppThread(app_config(lbed, **SETTINGS)) as second:
        yield first, second


@pytest.fixture(scope="module")
async def tenancy(lbed: MirrorBed, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TenancyService]:
    archive = {"archive_dir": str(tmp_path_factory.mktemp("archive"))}
    config = lbed.config(routing=SETTINGS["routing"], migration={**SETTINGS["migration"], **archive})
    async with await TenancyService.open(config, pool_size=8) as service:
        yield service


async def pgbench(lbed: MirrorBed, port: int, seconds: int) -> str:
    args = [str(lbed.unified.bindir / "pgbench"), "-n", "-T", str(seconds), "-c", "2", "-j", "1",
            "-M", "simple", "-f", str(SCRIPT), DATABASE]
    proc = await asyncio.create_subprocess_exec(
        *args, env=lbed.pgbench_env(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "\nnumber of failed transactions: 0 (" in text, text
    return text


async def phases(tenancy: TenancyService) -> dict[int, str]:
    return {shop: r.phase for shop, r in (await read_phases(tenancy.pool)).items()}


async def test_the_whole_lifecycle_under_load_through_two_proxies(
    lbed: MirrorBed, proxies: tuple[AppThread, AppThread], tenancy: TenancyService
) -> None:
    first, second = proxies
    assert (await backfill_shops(tenancy, None, wait=True)).ok
    assert await asyncio.to_thread(wait_until, lambda: asyncio.run(_all_in(lbed, ph.READS_ON_TENANT)),
                                   timeout=30, interval=0.2)

    async def operate() -> list[Any]:
        await asyncio.sleep(2.0)
        report = await cutover_shops(tenancy, None, percentage=100, actor="test")
        await asyncio.sleep(1.0)
        ctx = CutoverContext(tenancy, tenancy.config, actor="test")
        back = await rollback_shops(ctx, [1])  # writes back to unified...
        back += await rollback_shops(ctx, [1])  # ...then reads
        return [report, back]

    loads = [pgbench(lbed, app.port, 14) for app in (first, second)]
    *outputs, (report, back) = await asyncio.gather(*loads, operate())
    assert [s.status for s in report.shops] == [DONE] * len(SHOPS), report.as_dict()
    assert [(r.status, r.phase) for r in back] == [(DONE, ph.READS_ON_TENANT), (DONE, ph.MIRRORING)]
    pauses = report.as_dict()["pause_ms"]
    print(f"\ncutover write pause over {len(SHOPS)} shops under load: P50 {pauses['p50']} ms, "
          f"P99 {pauses['p99']} ms, max {pauses['max']} ms")
    for text in outputs:
        print(next(line for line in text.splitlines() if line.startswith("number of transactions actually")))

    now = await phases(tenancy)
    assert now[1] == ph.MIRRORING and {now[s] for s in SHOPS if s != 1} == {ph.TENANT_PRIMARY}
    for shop in SHOPS:
        assert await wait_drained(tenancy.pool, shop, timeout_s=60), f"shop {shop}: mirror not drained"
    for shop in SHOPS[1:]:
        tenant = await connect_tenant_admin(tenancy.registry, tenancy.servers, shop)
        try:
            drained = await wait_reverse_drained(tenant, shop, timeout_s=60)
            assert drained, (shop, await reverse_pending(tenant, shop))
        finally:
            await tenant.close()
    assert await differences(lbed) == {}

    dry = await retire_shops(tenancy, [2], dry_run=True)
    assert dry.dry_run and (await phases(tenancy))[2] == ph.TENANT_PRIMARY
    assert (await retire_shops(tenancy, [2])).ok
    assert (await phases(tenancy))[2] == ph.RETIRED
    await restore_shop(tenancy, 2)
    assert (await phases(tenancy))[2] == ph.TENANT_PRIMARY
    assert await differences(lbed, (2,)) == {}


async def _all_in(lbed: MirrorBed, phase: str) -> bool:
    conn = await lbed.unified_admin()
    try:
        return {r.phase for r in (await read_phases(conn)).values()} == {phase}
    finally:
        await conn.close()
