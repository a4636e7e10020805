"""Proxy instances and what they have seen: how a cutover knows every proxy follows a flip.

Every proxy's routing catalog, after each refresh, records in
``pgtenantproxy.proxy_instances`` a heartbeat and the newest phase epoch
(:func:`pgtenantproxy.lifecycle.store.current_epoch`) its snapshot contains.
:func:`wait_seen` waits until every *live* instance (heartbeat within
``live_s``) has seen an epoch: from then on no proxy routes by an older phase
or fence. An instance that stopped heartbeating is not waited for: if it still
runs, cut off from the control plane, the write fences in the databases
refuse what it would send to the wrong side.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid

import asyncpg

LIVE_S = 5.0


def new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def heartbeat(conn: asyncpg.Connection, instance_id: str, epoch_seen: int) -> None:
    await conn.execute(
        """INSERT INTO pgtenantproxy.proxy_instances (instance_id, host, pid, epoch_seen)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (instance_id) DO UPDATE
           SET heartbeat_at = clock_timestamp(),
               epoch_seen = greatest(pgtenantproxy.proxy_instances.epoch_seen, EXCLUDED.epoch_seen)""",
        instance_id, socket.gethostname(), os.getpid(), epoch_seen,
    )


async def forget(conn: asyncpg.Connection | asyncpg.Pool, instance_id: str) -> None:
    await conn.execute("DELETE FROM pgtenantproxy.proxy_instances WHERE instance_id = $1", instance_id)


async def behind(conn: asyncpg.Connection | asyncpg.Pool, epoch: int, *, live_s: float = LIVE_S) -> list[str]:
    """Live instances that have not seen ``epoch`` yet."""
    rows = await conn.fetch(
        """SELECT instance_id FROM pgtenantproxy.proxy_instances
           WHERE epoch_seen < $1 AND heartbeat_at > clock_timestamp() - make_interval(secs => $2)
           ORDER BY instance_id""",
        epoch, live_s,
    )
    return [str(r["instance_id"]) for r in rows]


async def wait_seen(
    conn: asyncpg.Connection | asyncpg.Pool, epoch: int, *, timeout_s: float, live_s: float = LIVE_S,
    poll_s: float = 0.01,
) -> list[str]:
    """Wait until every live instance has seen ``epoch``; returns those still behind at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        late = await behind(conn, epoch, live_s=live_s)
        if not late or time.monotonic() >= deadline:
            return late
        await asyncio.sleep(poll_s)
