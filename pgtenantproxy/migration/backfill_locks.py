"""The two session advisory locks a shop's backfill holds on unified.

* ``(BACKFILL_LOCK, shop)``: one backfill of a shop at a time, taken with
  ``pg_try_advisory_lock`` (a second run is refused at once, not queued).
* ``(LEASE_LOCK, shop)``: the shop's *mirror lease*, the lock the mirror worker
  holds while it applies the shop's outbox (:mod:`pgtenantproxy.dualwrite.worker`).
  The worker gives it up between turns, so the backfill waits for it, with
  ``lock_timeout``: a worker stuck on the shop ends in a clear error, not a
  hang. While the backfill holds it, no mirror write reaches the shop's
  tenant database.

Both are session locks of the backfill's own connection: if the process dies,
the server releases them with the connection.
"""

from __future__ import annotations

import asyncpg

from pgtenantproxy.dualwrite.schema import LEASE_LOCK
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.tenancy.control_schema import shop_lock_key

BACKFILL_LOCK = 0x50475456  # advisory lock namespace: one backfill per shop


async def claim_backfill(conn: asyncpg.Connection, shop_id: int) -> None:
    """Take the shop's backfill lock or refuse (another process is backfilling it)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", BACKFILL_LOCK, shop_lock_key(shop_id)):
        raise MigrationError(f"shop {shop_id} is being backfilled by another process")


async def take_lease(conn: asyncpg.Connection, shop_id: int, *, timeout_s: float) -> None:
    """Wait (up to ``timeout_s``) for the shop's mirror lease and hold it."""
    await conn.execute("SELECT set_config('lock_timeout', $1, false)", f"{int(timeout_s * 1000)}ms")
    try:
        await conn.execute("SELECT pg_advisory_lock($1, $2)", LEASE_LOCK, shop_lock_key(shop_id))
    except asyncpg.LockNotAvailableError:
        raise MigrationError(
            f"shop {shop_id}: the mirror worker has held the shop's lease for over {timeout_s:.0f}s "
            "(a worker stuck on this shop?); nothing was copied, run the backfill again"
        ) from None
    finally:
        await conn.execute("RESET lock_timeout")


async def release_lease(conn: asyncpg.Connection, shop_id: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", LEASE_LOCK, shop_lock_key(shop_id))


async def release_backfill(conn: asyncpg.Connection, shop_id: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, $2)", BACKFILL_LOCK, shop_lock_key(shop_id))
