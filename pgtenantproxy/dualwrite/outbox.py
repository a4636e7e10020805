"""Reading and settling a shop's outbox entries, as dirty keys.

A batch is the shop's oldest ``limit`` *due* entries by id (never tried, or
their retry time has come), *as visible in the snapshot of the claiming
transaction*: no id high-water mark is kept, so an entry whose id was drawn
early but committed late is simply seen by a later batch. Entries waiting for
a retry are passed over, so they never hold back the others. Entries are
grouped by (table, key): ten updates of one row are one sync, charged as one
try (the key's attempt count is the highest of its entries').

Settling happens in the claiming transaction, after the target committed:
entries of synced keys are deleted (``finish``), entries of failed keys get
their attempt count and next try (``reschedule``) or move to the dead letters
(``dead_letter``, which also marks the shop degraded). If that transaction
is lost, the entries stay and are synced again: harmless, syncing is
idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

_CLAIM = """
SELECT id, tbl, pk::text AS pk, attempts, attempts = 0 AND next_attempt_at IS NULL AS fresh,
       extract(epoch FROM clock_timestamp() - captured_at)::float8 AS age_s
FROM pgtenantproxy.outbox
WHERE shop_id = $1 AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp())
ORDER BY id LIMIT $2
"""
_FINISH = """
WITH done AS (DELETE FROM pgtenantproxy.outbox WHERE shop_id = $1 AND id = ANY($2::bigint[]) RETURNING id)
INSERT INTO pgtenantproxy.mirror_state AS m (shop_id, applied_entries, last_applied_at)
SELECT $1, count(*), clock_timestamp() FROM done
ON CONFLICT (shop_id) DO UPDATE SET
    applied_entries = m.applied_entries + excluded.applied_entries,
    last_applied_at = excluded.last_applied_at,
    degraded = m.degraded AND m.cause IS DISTINCT FROM 'unreachable',
    cause = CASE WHEN m.cause = 'unreachable' THEN NULL ELSE m.cause END,
    reason = CASE WHEN m.cause = 'unreachable' THEN NULL ELSE m.reason END,
    degraded_at = CASE WHEN m.cause = 'unreachable' THEN NULL ELSE m.degraded_at END,
    updated_at = now()
"""
_RESCHEDULE = """
UPDATE pgtenantproxy.outbox AS o SET attempts = u.attempts,
       next_attempt_at = clock_timestamp() + u.delay_ms * interval '1 millisecond', last_error = u.error
FROM unnest($2::bigint[], $3::int[], $4::int[], $5::text[]) AS u(id, attempts, delay_ms, error)
WHERE o.shop_id = $1 AND o.id = u.id
"""
_DEAD_LETTER = """
WITH gone AS (
    DELETE FROM pgtenantproxy.outbox AS o
    USING unnest($2::bigint[], $3::int[], $4::text[]) AS u(id, attempts, error)
    WHERE o.shop_id = $1 AND o.id = u.id
    RETURNING o.id, o.shop_id, o.tbl, o.pk, o.op, o.txid, o.captured_at, u.attempts, u.error)
INSERT INTO pgtenantproxy.dead_letters (id, shop_id, tbl, pk, op, txid, captured_at, attempts, error)
SELECT id, shop_id, tbl, pk, op, txid, captured_at, attempts, error FROM gone
ON CONFLICT (id) DO NOTHING
"""
MARK_DEGRADED = """
INSERT INTO pgtenantproxy.mirror_state AS m (shop_id, degraded, cause, reason, degraded_at)
VALUES ($1, true, $2, $3, clock_timestamp())
ON CONFLICT (shop_id) DO UPDATE SET degraded = true,
    cause = CASE WHEN m.cause = 'dead_letters' THEN m.cause ELSE excluded.cause END,
    reason = CASE WHEN m.cause = 'dead_letters' AND excluded.cause <> 'dead_letters' THEN m.reason
                  ELSE excluded.reason END,
    degraded_at = coalesce(m.degraded_at, excluded.degraded_at), updated_at = now()
"""
DEAD_LETTERS = "dead_letters"
UNREACHABLE = "unreachable"


@dataclass
class KeyWork:
    """One dirty key of a batch: its entries, its source row once read, its outcome."""

    table: str
    key: str  # the jsonb key array as text, canonical
    entry_ids: list[int]
    attempts: int
    age_s: float  # age of its oldest entry when claimed (server clock)
    fresh: int  # entries never tried before (newly captured)
    row: str | None = None  # to_jsonb(row) text from the source; None when the row is gone
    error: str | None = None
    retryable: bool = False  # failed on a constraint that another key's sync may satisfy

    @property
    def deleting(self) -> bool:
        return self.row is None


@dataclass
class Claim:
    due: list[KeyWork] = field(default_factory=list)  # in order of their oldest entry
    claimed: int = 0  # entries read


def plan(rows: Sequence[asyncpg.Record]) -> Claim:
    """Group claimed entries into keys, in order of each key's oldest entry."""
    keys: dict[tuple[str, str], KeyWork] = {}
    for r in rows:
        k = (r["tbl"], r["pk"])
        work = keys.get(k)
        if work is None:
            work = keys[k] = KeyWork(r["tbl"], r["pk"], [], 0, r["age_s"], 0)
        work.entry_ids.append(r["id"])
        work.attempts = max(work.attempts, r["attempts"])
        work.age_s = max(work.age_s, r["age_s"])
        work.fresh += bool(r["fresh"])
    return Claim(due=list(keys.values()), claimed=len(rows))


async def claim(conn: asyncpg.Connection, shop_id: int, limit: int) -> Claim:
    return plan(await conn.fetch(_CLAIM, shop_id, limit))


async def finish(conn: asyncpg.Connection, shop_id: int, works: Sequence[KeyWork]) -> None:
    """Delete the entries of synced keys and record the progress (clears an "unreachable" mark)."""
    ids = [i for w in works for i in w.entry_ids]
    await conn.execute(_FINISH, shop_id, ids)


async def reschedule(
    conn: asyncpg.Connection, shop_id: int, items: Sequence[tuple[KeyWork, int, int]]
) -> None:
    """``items``: (key, new attempt count, delay in ms) for keys that will be tried again."""
    ids, attempts, delays, errors = [], [], [], []
    for work, n, delay in items:
        for i in work.entry_ids:
            ids.append(i)
            attempts.append(n)
            delays.append(delay)
            errors.append(work.error or "")
    await conn.execute(_RESCHEDULE, shop_id, ids, attempts, delays, errors)


async def dead_letter(conn: asyncpg.Connection, shop_id: int, items: Sequence[tuple[KeyWork, int]]) -> None:
    """Move the entries of keys that failed every try to the dead letters; the shop is degraded."""
    ids, attempts, errors = [], [], []
    for work, n in items:
        for i in work.entry_ids:
            ids.append(i)
            attempts.append(n)
            errors.append(work.error or "unknown error")
    await conn.execute(_DEAD_LETTER, shop_id, ids, attempts, errors)
    first = items[0][0]
    reason = f"{len(ids)} entries dead-lettered; first: {first.table} key {first.key}: {first.error}"
    await conn.execute(MARK_DEGRADED, shop_id, DEAD_LETTERS, reason[:2000])
