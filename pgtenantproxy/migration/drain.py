"""Waiting for a shop's mirror to catch up with everything committed so far.

:func:`wait_drained` reads the outbox sequence's ``last_value`` as a *marker*
and waits until the shop has no outbox entry with ``id <= marker``.

Why this means "everything committed before the call is on the tenant": an
entry's id is drawn (``nextval``) inside the writing transaction, before it
commits, and ``outbox_id_seq`` has ``CACHE 1``, so every entry of a write that
committed before the marker was read has ``id <= marker``; an entry leaves the
outbox only once its key was synced to the tenant *after* that commit (the
sync reads the row afresh). Entries drawn later (ids above the marker) do not
hold the wait up, so a shop under continuous writes still drains.

Caveat: a dead-lettered entry also leaves the outbox (its key was *not*
synced). That happens in the same transaction that marks the shop degraded
(``pgtenantproxy.mirror_state``): callers that need the data to match check
:func:`mirror_health` too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

POLL_S = 0.05

_MARKER = "SELECT last_value FROM pgtenantproxy.outbox_id_seq"
_PENDING = "SELECT EXISTS (SELECT 1 FROM pgtenantproxy.outbox WHERE shop_id = $1 AND id <= $2)"
_HEALTH = """
SELECT coalesce((SELECT degraded FROM pgtenantproxy.mirror_state WHERE shop_id = $1), false) AS degraded,
       (SELECT coalesce(reason, cause) FROM pgtenantproxy.mirror_state WHERE shop_id = $1 AND degraded)
           AS reason,
       (SELECT count(*) FROM pgtenantproxy.dead_letters WHERE shop_id = $1) AS dead_letters
"""


async def wait_drained(
    pool: asyncpg.Pool | asyncpg.Connection, shop_id: int, *, timeout_s: float, poll_s: float = POLL_S
) -> bool:
    """Wait until every outbox entry of ``shop_id`` committed before this call has left the outbox.

    ``pool`` may be a pool or a connection (pass the connection you hold when
    the pool is small). Returns False when ``timeout_s`` passed first.
    """
    deadline = time.monotonic() + timeout_s
    marker = int(await pool.fetchval(_MARKER))
    while await pool.fetchval(_PENDING, shop_id, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


@dataclass(frozen=True)
class MirrorHealth:
    """Whether the shop's mirror dropped anything: degraded flag, its reason, dead letters."""

    degraded: bool = False
    reason: str | None = None
    dead_letters: int = 0


async def mirror_health(pool: asyncpg.Pool | asyncpg.Connection, shop_id: int) -> MirrorHealth:
    row = await pool.fetchrow(_HEALTH, shop_id)
    assert row is not None
    return MirrorHealth(bool(row["degraded"]), row["reason"], int(row["dead_letters"]))
