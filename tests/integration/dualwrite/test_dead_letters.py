"""A tenant table broken for good: retries, dead letters, the shop degraded, replay after the repair."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from pgtenantproxy.dualwrite import dlq
from pgtenantproxy.dualwrite.service import DualWriteService
from tests.integration.dualwrite.bed import MirrorBed, differences


async def cli(bed: MirrorBed, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pgtenantproxy", *args, "--config", str(config)],
        env={**os.environ, **bed.environ(), "COLUMNS": "200"}, capture_output=True, text=True, timeout=120,
    )


async def shop_admin_sql(bed: MirrorBed, shop_id: int, sql: str) -> None:
    conn = await bed.shop_admin(shop_id)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def wait_for(predicate_coro, *, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate_coro():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def write_shop_3_and_4(bed: MirrorBed) -> None:
    app = await bed.app()
    try:
        for i in range(3):
            async with app.transaction():
                await app.execute("INSERT INTO account_tags (shop_id, account_id, tag) VALUES (3, 101, $1)",
                                  f"broken{i}")
                await app.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 102")  # innocent
                await app.execute("UPDATE branches SET balance = balance + 1 WHERE id = 3")  # innocent
                await app.execute("UPDATE accounts SET labels = labels || 'x'::text WHERE id = 160")  # shop 4
                await app.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 251")  # shop 6
    finally:
        await app.close()


async def test_broken_tables_dead_letter_their_entries_only_and_degrade_the_shop_until_replayed(
    bed: MirrorBed, mirror: DualWriteService, tmp_path: Path
) -> None:
    config = bed.write_config(tmp_path / "config.toml")
    await shop_admin_sql(bed, 3, "REVOKE INSERT, UPDATE, DELETE ON account_tags FROM shop_user_3")
    await shop_admin_sql(bed, 4, "ALTER TABLE accounts RENAME COLUMN labels TO labels_gone")
    await write_shop_3_and_4(bed)
    assert await mirror.wait_drained(timeout_s=30)  # nothing stays queued: applied or dead-lettered

    letters = await dlq.list_dead_letters(mirror.tenancy.pool)
    assert {(d.shop_id, d.table) for d in letters} == {(3, "public.account_tags"), (4, "public.accounts")}
    assert all(d.attempts == 4 for d in letters)  # the first try and 3 retries
    assert any("permission denied" in d.error for d in letters if d.shop_id == 3)
    assert any("labels" in d.error for d in letters if d.shop_id == 4)
    assert mirror.stats.totals["retried"] > 0 and mirror.stats.totals["dead_lettered"] == len(letters)
    await mirror.status.poll()
    assert mirror.status.degraded(3) and mirror.status.degraded(4) and not mirror.status.degraded(6)
    assert not mirror.status.readable(3) and mirror.status.readable(6)
    # Innocent entries of the same shop and the same batches were applied.
    diffs = await differences(bed, (3, 4, 6))
    assert set(diffs) == {(3, "account_tags"), (4, "accounts")}, diffs

    listed = await cli(bed, config, "dlq", "list", "--shop", "3")
    assert listed.returncode == 0, listed.stderr
    assert "public.account_tags" in listed.stdout and "permission denied" in listed.stdout
    assert "public.accounts" not in listed.stdout  # shop 4's are not listed for shop 3

    # Replayed before the repair: they fail again and come back. Nothing is dropped.
    replayed = await cli(bed, config, "dlq", "replay", "--shop", "3")
    assert replayed.returncode == 0, replayed.stderr
    assert "3 dead letters of shop 3 moved back" in replayed.stdout
    await wait_for(lambda: _dead_count(mirror, 3, 3))

    await shop_admin_sql(bed, 3, "GRANT INSERT, UPDATE, DELETE ON account_tags TO shop_user_3")
    await shop_admin_sql(bed, 4, "ALTER TABLE accounts RENAME COLUMN labels_gone TO labels")
    replayed = await cli(bed, config, "dlq", "replay", "--shop", "3")
    assert replayed.returncode == 0, replayed.stderr
    async with mirror.tenancy.pool.acquire() as conn:
        assert await dlq.replay(conn) == 3  # every shop left: shop 4's (three entries of one key)
    assert await mirror.wait_drained(timeout_s=30)
    assert await dlq.list_dead_letters(mirror.tenancy.pool) == []
    assert await differences(bed, (3, 4, 6)) == {}
    await mirror.status.poll()
    assert not mirror.status.degraded(3) and not mirror.status.degraded(4)


async def _dead_count(mirror: DualWriteService, shop_id: int, expected: int) -> bool:
    return len(await dlq.list_dead_letters(mirror.tenancy.pool, shop_id)) == expected
