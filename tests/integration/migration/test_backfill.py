"""Backfill through the API: refusals, every shop copied exactly, sequences, checkpoints, audit, re-runs."""

from __future__ import annotations

from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.phases import BACKFILLED, PROVISIONED, UNIFIED
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.migration import checkpoints
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.progress import CHUNK, ESTIMATE, SHOP_DONE, SHOP_STARTED, ProgressEvent
from tests.integration.dualwrite.bed import SHOPS, TABLES, MirrorBed, differences
from tests.integration.migration.backfill_helpers import control_plane, phases, tenant_insert_ids


async def tenant_rows(bed: MirrorBed, shop_id: int) -> int:
    conn = await bed.shop_admin(shop_id)
    try:
        return sum([int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES])
    finally:
        await conn.close()


async def test_backfill_refuses_while_write_capture_is_off_and_changes_nothing(lbed: MirrorBed) -> None:
    svc = await DualWriteService.open(lbed.config(), run_worker=False)
    try:
        await svc.disable()
        async with control_plane(lbed) as tenancy:
            report = await backfill_shops(tenancy, [3])
    finally:
        await svc.enable()
        await svc.close()
    [result] = report.shops
    assert result.status == "refused" and not report.ok
    detail = result.detail or ""
    assert "public.accounts" in detail and "pgtenantproxy dual-write enable" in detail
    assert (await phases(lbed))[3] == PROVISIONED
    assert await tenant_rows(lbed, 3) == 0


async def test_backfill_refuses_a_shop_still_in_unified(lbed: MirrorBed) -> None:
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, 4, UNIFIED, reason="test")
        async with control_plane(lbed) as tenancy:
            report = await backfill_shops(tenancy, [4])
        await force_phase(conn, 4, PROVISIONED, reason="test")
    finally:
        await conn.close()
    [result] = report.shops
    assert result.status == "refused"
    assert "shop 4 is in phase unified" in (result.detail or "") and "provisioned" in (result.detail or "")
    assert await tenant_rows(lbed, 4) == 0


async def test_backfill_all_copies_every_shop_exactly_and_moves_sequences_past_the_ids(
    lbed: MirrorBed,
) -> None:
    events: list[ProgressEvent] = []
    async with control_plane(lbed) as tenancy:
        report = await backfill_shops(tenancy, None, jobs=4, progress=events.append)
        progress = await checkpoints.shop_progress(tenancy.pool)
    assert report.ok, report.as_dict()
    assert sorted(s.shop_id for s in report.shops) == list(SHOPS)
    assert {s.status for s in report.shops} == {"backfilled"}
    assert report.rows == sum(s.rows for s in report.shops) > 20 * 56
    assert await differences(lbed) == {}
    assert set((await phases(lbed)).values()) == {BACKFILLED}
    kinds = {e.kind for e in events}
    assert {ESTIMATE, SHOP_STARTED, CHUNK, SHOP_DONE} <= kinds
    estimated = sum(e.rows_total for e in events if e.kind == ESTIMATE)
    assert estimated == report.rows == sum(e.rows for e in events if e.kind == CHUNK)
    assert all(p.done and p.rows_copied == p.rows_total for p in progress.values()) and len(progress) == 20
    unified = await lbed.unified_admin()
    try:
        top = {t: int(await unified.fetchval(f"SELECT max(id) FROM {t}")) for t in ("branches", "accounts")}
        log = await unified.fetch("SELECT status FROM pgtenantproxy.migration_log WHERE action = 'backfill'"
                                  " AND step = 'copy' AND shop_id = 7 ORDER BY id")
    finally:
        await unified.close()
    assert [r["status"] for r in log] == ["started", "done"]
    ids = await tenant_insert_ids(lbed, 7)
    assert ids["branches"] > top["branches"] and ids["accounts"] > top["accounts"] and ids["history"] >= 1


async def test_a_second_run_says_done_already_and_copies_nothing(lbed: MirrorBed) -> None:
    async with control_plane(lbed) as tenancy:
        report = await backfill_shops(tenancy, [1, 2])
        everyone = await backfill_shops(tenancy, None)
    assert report.ok and {s.status for s in report.shops} == {"done_already"} and report.rows == 0
    assert everyone.shops == []


async def test_a_backfill_after_a_rollback_to_provisioned_starts_afresh(lbed: MirrorBed) -> None:
    shop_id = 5
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, shop_id, PROVISIONED, reason="test: roll back")
        await conn.execute("UPDATE accounts SET note = 'changed since' WHERE shop_id = $1", shop_id)
    finally:
        await conn.close()
    async with control_plane(lbed) as tenancy:
        report = await backfill_shops(tenancy, [shop_id])
    assert [s.status for s in report.shops] == ["backfilled"] and report.shops[0].tables == len(TABLES)
    assert await differences(lbed, (shop_id,)) == {}
