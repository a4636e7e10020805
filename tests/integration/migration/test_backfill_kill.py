"""The CLI: a backfill killed (SIGKILL) mid-table resumes without duplicates; throttle; --wait; refusals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from pgtenantproxy.lifecycle.phases import BACKFILLING, MIRRORING
from pgtenantproxy.migration import checkpoints
from tests.integration.dualwrite.bed import MirrorBed, differences
from tests.integration.migration.backfill_helpers import following_mirror, phases

SHOP = 9
EXTRA_ROWS = 20000
pytestmark = pytest.mark.slow


def command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pgtenantproxy", "--log-level", "warning", "backfill", "--config",
            str(config), *args]


async def run_cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command(config, *args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def big_shop(lbed: MirrorBed) -> MirrorBed:
    """Shop 9 with 20k more history rows (written around capture: the outbox stays empty)."""
    conn = await lbed.unified_admin()
    try:
        await conn.execute("SET pgtenantproxy.mirror_apply = on")
        await conn.execute(
            "INSERT INTO history (shop_id, account_id, teller_id, delta)"
            " SELECT $1, 401, 41, g % 1000 FROM generate_series(1, $2) g", SHOP, EXTRA_ROWS,
        )
    finally:
        await conn.close()
    return lbed


async def copying_history(bed: MirrorBed) -> checkpoints.Checkpoint | None:
    conn = await bed.unified_admin()
    try:
        mark = (await checkpoints.read(conn, SHOP)).get("public.history")
    finally:
        await conn.close()
    return mark if mark is not None and mark.status == checkpoints.COPYING and mark.rows_copied > 0 else None


async def backfill_connections(bed: MirrorBed) -> int:
    conn = await bed.unified_admin()
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtenantproxy-backfill'"))
    finally:
        await conn.close()


async def test_a_backfill_killed_mid_table_resumes_without_duplicates(
    big_shop: MirrorBed, tmp_path: Path
) -> None:
    config = big_shop.write_config(tmp_path / "config.toml")
    proc = await asyncio.create_subprocess_exec(
        *command(config, "--shop", str(SHOP), "--throttle", "4000", "--no-wait"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    mark = None
    for _ in range(600):
        mark = await copying_history(big_shop)
        if mark is not None or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    assert mark is not None, "the backfill never got into the history table"
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert (await phases(big_shop))[SHOP] == BACKFILLING
    tenant = await big_shop.shop_admin(SHOP)
    try:  # the killed table's transaction was rolled back on the tenant; earlier tables are committed
        assert await tenant.fetchval("SELECT count(*) FROM history") == 0
        assert await tenant.fetchval("SELECT count(*) FROM branches") == 1
    finally:
        await tenant.close()
    for _ in range(100):  # the server notices the dead client and releases its locks
        if await backfill_connections(big_shop) == 0:
            break
        await asyncio.sleep(0.05)

    status, out, err = await run_cli(
        config, "--shop", str(SHOP), "--throttle", "50000", "--no-wait", "--json"
    )
    assert status == 0, err
    [result] = json.loads(out)["shops"]
    assert result["status"] == "backfilled" and result["rows"] >= EXTRA_ROWS
    assert json.loads(out)["throttle_rows_per_s"] == 50000
    assert await differences(big_shop, (SHOP,)) == {}
    conn = await big_shop.unified_admin()
    try:
        progress = (await checkpoints.shop_progress(conn, [SHOP]))[SHOP]
    finally:
        await conn.close()
    assert progress.done and progress.rows_copied == progress.rows_total > EXTRA_ROWS


async def test_the_cli_waits_for_the_mirror_and_moves_the_shop_to_mirroring(
    big_shop: MirrorBed, tmp_path: Path
) -> None:
    config = big_shop.write_config(tmp_path / "config.toml")
    async with following_mirror(big_shop):
        app = await big_shop.app()
        try:
            (status, out, err), _ = await asyncio.gather(
                run_cli(config, "--shop", "10", "--shop", "11", "--jobs", "2", "--json"),
                app.execute("UPDATE accounts SET note = 'during' WHERE shop_id IN (10, 11)"),
            )
        finally:
            await app.close()
    assert status == 0, err
    shops = json.loads(out)["shops"]
    assert [(s["shop_id"], s["status"], s["drained"]) for s in shops] == [(10, MIRRORING, True),
                                                                        (11, MIRRORING, True)]
    current = await phases(big_shop)
    assert current[10] == current[11] == MIRRORING
    assert await differences(big_shop, (10, 11)) == {}


async def test_the_cli_reports_a_refusal_with_exit_status_1_and_no_traceback(
    big_shop: MirrorBed, tmp_path: Path
) -> None:
    config = big_shop.write_config(tmp_path / "config.toml")
    status, out, err = await run_cli(config, "--shop", "10", "--shop", "12345", "--no-wait")
    assert status == 1
    assert "Traceback" not in out + err
    assert "done_already" in out and "refused" in out
