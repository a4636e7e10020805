"""Syncing one batch of one shop's dirty keys from a source database to a target database.

Direction-agnostic: the *source* holds the outbox and the rows (unified, or
a tenant database when mirroring runs the other way, :mod:`.reverse`), the
*target* has the same tables. A target that holds many shops (unified) is
written only where the rows are the shop's own (an upsert never takes over
another shop's row: :class:`KeyConflict`), and, with ``replica``, with its
own triggers off (``session_replication_role = replica``: unified's
application triggers and foreign key actions would otherwise change rows the
tenant did not change). One batch:

1. Target: ``BEGIN``; take the shop's *fence* (``pg_advisory_xact_lock(FENCE,
   shop)``, held until the target commits); ``SET LOCAL
   pgtenantproxy.mirror_apply = on`` (a captured target does not capture the
   mirror's own writes).
2. Source: ``BEGIN ISOLATION LEVEL REPEATABLE READ``; claim the oldest entries
   (:mod:`.outbox`) and read the current row of every due key, all in this one
   snapshot, taken *after* the fence was granted.
3. Target: in a savepoint, ``SET CONSTRAINTS ALL DEFERRED``; upsert the keys
   that exist (referenced tables first), then delete the keys that are gone
   (referencing tables first); ``SET CONSTRAINTS ALL IMMEDIATE`` (deferred
   checks run here, inside the savepoint). ``COMMIT``.
4. Source: settle the entries (delete / reschedule / dead-letter); ``COMMIT``.

Why it is safe:

* Idempotent and order-insensitive: a key is set to the source's *current*
  row, whatever happened before; replays, duplicates and the backfill overlap
  change nothing.
* One snapshot: all rows of a batch come from one consistent state of the
  source, so rows that reference each other arrive together.
* Upserts before deletes: the target's own foreign key *actions* (``ON DELETE
  CASCADE`` / ``SET NULL``) must not touch a row that still lives on the source.
  Every row the source still has and that changed is upserted to its current
  state first, so by the time a row is deleted nothing that survives on the
  source references it any more; what a delete cascades to is gone on the
  source too (and was captured there). Deleting after upserting can trip a
  unique constraint (a value moved from a deleted row to a new one): that is
  the case the key-by-key rounds below resolve.
* The fence: two appliers of one shop (a worker whose lease was lost with its
  connection, and its successor) serialise on the target. Whoever takes the
  fence second reads its snapshot after the first one's target commit, so
  the newer data is always written last: no lost update.
* Target before source: entries are deleted only after the target committed.
  A crash in between leaves them to be synced again.

When the batch fails on a data error (not a transient one, see
:mod:`.errors`), the savepoint is rolled back and the keys are applied one by
one, each in its own savepoint, with immediate constraints, in rounds: a key
that failed on an integrity constraint (a foreign key whose parent comes later
in the same batch, a unique value another key frees) is tried again in the
next round as long as the previous round made progress. What still fails is
charged one attempt; every other key is committed. So a broken table never
holds back, or dead-letters, another table's entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite import outbox
from pgtenantproxy.dualwrite.catalog import Catalog
from pgtenantproxy.dualwrite.errors import TargetUnavailable, describe, is_transient
from pgtenantproxy.dualwrite.outbox import Claim, KeyWork
from pgtenantproxy.dualwrite.retry import RetryPolicy
from pgtenantproxy.dualwrite.schema import APPLY_SETTING, FENCE_LOCK
from pgtenantproxy.dualwrite.sqlgen import (
    TableInfo,
    delete_sql,
    json_array,
    select_rows_sql,
    upsert_counts_rows,
    upsert_sql,
)
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.tenancy.control_schema import shop_lock_key

logger = logging.getLogger(__name__)

INTEGRITY_CLASS = "23"
MAX_ROUNDS = 20


class KeyConflict(Exception):
    """A key the source holds for the shop belongs to another shop's row on the target."""

    sqlstate = "23505"  # an integrity error: retried, then dead-lettered like any other

    def __init__(self, table: str, shop_id: int, rows: int, written: int) -> None:
        super().__init__(
            f"{table}: {rows - written} of {rows} keys of shop {shop_id} are held by another shop's rows "
            "on the target (ids handed out on both sides?)"
        )


class SourceReadError(Exception):
    """Reading one table's rows from the source failed on something other than the connection."""

    def __init__(self, table: str, cause: BaseException) -> None:
        super().__init__(f"reading {table} from the source: {describe(cause)}")
        self.table = table
        self.cause = cause


@dataclass
class BatchResult:
    claimed: int = 0  # entries read from the outbox
    synced: int = 0  # entries whose key was synced
    failed: int = 0  # entries whose key failed (rescheduled or dead-lettered)
    dead: int = 0  # entries dead-lettered


class ShopMoved(Exception):
    """The applier's guard says the shop may no longer be written on the target; nothing was applied."""

    def __init__(self, shop_id: int) -> None:
        super().__init__(f"shop {shop_id}: no longer mirrored in this direction; batch abandoned")
        self.shop_id = shop_id


