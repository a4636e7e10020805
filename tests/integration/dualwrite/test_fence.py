"""The database-level write fence on unified: shared locks of writers, the cutover's exclusive lock,
closed shops refused (55000), the mirror let through, many-shop statements, cancelled waiters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from pgtenantproxy.dualwrite import fence
from pgtenantproxy.dualwrite.capture import function_body, installed_tables, upgrade_functions
from pgtenantproxy.dualwrite.schema import FENCE_WRITE, dualwrite_schema_version
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from tests.integration.dualwrite.bed import MirrorBed

SHOP = 5
OTHER = 6
BUMP = "UPDATE branches SET balance = balance + 1 WHERE id = $1"  # branch id = shop id in the seed
BUMP_MANY = "UPDATE branches SET balance = balance + 1 WHERE id <= 10"  # 10 shops: more than 8


@pytest.fixture
async def admin(bed: MirrorBed) -> AsyncIterator[asyncpg.Connection]:
    conn = await bed.unified_admin()
    try:
        yield conn
    finally:
        await fence.release_exclusive(conn, SHOP)
        await fence.open_(conn, SHOP)
        await conn.close()


@pytest.fixture
async def watch(bed: MirrorBed) -> AsyncIterator[asyncpg.Connection]:
    """A connection that looks at pg_locks while the others wait."""
    conn = await bed.unified_admin()
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def writers(bed: MirrorBed) -> AsyncIterator[list[asyncpg.Connection]]:
    """Application connections (closed, with their open transactions, at the end)."""
    conns = [await bed.app() for _ in range(3)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.terminate()


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def waiting_on_fence(admin: asyncpg.Connection, pid: int) -> bool:
    """``pid`` waits for an advisory lock of the fence (of any shop, or the many-shop lock)."""
    return bool(await admin.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)", pid
    ))


async def holds_fence_lock(admin: asyncpg.Connection, pid: int, shop_id: int) -> bool:
    return bool(await admin.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND granted"
        " AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 2)",
        pid, FENCE_WRITE, shop_lock_key(shop_id) & 0xFFFFFFFF,
    ))


async def test_capture_functions_are_upgraded_in_place_and_call_the_fence(bed: MirrorBed) -> None:
    conn = await bed.unified_admin()
    try:
        assert await dualwrite_schema_version(conn) == 2
        table = (await installed_tables(conn))[0]
        old_body = "\n".join(line for line in function_body(table).split("\n") if "fence_check" not in line)
        name = "capture_" + (await conn.fetchval(
            "SELECT substr(proname, 9) FROM pg_proc WHERE prosrc LIKE $1", f"%'{table.label}'%"
        ))
        await conn.execute(f"CREATE OR REPLACE FUNCTION pgtenantproxy.{name}() RETURNS trigger"
                           f" LANGUAGE plpgsql AS $x${old_body}$x$")  # as an install before the fence
        assert await upgrade_functions(conn) == 1
        assert await upgrade_functions(conn) == 0
        src = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = $1", name)
        assert "fence_check" in src
    finally:
        await conn.close()


async def test_a_writer_holds_the_shops_lock_until_it_ends_and_the_cutover_waits_for_it(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    writer = writers[0]
    tx = writer.transaction()
    await tx.start()
    await writer.execute(BUMP, SHOP)
    assert await holds_fence_lock(watch, writer.get_server_pid(), SHOP)  # shared, though no fence exists
    await fence.hold(admin, SHOP, reason="test")
    acquiring = asyncio.ensure_future(fence.acquire_exclusive(admin, SHOP, timeout_s=60))
    await wait_until(lambda: waiting_on_fence(watch, admin.get_server_pid()))
    assert not acquiring.done()
    await tx.commit()
    assert await acquiring
    assert await holds_fence_lock(watch, admin.get_server_pid(), SHOP)


async def test_acquire_times_out_when_the_writer_does_not_end_and_changes_nothing(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    writer = writers[0]
    tx = writer.transaction()
    await tx.start()
    await writer.execute(BUMP, SHOP)
    await fence.hold(admin, SHOP)
    assert not await fence.acquire_exclusive(admin, SHOP, timeout_s=0.3)
    assert not await holds_fence_lock(watch, admin.get_server_pid(), SHOP)
    assert (await fence.state(admin, SHOP)).state == fence.HOLDING
    await writer.execute(BUMP, SHOP)  # the writer goes on undisturbed
    await tx.commit()


async def test_while_held_a_new_writer_of_the_shop_waits_and_other_shops_do_not(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    await fence.hold(admin, SHOP)
    assert await fence.acquire_exclusive(admin, SHOP, timeout_s=30)
    blocked = asyncio.ensure_future(writers[0].execute(BUMP, SHOP))
    await wait_until(lambda: waiting_on_fence(watch, writers[0].get_server_pid()))
    await asyncio.wait_for(writers[1].execute(BUMP, OTHER), 30)  # shop 6 passes
    assert not blocked.done()
    await fence.release_exclusive(admin, SHOP)
    await asyncio.wait_for(blocked, 30)  # still holding, not closed: it passes once released


async def test_a_closed_shop_refuses_writes_with_55000_but_not_the_mirror(
    bed: MirrorBed, admin: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    await fence.close(admin, SHOP, reason="cut over")
    assert (await fence.state(admin, SHOP)).state == fence.CLOSED
    for sql, args in ((BUMP, (SHOP,)), (BUMP_MANY, ()),
                      ("INSERT INTO history (shop_id, account_id, delta) VALUES (5, 201, 1)", ()),
                      ("DELETE FROM categories WHERE shop_id = 5", ())):
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as err:
            await writers[0].execute(sql, *args)
        assert err.value.sqlstate == "55000"
        assert "shop 5 writes to its own database since its cutover" in str(err.value)
        assert "retried" in (err.value.hint or "")
    await writers[0].execute(BUMP, OTHER)  # other shops are not concerned
    async with writers[1].transaction():  # the mirror's own writes (a reverse apply) pass
        await writers[1].execute("SET LOCAL pgtenantproxy.mirror_apply = on")
        await writers[1].execute(BUMP, SHOP)
    assert await fence.open_(admin, SHOP)
    await writers[0].execute(BUMP, SHOP)  # open again
    assert (await fence.state(admin, SHOP)).state is None


async def test_a_statement_on_more_than_eight_shops_works_and_is_fenced(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    many = writers[0]
    assert await many.execute(BUMP_MANY) == "UPDATE 10"  # no fence: passes
    # A many-shop statement open before the hold: the cutover waits for it (FENCE_WRITE_ALL).
    tx = many.transaction()
    await tx.start()
    await many.execute(BUMP_MANY)
    await fence.hold(admin, SHOP)
    acquiring = asyncio.ensure_future(fence.acquire_exclusive(admin, SHOP, timeout_s=60))
    await wait_until(lambda: waiting_on_fence(watch, admin.get_server_pid()))
    await tx.commit()
    assert await acquiring
    # While the fence is held, a new many-shop statement touching the shop waits for it.
    blocked = asyncio.ensure_future(writers[1].execute(BUMP_MANY))
    await wait_until(lambda: waiting_on_fence(watch, writers[1].get_server_pid()))
    # Ten other shops pass (the waiting statement above holds its rows' locks: other rows here).
    other_shops = "UPDATE branches SET balance = balance + 1 WHERE id BETWEEN 11 AND 20"
    assert await asyncio.wait_for(writers[2].execute(other_shops), 30) == "UPDATE 10"
    await fence.close(admin, SHOP)
    await fence.release_exclusive(admin, SHOP)
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
        await asyncio.wait_for(blocked, 30)


async def test_cancel_waiters_cancels_a_writer_queued_at_the_fence(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    await fence.hold(admin, SHOP)
    assert await fence.acquire_exclusive(admin, SHOP, timeout_s=30)
    tx = writers[0].transaction()
    await tx.start()
    await writers[0].execute(BUMP, OTHER)  # a transaction that began before the cutover
    blocked = asyncio.ensure_future(writers[0].execute(BUMP, SHOP))
    await wait_until(lambda: waiting_on_fence(watch, writers[0].get_server_pid()))
    await fence.close(admin, SHOP)
    assert await fence.cancel_waiters(admin, SHOP) == 1
    with pytest.raises(asyncpg.QueryCanceledError):
        await asyncio.wait_for(blocked, 30)
    await tx.rollback()
    await fence.release_exclusive(admin, SHOP)
    assert await fence.cancel_waiters(admin, SHOP) == 0


async def test_a_repeatable_read_writer_older_than_the_close_must_retry(
    admin: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    writer = writers[0]
    tx = writer.transaction(isolation="repeatable_read")
    await tx.start()
    await writer.fetchval("SELECT count(*) FROM branches")  # takes the snapshot: no fence yet
    await fence.close(admin, SHOP)
    with pytest.raises(asyncpg.SerializationError):
        await writer.execute(BUMP, SHOP)  # it cannot see the closed row; the fence clock tells it
    await tx.rollback()


async def test_exclusive_context_raises_on_timeout_and_releases_at_the_end(
    admin: asyncpg.Connection, watch: asyncpg.Connection, writers: list[asyncpg.Connection]
) -> None:
    async with fence.exclusive(admin, SHOP, 5.0):
        assert await holds_fence_lock(watch, admin.get_server_pid(), SHOP)
    assert not await holds_fence_lock(watch, admin.get_server_pid(), SHOP)
    tx = writers[0].transaction()
    await tx.start()
    await writers[0].execute(BUMP, SHOP)
    with pytest.raises(fence.FenceTimeout):
        async with fence.exclusive(admin, SHOP, 0.2):
            pass
    await tx.rollback()
