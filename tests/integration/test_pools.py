"""Tenant pools against a real server: lazy open, reuse, caps, waits, failures."""

from __future__ import annotations

import asyncio

import pytest

from pgtenantproxy.config import PoolsSection
from pgtenantproxy.embedded import PgCluster, free_port
from pgtenantproxy.pools.connection import ServerConnection, ServerRefusedLogin, ServerTarget
from pgtenantproxy.pools.pool import PoolManager, PoolTimeout
from tests.fixtures.clusters import PASSWORDS


def _target(cluster: PgCluster, *, password: str | None = None, port: int | None = None) -> ServerTarget:
    return ServerTarget(
        host=cluster.host,
        port=port or cluster.port,
        database="app",
        user="app",
        password=PASSWORDS["app"] if password is None else password,
        sslmode="disable",
        connect_timeout_ms=2000,
    )


def _manager(cluster: PgCluster, **pools: int) -> tuple[PoolManager, list[tuple[int, bool]]]:
    calls: list[tuple[int, bool]] = []

    async def provide(shop: int, refresh: bool) -> ServerTarget:
        calls.append((shop, refresh))
        return _target(cluster)

    cfg = PoolsSection(**{"connection_timeout_ms": 2000, **pools})
    return PoolManager(cfg, provide), calls


async def test_connection_logs_in_with_scram_and_pings(unified: PgCluster) -> None:
    conn = await ServerConnection.open(_target(unified))
    try:
        assert conn.pid > 0
        assert conn.parameters["server_encoding"] == "UTF8"
        await conn.ping()
        assert PASSWORDS["app"] not in repr(conn.target)
    finally:
        conn.close()


async def test_wrong_password_is_refused_with_sqlstate(unified: PgCluster) -> None:
    with pytest.raises(ServerRefusedLogin) as info:
        await ServerConnection.open(_target(unified, password="wrong"))
    assert info.value.sqlstate == "28P01"


async def test_pool_reuses_and_caps_per_shop(unified: PgCluster) -> None:
    manager, calls = _manager(unified, max_pool_size=2)
    pool = manager.pool(7)
    held = [await pool.acquire(), await pool.acquire()]
    assert pool.size == 2

    async def third() -> ServerConnection:
        return await pool.acquire()

    waiter = asyncio.create_task(third())
    await asyncio.sleep(0.05)
    assert not waiter.done() and len(pool.waiters) == 1
    pool.release(held[0])
    got = await asyncio.wait_for(waiter, 2)
    assert got is held[0]  # handed over, not a new connection
    assert pool.stats.opened == 2
    pool.release(got)
    pool.release(held[1])
    assert len(pool.idle) == 2 and pool.in_use == 0
    await manager.close()
    assert manager.total == 0
    assert calls and all(shop == 7 for shop, _ in calls)


async def test_waiter_times_out_with_an_error(unified: PgCluster) -> None:
    manager, _ = _manager(unified, max_pool_size=1, connection_timeout_ms=200)
    pool = manager.pool(1)
    conn = await pool.acquire()
    with pytest.raises(PoolTimeout) as info:
        await pool.acquire()
    assert info.value.sqlstate == "08006"
    pool.release(conn)
    await manager.close()


async def test_global_cap_evicts_idle_connections_of_other_shops(unified: PgCluster) -> None:
    manager, _ = _manager(unified, max_total_connections=2)
    a, b = manager.pool(1), manager.pool(2)
    ca = await a.acquire()
    cb = await b.acquire()
    a.release(ca)  # idle in shop 1's pool
    c = manager.pool(3)
    cc = await c.acquire()  # evicts shop 1's idle connection
    assert manager.total == 2 and len(a.idle) == 0
    b.release(cb)
    c.release(cc)
    await manager.close()


async def test_dead_server_fails_fast_and_bans_the_shop(unified: PgCluster) -> None:
    port = free_port()

    async def provide(shop: int, refresh: bool) -> ServerTarget:
        return _target(unified, port=port)

    manager = PoolManager(PoolsSection(connection_timeout_ms=1000), provide, ban_ms=5000)
    pool = manager.pool(9)
    with pytest.raises(Exception) as info:
        await pool.acquire()
    assert getattr(info.value, "sqlstate", "08006") == "08006"
    assert pool.banned
    assert manager.total == 0


async def test_bad_password_refreshes_credentials_once(unified: PgCluster) -> None:
    calls: list[bool] = []

    async def provide(shop: int, refresh: bool) -> ServerTarget:
        calls.append(refresh)
        return _target(unified, password=None if refresh else "stale")

    manager = PoolManager(PoolsSection(connection_timeout_ms=2000), provide)
    pool = manager.pool(4)
    conn = await pool.acquire()
    assert calls == [False, True]
    pool.release(conn)
    await manager.close()
