"""Failures during provisioning leave nothing behind; concurrent provisions of one shop make one
database; leftovers of an interrupted run are cleared; objects pgtenantproxy did not create are
never touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.tenancy.errors import UnknownTenantError
from pgtenantproxy.tenancy.provisioning import ALREADY, STEPS
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import TenancyBed


@pytest.fixture(scope="module")
async def svc(bed: TenancyBed) -> AsyncIterator[TenancyService]:
    service = await bed.service()
    try:
        yield service
    finally:
        await service.close()


async def server_objects(bed: TenancyBed, shop_id: int) -> list[str]:
    """Every database or role named after the shop, on every tenant server."""
    found = []
    for name, cluster in zip(("t1", "t2"), bed.tenants, strict=True):
        conn = await asyncpg.connect(**cluster.connect_kwargs())
        try:
            dbs = await conn.fetch("SELECT datname FROM pg_database WHERE datname = $1", f"shop_{shop_id}_db")
            roles = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = $1", f"shop_user_{shop_id}"
            )
        finally:
            await conn.close()
        found += [f"{name}:{r[0]}" for r in [*dbs, *roles]]
    return found


@pytest.mark.parametrize("step", STEPS)
async def test_failure_at_each_step_leaves_nothing_behind(
    bed: TenancyBed, svc: TenancyService, step: str
) -> None:
    shop_id = 100 + STEPS.index(step)
    outcome = await svc.provision(shop_id, fail_at=step)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.startswith(f"{step}: InjectedFailure")
    assert "cleanup incomplete" not in outcome.error
    assert await server_objects(bed, shop_id) == []
    assert (
        await svc.pool.fetchval(
            "SELECT count(*) FROM pgtenantproxy.tenant_credentials WHERE shop_id = $1", shop_id
        )
        == 0
    )
    svc.registry.invalidate()
    with pytest.raises(UnknownTenantError):
        await svc.credentials(shop_id)
    row = await svc.pool.fetchrow(
        "SELECT state, step, error FROM pgtenantproxy.tenant_provisions WHERE shop_id = $1", shop_id
    )
    assert (row["state"], row["step"], row["error"]) == ("failed", step, outcome.error)
    logged = await svc.pool.fetch(
        "SELECT step, status FROM pgtenantproxy.migration_log WHERE shop_id = $1 ORDER BY id", shop_id
    )
    assert [(r["step"], r["status"]) for r in logged][-1] == (step, "failed")
    # Nothing left in the way: the next attempt succeeds.
    retry = await svc.provision(shop_id)
    assert retry.status == "provisioned", retry.error
    assert len(await server_objects(bed, shop_id)) == 2


async def test_two_concurrent_provisions_of_one_shop_make_one_database(bed: TenancyBed) -> None:
    first, second = await bed.service(), await bed.service()
    try:
        outcomes = await asyncio.gather(first.provision(7), second.provision(7))
    finally:
        await first.close()
        await second.close()
    assert sorted(o.status for o in outcomes) == sorted(["provisioned", ALREADY])
    assert outcomes[0].server == outcomes[1].server
    objects = await server_objects(bed, 7)
    assert objects == [f"{outcomes[0].server}:shop_7_db", f"{outcomes[0].server}:shop_user_7"]


async def test_leftovers_of_an_interrupted_run_are_cleared(bed: TenancyBed, svc: TenancyService) -> None:
    # What a run killed after create_database leaves: a marked role and database, state 'provisioning'.
    admin = await asyncpg.connect(**bed.tenant_of("t2").connect_kwargs())
    try:
        await admin.execute(
            "CREATE ROLE shop_user_200 LOGIN; COMMENT ON ROLE shop_user_200 IS 'pgtenantproxy shop 200'"
        )
        await admin.execute("CREATE DATABASE shop_200_db")
        await admin.execute("COMMENT ON DATABASE shop_200_db IS 'pgtenantproxy shop 200'")
    finally:
        await admin.close()
    await svc.pool.execute(
        "INSERT INTO pgtenantproxy.tenant_provisions (shop_id, state, server, database_name, role_name, step)"
        " VALUES (200, 'provisioning', 't2', 'shop_200_db', 'shop_user_200', 'create_schema')"
    )
    outcome = await svc.provision(200)
    assert outcome.status == "provisioned", outcome.error
    creds = await svc.credentials(200)
    conn = await asyncpg.connect(**creds.connect_kwargs())  # the role was re-created with a real password
    await conn.close()
    cleanup = await svc.pool.fetchval(
        "SELECT count(*) FROM pgtenantproxy.migration_log WHERE shop_id = 200 AND step = 'cleanup'"
    )
    assert cleanup == 1


async def test_objects_not_created_by_pgtenantproxy_are_left_alone(
    bed: TenancyBed, svc: TenancyService
) -> None:
    for cluster in bed.tenants:
        admin = await asyncpg.connect(**cluster.connect_kwargs())
        try:
            await admin.execute("CREATE DATABASE shop_300_db")
            await admin.execute("CREATE TABLE IF NOT EXISTS precious (x int)")
        finally:
            await admin.close()
    outcome = await svc.provision(300)
    assert outcome.status == "failed"
    assert outcome.error is not None and "already exists" in outcome.error
    assert "cleanup incomplete" not in outcome.error
    assert sorted(await server_objects(bed, 300)) == ["t1:shop_300_db", "t2:shop_300_db"]
    # Deprovisioning the failed shop does not drop the foreign database either.
    with pytest.raises(Exception, match="not created by pgtenantproxy"):
        await svc.deprovision(300)
    assert sorted(await server_objects(bed, 300)) == ["t1:shop_300_db", "t2:shop_300_db"]


async def test_many_concurrent_provisions_through_a_small_pool_finish(bed: TenancyBed) -> None:
    """Each provision holds one pool connection for its shop lock; nothing may need a second one."""
    shops = list(range(310, 316))
    async with await TenancyService.open(bed.config(), pool_size=2) as small:
        outcomes = await asyncio.wait_for(small.provision_many(shops, concurrency=6), 120)
        assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
        for shop in shops:
            await small.deprovision(shop)
