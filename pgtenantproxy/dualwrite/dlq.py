"""Dead letters: entries that failed every retry. Listed, and replayed into the outbox after a repair.

``replay`` moves a shop's (or every shop's) dead letters back into the outbox
in one transaction, keeping their capture time (so the shop's lag shows how
far behind its tenant really is until they are applied; they are due at once
and, like retried entries, carry a ``next_attempt_at``, which is how the lag
probe finds them among newer ids), and clears the
"degraded" mark of every shop left with no dead letter. If the cause was not
repaired, the entries fail their retries again and come back here: nothing
is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from pgtenantproxy.lifecycle.audit import audit

_LIST = """
SELECT id, shop_id, tbl, pk::text AS pk, op::text AS op, captured_at, failed_at, attempts, error
FROM pgtenantproxy.dead_letters WHERE ($1::bigint IS NULL OR shop_id = $1) ORDER BY shop_id, id LIMIT $2
"""
_REPLAY = """
WITH moved AS (
    DELETE FROM pgtenantproxy.dead_letters WHERE ($1::bigint IS NULL OR shop_id = $1)
    RETURNING shop_id, tbl, pk, op, txid, captured_at)
INSERT INTO pgtenantproxy.outbox (shop_id, tbl, pk, op, txid, captured_at, next_attempt_at)
SELECT shop_id, tbl, pk, op, txid, captured_at, clock_timestamp() FROM moved
"""
_CLEAR = """
UPDATE pgtenantproxy.mirror_state AS m SET degraded = false, cause = NULL, reason = NULL, degraded_at = NULL,
       updated_at = now()
WHERE m.degraded AND m.cause = 'dead_letters' AND ($1::bigint IS NULL OR m.shop_id = $1)
  AND NOT EXISTS (SELECT 1 FROM pgtenantproxy.dead_letters d WHERE d.shop_id = m.shop_id)
"""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    shop_id: int
    table: str
    key: str
    op: str
    captured_at: datetime
    failed_at: datetime
    attempts: int
    error: str


async def list_dead_letters(
    conn: asyncpg.Connection | asyncpg.Pool, shop_id: int | None = None, *, limit: int = 1000
) -> list[DeadLetter]:
    rows = await conn.fetch(_LIST, shop_id, limit)
    return [
        DeadLetter(r["id"], r["shop_id"], r["tbl"], r["pk"], r["op"], r["captured_at"], r["failed_at"],
                   r["attempts"], r["error"])
        for r in rows
    ]


async def count_dead_letters(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, int]:
    rows = await conn.fetch("SELECT shop_id, count(*) AS n FROM pgtenantproxy.dead_letters GROUP BY shop_id")
    return {int(r["shop_id"]): int(r["n"]) for r in rows}


async def replay(conn: asyncpg.Connection, shop_id: int | None = None) -> int:
    """Move dead letters back to the outbox; returns how many. Clears "degraded" where none are left."""
    async with conn.transaction():
        status = await conn.execute(_REPLAY, shop_id)
        moved = int(status.split()[-1])
        await conn.execute(_CLEAR, shop_id)
        await audit(conn, shop_id=shop_id, action="dlq-replay", status="done",
                    detail=f"{moved} dead letters moved back to the outbox")
    return moved
