"""Federated reads, the migration's side: the foreign objects on unified for a cut-over shop.

The lifecycle bed with a mirror running (both directions). Shops 5 and 6 are
backfilled and put in ``reads_on_tenant``; shop 5 is cut over (which federates
it), shop 6's cutover is made to fail at federation. Real clusters, real
``postgres_fdw``: the foreign tables are read as the roles an application
would use, compared with the shop's database read directly. The schema change
of the keeper test is undone at the end (the bed is shared by the package).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from pgtenantproxy.cli.tenancy import _rotate_password
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.federation import (
    GUARD_FUNCTION,
    read_columns,
    read_federation,
    server_name,
    shop_schema,
    signature,
)
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.cutover import cutover_shops
from pgtenantproxy.migration.cutover_report import DONE, FAILED
from pgtenantproxy.migration.federation import (
    FederationKeeper,
    federate_shop,
    reader_role,
    rotate_reader,
)
from pgtenantproxy.migration.keeper import PhaseKeeper
from pgtenantproxy.sqltext import ident
from pgtenantproxy.tenancy.service import TenancyService
from tests.integration.dualwrite.bed import DATABASE, TABLES, MirrorBed

SHOP = 5
FAILING = 6
FAST = {"fence_timeout_ms": 3000, "ack_timeout_ms": 1000}
KEYS = {t: f"{t}_pkey" for t in TABLES}


@pytest.fixture(scope="module")
async def fed(lbed: MirrorBed) -> AsyncIterator[tuple[TenancyService, DualWriteService]]:
    """Shops 5 and 6 in ``reads_on_tenant``, shop 5 cut over; the mirror (both directions) running."""
    config = lbed.config(migration=FAST, federation={"refresh_interval_s": 0.2})
    mirror = await DualWriteService.open(config, run_worker=True)
    await mirror.start()
    tenancy = await TenancyService.open(config, pool_size=6)
    try:
        assert (await backfill_shops(tenancy, [SHOP, FAILING], wait=True)).ok
        async with tenancy.pool.acquire() as conn:
            for shop in (SHOP, FAILING):
                await transition(conn, shop, ph.READS_ON_TENANT, reason="test")
        yield tenancy, mirror
    finally:
        await tenancy.close()
        await mirror.close()


async def as_role(lbed: MirrorBed, role: str, password: str) -> asyncpg.Connection:
    kwargs = lbed.unified.connect_kwargs(user=role, password=password, database=DATABASE)
    return await asyncpg.connect(**kwargs)


def foreign(table: str, shop: int = SHOP) -> str:
    return f"{ident(shop_schema(shop))}.{ident('public.' + table)}"


async def rows(conn: asyncpg.Connection, relation: str, table: str) -> list[str]:
    order = {"account_tags": "account_id, tag"}.get(table, "id")
    return [r[0] for r in await conn.fetch(f"SELECT to_jsonb(t)::text FROM {relation} t ORDER BY {order}")]


async def mapping_password(lbed: MirrorBed, shop: int = SHOP) -> str:
    """The reader's password as unified's user mapping holds it (a superuser may read it)."""
    admin = await lbed.unified_admin()
    try:
        options = await admin.fetchval("SELECT umoptions FROM pg_user_mappings WHERE srvname = $1",
                                       server_name(shop))
    finally:
        await admin.close()
    return dict(o.split("=", 1) for o in options)["password"]


async def test_cutover_federates_and_the_foreign_tables_read_the_shops_rows(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = fed
    (result,) = (await cutover_shops(tenancy, [SHOP], actor="test")).shops
    assert result.status == DONE, result.as_dict()
    assert result.extra["federation"]["tables"] == len(TABLES)
    creds = await tenancy.credentials(SHOP)
    own = await asyncpg.connect(**creds.connect_kwargs())  # the app's writes after cutover, on its database
    try:
        account = await own.fetchval("SELECT min(id) FROM accounts WHERE shop_id = $1", SHOP)
        await own.execute("INSERT INTO history (shop_id, account_id, delta) VALUES ($1, $2, 3), ($1, $2, 4)",
                          SHOP, account)
        await own.execute("INSERT INTO account_tags (shop_id, account_id, tag) VALUES ($1, $2, 'federated')",
                          SHOP, account)
    finally:
        await own.close()
    unified = await lbed.unified_admin()
    tenant = await lbed.shop_admin(SHOP)
    try:
        labels = [f"public.{t}" for t in TABLES]
        recorded = await read_federation(unified)
        assert recorded[SHOP] == signature(await read_columns(unified, labels))
        built = await unified.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind = 'f'", shop_schema(SHOP))
        assert sorted(r[0] for r in built) == sorted(labels)
        for table in TABLES:
            direct = await rows(tenant, f"public.{table}", table)
            assert direct, table
            assert await rows(unified, foreign(table), table) == direct, table
    finally:
        await unified.close()
        await tenant.close()


async def test_foreign_tables_are_readable_exactly_by_the_roles_that_read_unifieds_table(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = fed
    password = secrets.token_urlsafe(12)
    roles = ("fed_nobody", "fed_branches", "fed_columns")
    admin = await lbed.unified_admin()
    try:
        for role in roles:
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await admin.execute("GRANT SELECT ON branches TO fed_branches;"
                            "GRANT SELECT (id, name) ON branches TO fed_columns")
        keeper = FederationKeeper(tenancy)
        assert await keeper.stale_shops() == [SHOP]  # the grants changed: rebuilt
        assert [r.shop_id for r in await keeper.run_once()] == [SHOP]
        assert await keeper.stale_shops() == []

        nobody = await as_role(lbed, "fed_nobody", password)
        reader = await as_role(lbed, "fed_branches", password)
        columns = await as_role(lbed, "fed_columns", password)
        app = await lbed.app()
        try:
            for conn, table in ((nobody, "branches"), (reader, "accounts"), (columns, "branches")):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.fetch(f"SELECT * FROM {foreign(table)}")
            assert len(await reader.fetch(f"SELECT * FROM {foreign('branches')}")) >= 1
            branch = await columns.fetchrow(f"SELECT id, name FROM {foreign('branches')}")
            assert branch["name"] == "branch 5"
            assert len(await app.fetch(f"SELECT * FROM {foreign('accounts')}")) == 50  # app_user reads all

            await admin.execute("REVOKE SELECT ON branches FROM fed_branches")  # revoking reaches them too
            assert [r.shop_id for r in await keeper.run_once()] == [SHOP]
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.fetch(f"SELECT * FROM {foreign('branches')}")
        finally:
            for conn in (nobody, reader, columns, app):
                await conn.close()
    finally:
        for role in roles:
            await admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        await admin.close()
    assert await FederationKeeper(tenancy).stale_shops() == []  # dropping the roles: gone on both sides


async def test_nothing_writes_through_the_federation(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = fed
    app = await lbed.app()  # may write unified's tables, gets only SELECT on the foreign tables
    admin = await lbed.unified_admin()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(f"UPDATE {foreign('branches')} SET balance = 0")
        with pytest.raises(asyncpg.PostgresError, match="does not allow updates"):
            await admin.execute(f"UPDATE {foreign('branches')} SET balance = 0")  # the owner: updatable off
        with pytest.raises(asyncpg.PostgresError, match="does not allow inserts"):
            await admin.execute(f"INSERT INTO {foreign('categories')} (id, shop_id, name)"
                                f" VALUES (-1, {SHOP}, 'x')")
    finally:
        await app.close()
        await admin.close()
    creds = await tenancy.credentials(SHOP)
    reader = await asyncpg.connect(host=creds.host, port=creds.port, database=creds.database,
                                   user=reader_role(creds.user), password=await mapping_password(lbed))
    try:
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await reader.execute("UPDATE branches SET balance = 0")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the proxy's own tables there: no access
            await reader.fetch("SELECT * FROM pgtenantproxy.tenant")
        attributes = await reader.fetchrow(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit FROM pg_roles"
            " WHERE rolname = current_user")
        assert not any(attributes.values())
    finally:
        await reader.close()


async def test_the_guard_refuses_isolation_levels_above_read_committed(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    app = await lbed.app()
    try:
        assert await app.fetchval(f"SELECT {GUARD_FUNCTION}()") is True
        volatility = await app.fetchval(
            f"SELECT provolatile::text FROM pg_proc WHERE oid = '{GUARD_FUNCTION}'::regproc")
        assert volatility == "s"
        for level in ("REPEATABLE READ", "SERIALIZABLE"):
            async with app.transaction(isolation=level.lower().replace(" ", "_")):
                with pytest.raises(asyncpg.PostgresError) as refused:
                    await app.fetchval(f"SELECT {GUARD_FUNCTION}()")
            error = refused.value
            assert error.sqlstate == "0A000"
            assert level in str(error) and "a snapshot cannot span databases" in str(error)
            assert "READ COMMITTED" in (error.hint or "") and "one shop" in (error.hint or "")
        async with app.transaction(isolation="read_committed"):
            assert await app.fetchval(f"SELECT {GUARD_FUNCTION}()") is True
    finally:
        await app.close()


async def test_federating_twice_is_harmless(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = fed
    first, second = await asyncio.gather(federate_shop(tenancy, SHOP), federate_shop(tenancy, SHOP))
    again = await federate_shop(tenancy, SHOP)
    assert not (first.created or second.created or again.created)
    recorded = (await read_federation(tenancy.pool))[SHOP]
    assert first.signature == second.signature == again.signature == recorded
    app = await lbed.app()
    try:
        assert len(await app.fetch(f"SELECT * FROM {foreign('tellers')}")) == 5
    finally:
        await app.close()
    assert await FederationKeeper(tenancy).stale_shops() == []


async def test_rotating_passwords_rotates_the_readers_and_nothing_shows_a_password(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService], caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenancy, _ = fed
    caplog.set_level(logging.DEBUG, logger="pgtenantproxy")
    before = await mapping_password(lbed)
    app = await lbed.app()  # a session whose postgres_fdw connection was opened with the old password
    try:
        assert len(await app.fetch(f"SELECT * FROM {foreign('accounts')}")) == 50
        await rotate_reader(tenancy, SHOP)
        rotated = await mapping_password(lbed)
        assert rotated != before
        assert len(await app.fetch(f"SELECT * FROM {foreign('accounts')}")) == 50
        creds = await tenancy.credentials(SHOP)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host=creds.host, port=creds.port, database=creds.database,
                                  user=reader_role(creds.user), password=before)

        assert await _rotate_password(tenancy, argparse.Namespace(shop=SHOP)) == 0  # the CLI's command
        after = await mapping_password(lbed)
        assert after != rotated
        assert len(await app.fetch(f"SELECT * FROM {foreign('accounts')}")) == 50
        fresh = await lbed.app()
        try:
            assert len(await fresh.fetch(f"SELECT * FROM {foreign('accounts')}")) == 50
        finally:
            await fresh.close()
        await federate_shop(tenancy, SHOP)  # a rebuild sets a new one too
        last = await mapping_password(lbed)
        shop_password = (await tenancy.registry.refresh(SHOP)).password
    finally:
        await app.close()
    printed = capsys.readouterr()
    assert "reader password rotated" in printed.out
    shown = caplog.text + printed.out + printed.err
    assert "the reader's password was rotated" in caplog.text and "federation refreshed" in caplog.text
    for secret in (before, rotated, after, last, shop_password):
        assert secret not in shown


async def test_a_schema_change_is_picked_up_by_the_phase_keeper(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, mirror = fed
    keeper = FederationKeeper(tenancy, lambda: tenancy.config)
    old = (await read_federation(tenancy.pool))[SHOP]
    unified = await lbed.unified_admin()
    tenant = await lbed.shop_admin(SHOP)
    try:
        await tenant.execute(
            "ALTER TABLE categories ADD COLUMN fed_note text NOT NULL DEFAULT 'from the shop'")
        await unified.execute("ALTER TABLE categories ADD COLUMN fed_note text")
        assert await keeper.stale_shops() == [SHOP]
        (result,) = await keeper.run_once()
        assert result.shop_id == SHOP and not result.created and result.signature != old
        assert (await read_federation(tenancy.pool))[SHOP] == result.signature
        notes = await unified.fetch(f"SELECT DISTINCT fed_note FROM {foreign('categories')}")
        assert [r[0] for r in notes] == ["from the shop"]
        assert await keeper.run_once() == []  # in step now
    finally:
        await tenant.execute("ALTER TABLE categories DROP COLUMN IF EXISTS fed_note")
        await unified.execute("ALTER TABLE categories DROP COLUMN IF EXISTS fed_note")
        await tenant.close()
        await unified.close()
    # the phase keeper runs the refresh as one of its periodic jobs while it leads
    leader = PhaseKeeper(tenancy.pool, mirror.status, lambda shop: shop in (SHOP, FAILING), interval_s=0.1,
                         jobs=[("federation refresh", keeper)])
    task = asyncio.get_running_loop().create_task(leader.run())
    try:
        for _ in range(100):
            if (await read_federation(tenancy.pool))[SHOP] == old:
                break
            await asyncio.sleep(0.1)
        assert (await read_federation(tenancy.pool))[SHOP] == old
    finally:
        leader.stop()
        await asyncio.wait_for(task, 10)
    app = await lbed.app()
    try:
        assert len(await app.fetch(f"SELECT * FROM {foreign('categories')}")) >= 1
    finally:
        await app.close()


async def test_a_cutover_whose_federation_fails_switches_nothing(
    lbed: MirrorBed, fed: tuple[TenancyService, DualWriteService]
) -> None:
    tenancy, _ = fed
    creds = await tenancy.credentials(FAILING)
    squatter = reader_role(creds.user)
    tenant = await lbed.shop_admin(FAILING)
    try:  # a role of the reader's name that pgtenantproxy did not create: never taken over
        await tenant.execute(f"CREATE ROLE {ident(squatter)} NOLOGIN")
        (result,) = (await cutover_shops(tenancy, [FAILING], actor="test")).shops
        assert result.status == FAILED, result.as_dict()
        assert "could not be federated" in (result.detail or "") and squatter in (result.detail or "")
        assert "nothing was switched" in (result.detail or "")
        assert (await read_phase(tenancy.pool, FAILING)).phase == ph.READS_ON_TENANT
        assert FAILING not in await read_federation(tenancy.pool)
    finally:
        await tenant.execute(f"DROP ROLE IF EXISTS {ident(squatter)}")
        await tenant.close()
    app = await lbed.app()
    try:
        await app.execute("UPDATE branches SET balance = balance + 1 WHERE shop_id = $1", FAILING)  # unified
    finally:
        await app.close()