class Applier:
    """Syncs batches of dirty keys for any source/target pair with the same tables."""

    def __init__(
        self,
        catalog: Catalog,
        policy: RetryPolicy,
        stats: MirrorStats,
        *,
        batch_size: int,
        lock_timeout_ms: int = 10000,
        replica: bool = False,
        guard: str | None = None,
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.stats = stats
        self.batch_size = batch_size
        self.lock_timeout_ms = lock_timeout_ms
        #: Target writes with session_replication_role = replica: the target's own triggers
        #: (the application's, foreign key actions) do not fire; every row is the source's.
        self.replica = replica
        #: SQL (``$1``: the shop) run on the target once its fence is held: false means the shop must not
        #: be written there any more (e.g. it left ``tenant_primary`` while this batch waited): the batch
        #: is abandoned, its entries stay queued (:class:`ShopMoved`).
        self.guard = guard

    async def run_batch(
        self, source: asyncpg.Connection, target: asyncpg.Connection, shop_id: int
    ) -> BatchResult:
        """One batch; raises TargetUnavailable, or a transient error of the source."""
        broken: dict[str, str] = {}  # source tables whose read failed: their keys are charged an attempt
        while True:
            try:
                return await self._run_once(source, target, shop_id, broken)
            except SourceReadError as exc:
                if exc.table in broken:
                    raise
                logger.warning("shop %s: %s", shop_id, exc)
                broken[exc.table] = str(exc)

    async def _run_once(
        self, source: asyncpg.Connection, target: asyncpg.Connection, shop_id: int, broken: dict[str, str]
    ) -> BatchResult:
        tables = await self.catalog.tables(source)
        started = time.monotonic()
        target_tx = target.transaction()
        try:
            await target_tx.start()
            await target.execute(self._fence_sql(shop_id))
            if self.guard is not None and not await target.fetchval(self.guard, shop_id):
                await target_tx.rollback()
                raise ShopMoved(shop_id)
        except ShopMoved:
            raise
        except Exception as exc:
            await _quietly_rollback(target_tx)
            _raise_unavailable_if_transient(shop_id, exc)
            raise
        source_tx = source.transaction(isolation="repeatable_read")
        target_done = False
        try:
            await source_tx.start()
            claim = await outbox.claim(source, shop_id, self.batch_size)
            if claim.due:
                await self._read(source, shop_id, tables, claim.due, broken)
                try:
                    await self._write(target, shop_id, tables, claim.due)
                    await target_tx.commit()
                except Exception as exc:
                    _raise_unavailable_if_transient(shop_id, exc)
                    raise
            else:
                await target_tx.rollback()
            target_done = True
            result = await self._settle(source, shop_id, claim)
            await source_tx.commit()
        except BaseException:
            await _quietly_rollback(source_tx)
            if not target_done:
                await _quietly_rollback(target_tx)
            raise
        if claim.due:
            self._observe(claim, time.monotonic() - started)
        return result

    def _fence_sql(self, shop_id: int) -> str:
        return (
            f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)};"
            f"SELECT pg_advisory_xact_lock({FENCE_LOCK}, {shop_lock_key(shop_id)});"
            f"SET LOCAL {APPLY_SETTING} = 'on'"
            + (";SET LOCAL session_replication_role = replica" if self.replica else "")
        )

    # --- source -------------------------------------------------------------
    async def _read(
        self,
        source: asyncpg.Connection,
        shop_id: int,
        tables: dict[str, TableInfo],
        works: Sequence[KeyWork],
        broken: dict[str, str],
    ) -> None:
        """Fill ``row`` of every due key from the source (one query per table, one snapshot)."""
        by_table: dict[str, list[KeyWork]] = {}
        for work in works:
            by_table.setdefault(work.table, []).append(work)
        for label, group in by_table.items():
            info = tables.get(label)
            problem = broken.get(label)
            if info is None:
                problem = f"{label}: not a captured table of the source (dropped, or its key changed)"
                self.catalog.invalidate()  # or captured since the catalog was read: the retry reloads it
            if problem is not None or info is None:
                for work in group:
                    work.error = problem
                continue
            try:
                rows = await source.fetch(
                    select_rows_sql(info), str(shop_id), json_array([w.key for w in group])
                )
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.catalog.invalidate()
                raise SourceReadError(label, exc) from exc
            for r in rows:
                group[r["ord"] - 1].row = r["row"]

    # --- target -------------------------------------------------------------
    async def _write(
        self, target: asyncpg.Connection, shop_id: int, tables: dict[str, TableInfo], works: Sequence[KeyWork]
    ) -> None:
        """All keys in one savepoint; on a data error, key by key (see the module docstring)."""
        ready = [w for w in works if w.error is None]
        try:
            async with target.transaction():
                await target.execute("SET CONSTRAINTS ALL DEFERRED")
                written = await self._write_all(target, shop_id, tables, ready)
                await target.execute("SET CONSTRAINTS ALL IMMEDIATE")
            self._count_rows(written)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.info("shop %s: batch of %d keys failed (%s); applying key by key",
                        shop_id, len(ready), describe(exc))
        self.catalog.invalidate()
        await target.execute("SET CONSTRAINTS ALL IMMEDIATE")
        await self._write_each(target, shop_id, tables, ready)

    def _ordered(self, works: Sequence[KeyWork]) -> list[tuple[str, list[KeyWork], bool]]:
        """(table, keys, deleting) groups: upserts referenced-first, then deletes referencing-first."""
        order = self.catalog.order
        rank = {label: i for i, label in enumerate(order)}
        labels = sorted({w.table for w in works}, key=lambda t: (rank.get(t, len(rank)), t))
        groups: list[tuple[str, list[KeyWork], bool]] = []
        for deleting, sequence in ((False, labels), (True, list(reversed(labels)))):
            for label in sequence:
                keys = [w for w in works if w.table == label and w.deleting == deleting]
                if keys:
                    groups.append((label, keys, deleting))
        return groups

    async def _write_all(
        self, target: asyncpg.Connection, shop_id: int, tables: dict[str, TableInfo], works: Sequence[KeyWork]
    ) -> list[KeyWork]:
        """Write every key (upserts, then deletes); returns them in the order written."""
        written: list[KeyWork] = []
        for label, keys, deleting in self._ordered(works):
            info = tables[label]
            if deleting:
                await target.execute(delete_sql(info), json_array([w.key for w in keys]), str(shop_id))
            else:
                rows = [w.row for w in keys if w.row is not None]
                status = await target.execute(upsert_sql(info), json_array(rows))
                count = int(status.split()[-1])
                if count < len(rows) and upsert_counts_rows(info):
                    raise KeyConflict(label, shop_id, len(rows), count)
            written += keys
        return written

    def _count_rows(self, works: Sequence[KeyWork]) -> None:
        deleted = sum(1 for w in works if w.deleting)
        self.stats.rows_deleted += deleted
        self.stats.rows_upserted += len(works) - deleted

    async def _write_each(
        self, target: asyncpg.Connection, shop_id: int, tables: dict[str, TableInfo], works: Sequence[KeyWork]
    ) -> None:
        pending = [w for _, keys, _ in self._ordered(works) for w in keys]
        for _ in range(MAX_ROUNDS):
            failed: list[KeyWork] = []
            for work in pending:
                try:
                    async with target.transaction():
                        await self._write_all(target, shop_id, tables, [work])
                    self._count_rows([work])
                    work.error, work.retryable = None, False
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    work.error = describe(exc)
                    work.retryable = (getattr(exc, "sqlstate", "") or "").startswith(INTEGRITY_CLASS)
                    failed.append(work)
            retry = [w for w in failed if w.retryable]
            if not retry or len(failed) == len(pending):
                return
            pending = retry

    # --- settling -----------------------------------------------------------
    async def _settle(self, source: asyncpg.Connection, shop_id: int, claim: Claim) -> BatchResult:
        result = BatchResult(claimed=claim.claimed)
        synced = [w for w in claim.due if w.error is None]
        failed = [w for w in claim.due if w.error is not None]
        retry: list[tuple[KeyWork, int, int]] = []
        dead: list[tuple[KeyWork, int]] = []
        for work in failed:
            n = work.attempts + 1
            if self.policy.exhausted(n):
                dead.append((work, n))
            else:
                retry.append((work, n, self.policy.delay_ms(n)))
        if synced:
            await outbox.finish(source, shop_id, synced)
        if retry:
            await outbox.reschedule(source, shop_id, retry)
        if dead:
            await outbox.dead_letter(source, shop_id, dead)
            logger.warning("shop %s: %d keys dead-lettered, shop degraded; first: %s %s: %s", shop_id,
                           len(dead), dead[0][0].table, dead[0][0].key, dead[0][0].error)
        result.synced = sum(len(w.entry_ids) for w in synced)
        result.failed = sum(len(w.entry_ids) for w in failed)
        result.dead = sum(len(w.entry_ids) for w, _ in dead)
        return result

    def _observe(self, claim: Claim, seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.apply_seconds.observe(seconds)
        for work in claim.due:
            n = len(work.entry_ids)
            stats.count("captured", work.table, work.fresh)
            if work.error is None:
                stats.count("mirrored", work.table, n)
                stats.observe_mirror(work.age_s + seconds)
            else:
                stats.count("failed", work.table, n)
                if self.policy.exhausted(work.attempts + 1):
                    stats.count("dead_lettered", work.table, n)
                else:
                    stats.count("retried", work.table, n)


def _raise_unavailable_if_transient(shop_id: int, exc: Exception) -> None:
    """A transient target failure becomes TargetUnavailable; anything else (a bug) is left to propagate."""
    if is_transient(exc):
        raise TargetUnavailable(shop_id, exc) from exc


async def _quietly_rollback(tx: asyncpg.transaction.Transaction) -> None:
    try:
        await tx.rollback()
    except Exception as exc:  # the connection is gone: the server rolled back already
        logger.debug("rollback failed: %s", describe(exc))
