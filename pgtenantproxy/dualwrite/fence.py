"""The database-level write fence of a shop: who may still write the shop's rows in a source database.

The proxy's hold (``shop_phases.fence``) stops the writes that go through a
proxy; this fence, in the database itself, covers everything else: a
transaction that began before the hold, a client that bypasses the proxy, a
proxy instance cut off from the control plane. It lives in every *source*
database (unified; a tenant database once reverse capture is installed):
``pgtenantproxy.write_fences`` (:mod:`.schema`, step 2), checked by
``fence_check(shops)``, which every capture function calls for the shops of
its statement, after the statement's rows were written, unless the session
sets ``pgtenantproxy.mirror_apply = on`` (the mirror and the retirement).

Who holds what lock, when (lock ids in :mod:`.schema`):

* A *writer* of shop N (a statement writing at most ``FENCE_MAX_SHOPS``
  shops) takes ``FENCE_WRITE(N)`` **shared**, transaction-scoped: it holds it
  until its transaction ends, fence or no fence. A statement writing more
  shops takes ``FENCE_WRITE_ALL`` shared, plus ``FENCE_WRITE(N)`` shared only
  for the shops that have a fence row. Then, if N's row is ``closed``, the
  statement fails with SQLSTATE 55000.
* A *cutover* of N: :func:`hold` (row ``holding``, committed), then
  :func:`acquire_exclusive`: ``FENCE_WRITE(N)`` **exclusive**, session-scoped,
  under ``lock_timeout`` (it waits for the transactions that wrote N and are
  still open; new writers of N queue behind it), then ``FENCE_WRITE_ALL``
  exclusive, taken and released at once (waits for the many-shop statements
  that started before the row existed; later ones see the row and take N's
  lock). From then until :func:`release_exclusive` no transaction that wrote N
  is open and none can write N. :func:`close` (row ``closed``), then
  :func:`cancel_waiters` (writers queued on N's lock began before the cutover:
  they are cancelled) and :func:`release_exclusive`: whoever still comes sees
  ``closed``. On abort: :func:`open_` and :func:`release_exclusive`.
* A REPEATABLE READ / SERIALIZABLE writer cannot see a fence row committed
  after its snapshot; the fence generation (a sequence, read outside MVCC)
  tells it a fence changed since, and it fails with 40001 (retry).

Every function takes a connection outside a transaction (the state changes
commit at once, the session lock outlives any transaction) and changes
nothing when it fails.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from pgtenantproxy.dualwrite.errors import DualWriteError
from pgtenantproxy.dualwrite.schema import FENCE_WRITE, FENCE_WRITE_ALL
from pgtenantproxy.tenancy.control_schema import shop_lock_key

logger = logging.getLogger(__name__)

HOLDING = "holding"
CLOSED = "closed"

_SET = """
INSERT INTO pgtenantproxy.write_fences AS f (shop_id, state, reason) VALUES ($1, $2, $3)
ON CONFLICT (shop_id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
    since = CASE WHEN f.state = excluded.state THEN f.since ELSE clock_timestamp() END
"""
_TICK = "UPDATE pgtenantproxy.write_fence_clock SET gen = nextval('pgtenantproxy.write_fence_gen')"
_WAITERS = """
SELECT count(*) FILTER (WHERE pg_cancel_backend(l.pid)) FROM pg_locks l
WHERE l.locktype = 'advisory' AND NOT l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2
"""


class FenceTimeout(DualWriteError):
    """The fence's exclusive lock was not granted in time (a writer of the shop did not finish)."""


@dataclass(frozen=True)
class FenceState:
    """A shop's fence in one database; ``state`` None when its writes pass."""

    shop_id: int
    state: str | None = None
    reason: str | None = None
    since: datetime | None = None


async def state(conn: asyncpg.Connection | asyncpg.Pool, shop_id: int) -> FenceState:
    row = await conn.fetchrow(
        "SELECT state, reason, since FROM pgtenantproxy.write_fences WHERE shop_id = $1", shop_id
    )
    if row is None:
        return FenceState(shop_id)
    return FenceState(shop_id, row["state"], row["reason"], row["since"])


async def hold(conn: asyncpg.Connection, shop_id: int, *, reason: str | None = None) -> None:
    """Mark the shop ``holding`` (many-shop writers start taking its lock); writes still pass."""
    await _set(conn, shop_id, HOLDING, reason)


async def close(conn: asyncpg.Connection, shop_id: int, *, reason: str | None = None) -> None:
    """Mark the shop ``closed``: from the commit on, its writes fail (55000) unless ``mirror_apply``."""
    await _set(conn, shop_id, CLOSED, reason)


async def open_(conn: asyncpg.Connection, shop_id: int) -> bool:
    """Remove the shop's fence (writes pass again); True when there was one."""
    async with conn.transaction():
        status = await conn.execute("DELETE FROM pgtenantproxy.write_fences WHERE shop_id = $1", shop_id)
        await conn.execute(_TICK)
    logger.info("shop %s: write fence opened", shop_id)
    return bool(status != "DELETE 0")


async def _set(conn: asyncpg.Connection, shop_id: int, new_state: str, reason: str | None) -> None:
    async with conn.transaction():
        await conn.execute(_SET, shop_id, new_state, reason)
        await conn.execute(_TICK)
    logger.info("shop %s: write fence %s", shop_id, new_state)


async def acquire_exclusive(conn: asyncpg.Connection, shop_id: int, *, timeout_s: float) -> bool:
    """Wait (up to ``timeout_s``) until no open transaction has written the shop, and keep it so.

    True: ``conn``'s session holds the shop's fence lock exclusively (release
    with :func:`release_exclusive`). False: the timeout passed; nothing is held.
    """
    key = shop_lock_key(shop_id)
    if not await _lock(conn, f"SELECT pg_advisory_lock({FENCE_WRITE}, {key})", timeout_s):
        logger.info("shop %s: writers still open after %.1f s", shop_id, timeout_s)
        return False
    drained = (
        f"SELECT pg_advisory_lock({FENCE_WRITE_ALL}, 0); "
        f"SELECT pg_advisory_unlock({FENCE_WRITE_ALL}, 0)"
    )
    try:
        all_done = await _lock(conn, drained, timeout_s)
    except BaseException:
        await release_exclusive(conn, shop_id)
        raise
    if not all_done:
        await release_exclusive(conn, shop_id)
        logger.info("shop %s: many-shop writers still open after %.1f s", shop_id, timeout_s)
    return all_done


async def _lock(conn: asyncpg.Connection, sql: str, timeout_s: float) -> bool:
    """Run ``sql`` (session advisory lock calls) with a lock timeout; False when it ran out."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {max(1, int(timeout_s * 1000))}")
            await conn.execute(sql)
    except asyncpg.LockNotAvailableError:
        return False
    return True


async def release_exclusive(conn: asyncpg.Connection, shop_id: int) -> None:
    """Let the shop's writers through again (they then see the fence row's state)."""
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", FENCE_WRITE, shop_lock_key(shop_id))


@asynccontextmanager
async def exclusive(conn: asyncpg.Connection, shop_id: int, timeout_s: float) -> AsyncIterator[None]:
    """``async with exclusive(conn, shop, 5.0):`` the shop's fence lock; FenceTimeout when not granted."""
    if not await acquire_exclusive(conn, shop_id, timeout_s=timeout_s):
        raise FenceTimeout(f"shop {shop_id}: its open writers did not end within {timeout_s:g} s")
    try:
        yield
    finally:
        if not conn.is_closed():
            await release_exclusive(conn, shop_id)


async def cancel_waiters(conn: asyncpg.Connection, shop_id: int) -> int:
    """Cancel the statements waiting for the shop's fence lock (their transactions fail); returns how many."""
    n = await conn.fetchval(_WAITERS, FENCE_WRITE, shop_lock_key(shop_id) & 0xFFFFFFFF)
    if n:
        logger.info("shop %s: %d writers waiting at the write fence cancelled", shop_id, n)
    return int(n)
