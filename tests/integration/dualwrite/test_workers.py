"""``pgtenantproxy mirror`` processes: killed mid-drain and restarted, two at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.dualwrite.bed import SHOPS, TABLES, MirrorBed, differences, mirror_command, run_pgbench

LEDGER = """
CREATE TABLE IF NOT EXISTS mirror_ledger (
    txid bigint NOT NULL, pid integer NOT NULL, at timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION mirror_ledger() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO public.mirror_ledger VALUES (txid_current(), pg_backend_pid(), clock_timestamp());
    RETURN NULL;
END
$$;
"""
#: Pairs of applying transactions on one shop whose [first write, commit] intervals overlap.
OVERLAPS = """
WITH tx AS (
    SELECT txid, min(at) AS started,
           pg_xact_commit_timestamp(((txid % 4294967296)::text)::xid) AS committed
    FROM mirror_ledger GROUP BY txid)
SELECT count(*) FROM tx a JOIN tx b ON a.txid < b.txid AND a.started < b.committed AND b.started < a.committed
"""


@pytest.fixture(scope="module")
async def ledger(bed: MirrorBed) -> AsyncIterator[None]:
    """Every applying transaction on a shop database leaves (txid, backend pid, time) in a ledger.

    BEFORE STATEMENT: the time is taken before the statement waits for any row lock, so two
    transactions that write the same shop at the same time show overlapping intervals.
    """
    for shop_id in SHOPS:
        conn = await bed.shop_admin(shop_id)
        try:
            await conn.execute(LEDGER)
            for table in TABLES:
                await conn.execute(
                    f"CREATE TRIGGER mirror_ledger BEFORE INSERT OR UPDATE OR DELETE ON {table}"
                    " FOR EACH STATEMENT EXECUTE FUNCTION mirror_ledger()"
                )
        finally:
            await conn.close()
    yield
    for shop_id in SHOPS:
        conn = await bed.shop_admin(shop_id)
        try:
            for table in TABLES:
                await conn.execute(f"DROP TRIGGER mirror_ledger ON {table}")
            await conn.execute("DROP TABLE mirror_ledger; DROP FUNCTION mirror_ledger()")
        finally:
            await conn.close()


@contextmanager
def worker_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(mirror_command(config), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def outbox_size(bed: MirrorBed) -> int:
    conn = await bed.unified_admin()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pgtenantproxy.outbox"))
    finally:
        await conn.close()


async def applied_entries(bed: MirrorBed) -> int:
    conn = await bed.unified_admin()
    try:
        total = await conn.fetchval("SELECT sum(applied_entries) FROM pgtenantproxy.mirror_state")
        return int(total or 0)
    finally:
        await conn.close()


async def wait_until(check, *, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 30)


@pytest.mark.slow
async def test_a_worker_killed_mid_drain_loses_nothing(bed: MirrorBed, ledger: None, tmp_path: Path) -> None:
    await run_pgbench(bed, seconds=4, clients=3)  # no worker yet: a backlog builds up
    backlog = await outbox_size(bed)
    assert backlog > 500
    slow = bed.write_config(tmp_path / "slow.toml", dual_write={"batch_size": 10, "concurrency": 1})
    log = tmp_path / "worker.log"
    before = await applied_entries(bed)
    with worker_process(slow, log) as proc:
        await wait_until(lambda: _progressed(bed, before + 100), timeout_s=60)
        proc.kill()  # SIGKILL, in the middle of a batch or between two
        proc.wait(10)
    left = await outbox_size(bed)
    assert 0 < left < backlog, "the kill was meant to land mid-drain"
    normal = bed.write_config(tmp_path / "normal.toml")
    with worker_process(normal, log) as proc:
        await wait_until(lambda: _drained(bed), timeout_s=90)
        assert await stop(proc) == 0, log.read_text()
    assert await differences(bed) == {}


@pytest.mark.slow
async def test_two_workers_at_once_converge_and_never_apply_one_shop_concurrently(
    bed: MirrorBed, ledger: None, tmp_path: Path
) -> None:
    for shop_id in SHOPS:
        conn = await bed.shop_admin(shop_id)
        try:
            await conn.execute("TRUNCATE mirror_ledger")
        finally:
            await conn.close()
    config = bed.write_config(tmp_path / "config.toml", dual_write={"batch_size": 50, "concurrency": 4})
    log = tmp_path / "workers.log"
    with worker_process(config, log) as first, worker_process(config, log) as second:
        await run_pgbench(bed, seconds=5, clients=4)
        await wait_until(lambda: _drained(bed), timeout_s=90)
        assert await stop(first) == 0 and await stop(second) == 0, log.read_text()
    assert await differences(bed) == {}
    overlaps, pids = 0, set()
    for shop_id in SHOPS:
        conn = await bed.shop_admin(shop_id)
        try:
            overlaps += int(await conn.fetchval(OVERLAPS))
            pids |= {r["pid"] for r in await conn.fetch("SELECT DISTINCT pid FROM mirror_ledger")}
        finally:
            await conn.close()
    assert len(pids) >= 2  # both workers applied
    assert overlaps == 0


async def _progressed(bed: MirrorBed, target: int) -> bool:
    return await applied_entries(bed) >= target


async def _drained(bed: MirrorBed) -> bool:
    return await outbox_size(bed) == 0
