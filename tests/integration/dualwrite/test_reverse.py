"""Reverse mirroring: shop 3 in ``tenant_primary`` writes to its tenant database; unified follows.

The module puts shop 3 where a cutover leaves it (reverse capture on its tenant
database, the tenant's sequences past unified's ids, phase ``tenant_primary``,
unified's write fence closed) and writes to the tenant database directly as the
shop's own role; the reverse worker of a running :class:`DualWriteService`
keeps unified identical. At the end the shop goes back (phase ``mirroring``,
reverse capture removed, fence opened, rows reset).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pgtenantproxy.dualwrite import fence
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle.phases import MIRRORING, TENANT_PRIMARY
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.tenancy.registry import TenantCredentials
from tests.integration.dualwrite.bed import HERE, MirrorBed, differences

SHOP = 3
SEQUENCES_FROM = 100_000  # what a cutover does: the tenant's ids start past unified's


async def tenant_sql(bed: MirrorBed, sql: str, *args: object) -> Any:
    conn = await bed.shop_admin(SHOP)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def unified_sql(bed: MirrorBed, sql: str, *args: object) -> Any:
    conn = await bed.unified_admin()
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def primary(bed: MirrorBed) -> AsyncIterator[DualWriteService]:
    """Shop 3 cut over (as far as mirroring is concerned), the service running both workers."""
    svc = await DualWriteService.open(bed.config(), run_worker=True)
    try:
        assert len(await svc.install_reverse(SHOP)) == 6
        assert len(await svc.install_reverse(SHOP)) == 6  # idempotent
        await tenant_sql(bed, "SELECT count(setval(pg_get_serial_sequence(t, 'id'), $1)) FROM unnest("
                              "ARRAY['branches', 'tellers', 'accounts', 'history', 'categories']) t",
                         SEQUENCES_FROM)
        conn = await bed.unified_admin()
        try:
            await force_phase(conn, SHOP, TENANT_PRIMARY, reason="test: reverse mirroring")
            await fence.close(conn, SHOP, reason="test: cut over")
        finally:
            await conn.close()
        await svc.start()
        yield svc
    finally:
        await svc.close()
        conn = await bed.unified_admin()
        try:
            await force_phase(conn, SHOP, MIRRORING, reason="test: reverse mirroring done")
            await fence.open_(conn, SHOP)
        finally:
            await conn.close()
        async with await DualWriteService.open(bed.config(), run_worker=True) as cleanup:
            await cleanup.remove_reverse(SHOP)
        await bed.reset()


@pytest.fixture(scope="module")
async def creds(primary: DualWriteService) -> TenantCredentials:
    return await primary.tenancy.registry.get(SHOP)


@pytest.fixture
async def tenant(creds: TenantCredentials) -> AsyncIterator[asyncpg.Connection]:
    """The shop's own role on its tenant database (what the proxy uses after the cutover)."""
    conn = await asyncpg.connect(**creds.connect_kwargs())
    try:
        yield conn
    finally:
        await conn.close()


async def forward_entries(bed: MirrorBed) -> int:
    return int(await unified_sql(bed, "SELECT count(*) FROM pgtenantproxy.outbox WHERE shop_id = $1", SHOP))


async def test_tenant_writes_reach_unified_and_unified_captures_none_of_them(
    bed: MirrorBed, primary: DualWriteService, tenant: asyncpg.Connection
) -> None:
    async with tenant.transaction():
        account, spare = [r["id"] for r in await tenant.fetch(
            "INSERT INTO accounts (shop_id, branch_id, balance, number)"
            " VALUES (3, 3, 7, 'r-1'), (3, 3, 8, 'r-2') RETURNING id")]
        assert account > SEQUENCES_FROM
        teller = await tenant.fetchval("INSERT INTO tellers (shop_id, branch_id) VALUES (3, 3) RETURNING id")
        await tenant.execute("INSERT INTO history (shop_id, account_id, teller_id, delta)"
                             " VALUES (3, $1, $2, 5), (3, 101, $2, 6)", account, teller)
        await tenant.execute("INSERT INTO account_tags (shop_id, account_id, tag) VALUES (3, $1, 'new'),"
                             " (3, 101, 'vip')", account)
        root = await tenant.fetchval("INSERT INTO categories (shop_id, name) VALUES (3, 'r') RETURNING id")
        await tenant.execute("INSERT INTO categories (shop_id, parent_id, name) VALUES (3, $1, 'c')", root)
    await tenant.execute("UPDATE accounts SET balance = balance + 100, labels = labels || 'rev'::text"
                         " WHERE shop_id = 3 AND id BETWEEN 101 AND 120")
    await tenant.execute("UPDATE branches SET name = 'renamed on the tenant' WHERE id = 3")
    await tenant.execute("DELETE FROM accounts WHERE id = $1", spare)  # no children
    await tenant.execute("DELETE FROM accounts WHERE id = $1", account)  # cascades: history, tags
    await tenant.execute("DELETE FROM tellers WHERE id = $1", teller)  # SET NULL on history.teller_id
    await tenant.execute("DELETE FROM categories WHERE id = $1", root)  # cascades to its child

    assert await primary.wait_reverse_drained(SHOP, timeout_s=60)
    assert await differences(bed, (SHOP,)) == {}
    assert await forward_entries(bed) == 0  # the mirror's writes to unified were not captured there
    assert await unified_sql(bed, "SELECT name FROM branches WHERE id = 3") == "renamed on the tenant"
    assert await unified_sql(bed, "SELECT count(*) FROM accounts WHERE id = ANY($1::int[])",
                             [account, spare]) == 0
    assert await unified_sql(bed, "SELECT count(*) FROM history WHERE account_id = 101 AND teller_id IS NULL")
    assert primary.reverse_stats.totals["mirrored"] > 0
    pending = await primary.reverse_pending(SHOP)
    assert pending.drained and not pending.degraded


