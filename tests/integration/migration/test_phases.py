"""The per-shop state machine against the control schema: fenced moves, refusals, the keeper, two proxies.

Shops start in ``provisioned`` (:func:`conftest.fresh_start`). The keeper runs
inside a proxy app with write mirroring (``AppThread(mirror=True)``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import IllegalTransition, PhaseConflict
from pgtenantproxy.lifecycle.store import force_phase, read_phase, transition
from tests.fixtures.app import TEST_LISTEN, AppThread, wait_until
from tests.integration.dualwrite.bed import MirrorBed


def app_config(bed: MirrorBed, **sections: dict[str, Any]) -> Any:
    merged: dict[str, dict[str, Any]] = {name: dict(values) for name, values in TEST_LISTEN.items()}
    merged["admin"]["enabled"] = False
    merged["migration"] = {"keeper_interval_ms": 100}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return bed.config(**merged)


def phase_in(app: AppThread, shop: int) -> str:
    assert app.app is not None and app.app.runtime is not None
    return app.app.runtime.catalog.snapshot.phase(shop).phase


async def test_a_move_is_fenced_by_version_and_audited(lbed: MirrorBed) -> None:
    conn = await lbed.unified_admin()
    try:
        before = await read_phase(conn, 2)
        assert before.phase == ph.PROVISIONED
        moved = await transition(conn, 2, ph.BACKFILLING, expect_version=before.version, actor="test")
        assert (moved.phase, moved.version, moved.actor) == (ph.BACKFILLING, before.version + 1, "test")
        with pytest.raises(PhaseConflict, match="shop 2 changed phase meanwhile"):
            await transition(conn, 2, ph.PROVISIONED, expect_version=before.version)
        with pytest.raises(IllegalTransition, match="shop 2 is in phase backfilling, not provisioned"):
            await transition(conn, 2, ph.BACKFILLING, expect={ph.PROVISIONED})
        failed = await transition(conn, 2, ph.FAILED, reason="tenant server down")
        assert (failed.resume_phase, failed.reason) == (ph.BACKFILLING, "tenant server down")
        back = await transition(conn, 2, ph.PROVISIONED, reason="abandoned")
        assert (back.phase, back.resume_phase) == (ph.PROVISIONED, None)
        log = await conn.fetch(
            "SELECT step, actor FROM pgtenantproxy.migration_log WHERE shop_id = 2 AND action = 'phase'"
            " ORDER BY id")
        assert [r["step"] for r in log][-3:] == [
            "provisioned -> backfilling", "backfilling -> failed", "failed -> provisioned"]
        assert log[-3]["actor"] == "test"
    finally:
        await conn.close()


async def test_reads_before_mirroring_are_refused(lbed: MirrorBed, tmp_path: Path) -> None:
    conn = await lbed.unified_admin()
    try:
        with pytest.raises(IllegalTransition, match="tenant reads need the shop in mirroring"):
            await transition(conn, 3, ph.READS_ON_TENANT)
        assert (await read_phase(conn, 3)).phase == ph.PROVISIONED
    finally:
        await conn.close()
    config = lbed.write_config(tmp_path / "config.toml")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pgtenantproxy", "reads", "activate", "--shop", "3", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "shop 3 is in phase provisioned; it cannot read from its tenant database" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def two_apps(lbed: MirrorBed) -> Iterator[tuple[AppThread, AppThread]]:
    """Two proxy instances; the periodic catalog refresh is a minute away, so only NOTIFY is fast."""
    slow = {"catalog_refresh_ms": 60000}
    first = AppThread(app_config(lbed, routing=slow), mirror=True)
    second = AppThread(app_config(lbed, routing=slow))
    with first, second:
        yield first, second


async def test_two_proxies_see_a_transition_within_a_second(
    lbed: MirrorBed, two_apps: tuple[AppThread, AppThread]
) -> None:
    conn = await lbed.unified_admin()
    try:
        await force_phase(conn, 4, ph.MIRRORING, reason="test")
        for app in two_apps:
            assert wait_until(lambda app=app: phase_in(app, 4) == ph.MIRRORING, timeout=1.0)  # type: ignore[misc]
        await transition(conn, 4, ph.PROVISIONED, reason="test: back")
        for app in two_apps:
            assert wait_until(lambda app=app: phase_in(app, 4) == ph.PROVISIONED, timeout=1.0)  # type: ignore[misc]
            assert app.app is not None and app.app.runtime is not None
            assert 4 not in app.app.runtime.catalog.snapshot.ready
    finally:
        await conn.close()


async def test_the_keeper_moves_shops_by_mirror_health_and_strategy(lbed: MirrorBed) -> None:
    config = app_config(lbed, routing={"strategy": "shop-list", "shop_ids": [6]})
    conn = await lbed.unified_admin()
    try:
        for shop in (6, 7):
            await force_phase(conn, shop, ph.BACKFILLED, reason="test: as if backfilled")
        with AppThread(config, mirror=True) as app:
            assert wait_until(lambda: phase_in(app, 6) == ph.READS_ON_TENANT, timeout=10)
            assert wait_until(lambda: phase_in(app, 7) == ph.MIRRORING, timeout=10)
            await conn.execute(
                "INSERT INTO pgtenantproxy.mirror_state (shop_id, degraded, cause, reason, degraded_at)"
                " VALUES (7, true, 'dead_letters', 'test: one dead letter', now())"
                " ON CONFLICT (shop_id) DO UPDATE SET degraded = true, cause = 'dead_letters',"
                " reason = 'test: one dead letter'")
            assert wait_until(lambda: phase_in(app, 7) == ph.DEGRADED, timeout=10)
            record = await read_phase(conn, 7)
            assert (record.resume_phase, record.reason) == (
                ph.MIRRORING, "mirror degraded: dead_letters: test: one dead letter")
            await conn.execute("UPDATE pgtenantproxy.mirror_state SET degraded = false, cause = NULL"
                               " WHERE shop_id = 7")
            assert wait_until(lambda: phase_in(app, 7) == ph.MIRRORING, timeout=10)
        rows = await conn.fetch("SELECT step FROM pgtenantproxy.migration_log"
                                " WHERE shop_id = 6 AND action = 'keeper' ORDER BY id")
        steps = [r["step"] for r in rows]
        assert steps == ["backfilled -> mirroring", "mirroring -> reads_on_tenant"]
    finally:
        for shop in (6, 7):
            await force_phase(conn, shop, ph.PROVISIONED, reason="test: reset")
        await conn.close()


async def test_the_phase_command_shows_history_and_moves_by_the_rules(lbed: MirrorBed, tmp_path: Path) -> None:
    config = lbed.write_config(tmp_path / "config.toml")

    def phase(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgtenantproxy", "phase", "--shop", "8", *args,
                               "--config", str(config)], capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "COLUMNS": "200"})

    refused = await asyncio.to_thread(phase, "--set", "mirroring", "--reason", "skip ahead")
    assert refused.returncode == 1 and "cannot move to mirroring" in refused.stderr, refused.stderr
    moved = await asyncio.to_thread(phase, "--set", "backfilling", "--reason", "test: by hand")
    assert moved.returncode == 0, moved.stderr
    assert "shop 8: backfilling" in moved.stdout and "provisioned -> backfilling" in moved.stdout
    forced = await asyncio.to_thread(phase, "--set", "provisioned", "--reason", "test: repair", "--force")
    assert forced.returncode == 0 and "phase force" in forced.stdout, forced.stdout
    missing = await asyncio.to_thread(phase, "--set", "provisioned")
    assert missing.returncode == 2 and "--set needs --reason" in missing.stderr
