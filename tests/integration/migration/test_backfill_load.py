"""Backfill of all 20 shops while pgbench writes to them through the proxy: every shop ends identical."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from pgtenantproxy.lifecycle.phases import MIRRORING
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.backfill_report import BackfillReport
from pgtenantproxy.migration.verify import verify_shops
from tests.fixtures.proxy import ProxyThread, proxy_config
from tests.integration.dualwrite.bed import DATABASE, SHOPS, MirrorBed, differences, run_pgbench, table_count
from tests.integration.migration.backfill_helpers import control_plane, following_mirror, phases

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_proxy(lbed: MirrorBed) -> Iterator[ProxyThread]:
    with ProxyThread(proxy_config(lbed.unified, unified={"database": DATABASE})) as proxy:
        yield proxy


async def test_backfill_all_under_pgbench_through_the_proxy_ends_identical(
    lbed: MirrorBed, app_proxy: ProxyThread
) -> None:
    history_before = await table_count(lbed, "history")
    async with following_mirror(lbed) as mirror, control_plane(lbed) as tenancy:

        async def backfill() -> BackfillReport:
            await asyncio.sleep(1.5)  # the load is running by then
            during = await table_count(lbed, "history")
            report = await backfill_shops(tenancy, None, jobs=4, throttle=3000, wait=True)
            assert await table_count(lbed, "history") > during, "no write happened during the backfill"
            return report

        _, report = await asyncio.gather(
            run_pgbench(lbed, seconds=8, clients=3, port=app_proxy.port), backfill()
        )
        assert await mirror.wait_drained(timeout_s=60)
        dead = mirror.stats.snapshot()["dead_lettered"]
        verification = await verify_shops(tenancy, None)
    assert verification.identical and verification.status == "identical", verification.as_dict()
    assert sorted(s.shop_id for s in verification.shops) == list(SHOPS)
    assert report.ok, report.as_dict()
    assert sorted(s.shop_id for s in report.shops) == list(SHOPS)
    assert await table_count(lbed, "history") > history_before + 100
    assert dead == 0
    assert await differences(lbed) == {}
    assert set((await phases(lbed)).values()) == {MIRRORING}