async def test_a_key_held_by_another_shop_is_retried_then_dead_lettered_in_the_tenant_database(
    bed: MirrorBed, primary: DualWriteService, tenant: asyncpg.Connection
) -> None:
    before = await unified_sql(bed, "SELECT to_jsonb(c)::text FROM categories c WHERE id = 1")
    await tenant.execute("INSERT INTO categories (id, shop_id, name) VALUES (1, 3, 'clash')")  # shop 1's id
    for _ in range(600):  # bounded: 4 tries with 0.1-0.4 s delays
        pending = await primary.reverse_pending(SHOP)
        if pending.dead_letters:
            break
        await asyncio.sleep(0.05)
    assert pending.dead_letters == 1 and pending.entries == 0 and pending.degraded
    error = await tenant_sql(bed, "SELECT error FROM pgtenantproxy.dead_letters WHERE tbl = $1",
                             "public.categories")
    assert "held by another shop's rows" in str(error)
    assert await tenant_sql(bed, "SELECT attempts FROM pgtenantproxy.dead_letters") == 4
    assert await unified_sql(bed, "SELECT to_jsonb(c)::text FROM categories c WHERE id = 1") == before
    assert not await primary.wait_reverse_drained(SHOP, timeout_s=0.2)

    await tenant.execute("DELETE FROM categories WHERE id = 1")  # the repair (shop 1's row is not touched)
    await tenant_sql(bed, "DELETE FROM pgtenantproxy.dead_letters")
    await tenant_sql(bed, "DELETE FROM pgtenantproxy.mirror_state")
    assert await primary.wait_reverse_drained(SHOP, timeout_s=60)
    assert await unified_sql(bed, "SELECT to_jsonb(c)::text FROM categories c WHERE id = 1") == before
    assert await differences(bed, (SHOP,)) == {}


@pytest.mark.slow
async def test_unified_converges_under_pgbench_on_the_tenant_database(
    bed: MirrorBed, primary: DualWriteService, creds: TenantCredentials, tmp_path: Path
) -> None:
    script = (HERE / "tpcb.pgbench").read_text().replace("\\set shop random(1, 20)", f"\\set shop {SHOP}")
    assert f"\\set shop {SHOP}" in script
    (tmp_path / "shop.pgbench").write_text(script)
    env = {**os.environ, "PGHOST": creds.host, "PGPORT": str(creds.port), "PGUSER": creds.user,
           "PGPASSWORD": creds.password, "PGDATABASE": creds.database}
    proc = await asyncio.create_subprocess_exec(
        str(bed.tenant.bindir / "pgbench"), "-n", "-T", "4", "-c", "3", "-j", "1", "-M", "prepared",
        "-f", str(tmp_path / "shop.pgbench"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "\nnumber of failed transactions: 0 (" in text, text
    assert await primary.wait_reverse_drained(SHOP, timeout_s=120)
    assert await differences(bed, (SHOP,)) == {}
    assert await forward_entries(bed) == 0


async def test_removing_reverse_capture_stops_it(
    bed: MirrorBed, primary: DualWriteService, tenant: asyncpg.Connection
) -> None:
    removed = await primary.remove_reverse(SHOP)
    assert len(removed) == 6
    await tenant.execute("UPDATE branches SET name = 'not mirrored' WHERE id = 3")
    assert (await primary.reverse_pending(SHOP)).entries == 0  # capture is synchronous: nothing queued
    assert await unified_sql(bed, "SELECT name FROM branches WHERE id = 3") != "not mirrored"
    assert set(await differences(bed, (SHOP,))) == {(SHOP, "branches")}
