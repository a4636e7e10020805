"""The mirror worker: drains the unified outbox into the shops' tenant databases.

An asyncio task (inside the proxy, or ``pgtenantproxy mirror`` on its own).
Every ``poll_interval_ms`` it *discovers* the shops that have work (a loose
index scan of the outbox key: one probe per shop, however long the queue):
a shop has work when it has a never-tried entry, or a retry whose time has
come. Each such shop is drained by its own task, at most ``concurrency`` at
a time (shops in line start as slots free up), batch after batch
(:class:`~pgtenantproxy.dualwrite.apply.Applier`), until a batch comes back
short. The outbox is a queue, so its dead rows pile up faster than
autovacuum (which visits a table once a minute at best) removes them; the
worker runs ``VACUUM`` on it itself after every few ten thousand deletions
(one worker at a time).

Several workers (several proxy instances) run safely at once:

* *lease*: a worker drains a shop only while it holds the session advisory
  lock ``(LEASE_LOCK, shop)`` on unified (``pg_try_advisory_lock``: a shop
  leased elsewhere is skipped, not waited for). Its claims therefore never
  overlap another worker's.
* *fence*: if a lease is lost with its connection while that worker still
  writes, the target-side fence of the applier orders the two writers (see
  :mod:`.apply`).

Failures: a transient target failure (server down, restarting, out of
connections) backs the *shop* off on the retry schedule, charging no entry;
after ``retry_attempts`` failures in a row the shop is marked degraded
("unreachable") until its next successful batch. Entry-level failures are
the applier's. A failure on unified backs the whole worker off.

Shops without registered credentials have no tenant database to mirror to:
their entries are pruned by one statement that checks, in its own snapshot,
that the shop is still unregistered, so an entry committed after the shop was
registered (and therefore possibly after its backfill snapshot) is never
removed. Only shops whose tenant database holds a complete copy are
mirrored: phase ``backfilled``, ``mirroring`` or ``reads_on_tenant``
(also while ``degraded`` or ``failed`` in one of those). The entries of
the others (``provisioned``: nothing copied yet, where keys would miss
their foreign keys; ``backfilling``) wait until their backfill is complete,
as do shops the ``eligible`` hook turns down; the backfill also holds the
shop's lease while it copies, so a worker acting on an older view still waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.config import DualWriteSection
from pgtenantproxy.dualwrite.apply import Applier
from pgtenantproxy.dualwrite.catalog import Catalog
from pgtenantproxy.dualwrite.errors import TargetUnavailable, describe, is_transient
from pgtenantproxy.dualwrite.outbox import MARK_DEGRADED, UNREACHABLE
from pgtenantproxy.dualwrite.retry import RetryPolicy
from pgtenantproxy.dualwrite.schema import LEASE_LOCK, SCHEMA_LOCK
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.dualwrite.targets import TenantTargets
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from pgtenantproxy.tenancy.errors import UnknownTenantError

logger = logging.getLogger(__name__)

MAX_BATCHES_PER_TURN = 20  # then the shop goes back in line, so one busy shop cannot starve the rest
PRUNE_EVERY_S = 5.0
VACUUM_AFTER_ENTRIES = 20000
VACUUM_EVERY_S = 5.0

DISCOVER_SQL = """
WITH RECURSIVE s(shop_id) AS (
    (SELECT shop_id FROM pgtenantproxy.outbox ORDER BY shop_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.shop_id FROM pgtenantproxy.outbox o
            WHERE o.shop_id > s.shop_id ORDER BY o.shop_id LIMIT 1)
    FROM s WHERE s.shop_id IS NOT NULL)
SELECT s.shop_id,
       EXISTS (SELECT 1 FROM pgtenantproxy.outbox o WHERE o.shop_id = s.shop_id AND o.next_attempt_at IS NULL)
           AS fresh,
       (SELECT min(o.next_attempt_at) <= clock_timestamp() FROM pgtenantproxy.outbox o
         WHERE o.shop_id = s.shop_id AND o.next_attempt_at IS NOT NULL) AS retry_due,
       EXISTS (SELECT 1 FROM pgtenantproxy.tenant_credentials c WHERE c.shop_id = s.shop_id AND c.active)
           AS registered,
       EXISTS (SELECT 1 FROM pgtenantproxy.shop_phases p WHERE p.shop_id = s.shop_id
               AND CASE WHEN p.phase IN ('degraded', 'failed') THEN p.resume_phase ELSE p.phase END
                   IN ('backfilled', 'mirroring', 'reads_on_tenant')) AS mirrored
FROM s WHERE s.shop_id IS NOT NULL
"""
PRUNE_SQL = """
DELETE FROM pgtenantproxy.outbox o WHERE o.shop_id = $1
AND NOT EXISTS (SELECT 1 FROM pgtenantproxy.tenant_credentials c WHERE c.shop_id = $1 AND c.active)
"""


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    marked: bool = False


class MirrorWorker:
    """Drains the outbox of the unified database (``pool``) into tenant databases (``targets``)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        targets: TenantTargets,
        section: DualWriteSection,
        stats: MirrorStats | None = None,
        *,
        eligible: Callable[[int], bool] | None = None,
    ) -> None:
        self.pool = pool
        self.targets = targets
        self.section = section
        self.stats = stats or MirrorStats()
        self.policy = RetryPolicy.from_config(section)
        self.applier = Applier(Catalog(), self.policy, self.stats, batch_size=section.batch_size)
        self.eligible = eligible
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._backoff: dict[int, _Backoff] = {}
        self._pruned_at: dict[int, float] = {}
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._deleted = 0  # outbox entries removed since the last VACUUM
        self._vacuumed_at = 0.0
        self._vacuum: asyncio.Task[None] | None = None
        self._last_started = -1  # the shop whose drain started last (round-robin)

    # --- lifecycle ----------------------------------------------------------
    async def run(self) -> None:
        """Drain until :meth:`stop`; in-flight batches finish first."""
        self._stopping.clear()
        unified_failures = 0
        try:
            while not self._stopping.is_set():
                deadline = time.monotonic() + self.section.poll_interval_ms / 1000
                try:
                    queue = await self.candidates()
                    unified_failures = 0
                except Exception as exc:
                    if not is_transient(exc):
                        logger.exception("mirror worker: unexpected failure (retrying)")
                    unified_failures += 1
                    delay = self.policy.delay_ms(unified_failures) / 1000
                    logger.warning("mirror worker: unified unavailable (%s); retrying in %.1fs",
                                   describe(exc), delay)
                    await self._pause(delay)
                    continue
                await self._dispatch(queue, deadline)
                self._maybe_vacuum()
                await self._pause(deadline - time.monotonic())
        finally:
            pending = [*self._inflight.values(), *([self._vacuum] if self._vacuum else [])]
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()
        self._slot_free.set()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                pass

    # --- scheduling ---------------------------------------------------------
    async def candidates(self) -> list[int]:
        """Shops with work that this worker may drain now (unregistered shops are pruned)."""
        shops: list[int] = []
        now = time.monotonic()
        for row in await self.pool.fetch(DISCOVER_SQL):
            shop_id = int(row["shop_id"])
            if not row["registered"]:
                await self._prune(shop_id, now)
            elif not (row["fresh"] or row["retry_due"]) or shop_id in self._inflight:
                continue
            elif not row["mirrored"]:
                continue  # its entries wait until its backfill is complete (the backfill holds the lease)
            elif self._backoff.get(shop_id, _Backoff()).until > now:
                continue
            elif self.eligible is None or self.eligible(shop_id):
                shops.append(shop_id)
        return shops

    async def _dispatch(self, queue: list[int], deadline: float) -> None:
        """Start draining the queued shops as slots free up, until the next discovery is due.

        Round-robin: the queue (in shop order) starts after the shop that started last, so shops
        late in the order are not starved when a round ends before its queue does."""
        start = next((i for i, shop in enumerate(queue) if shop > self._last_started), 0)
        queue = queue[start:] + queue[:start]
        while queue and not self._stopping.is_set():
            while queue and len(self._inflight) < self.section.concurrency:
                shop_id = queue.pop(0)
                self._last_started = shop_id
                self._inflight[shop_id] = asyncio.get_running_loop().create_task(
                    self._drain_shop(shop_id), name=f"mirror-shop-{shop_id}"
                )
            remaining = deadline - time.monotonic()
            if not queue or remaining <= 0:
                return
            self._slot_free.clear()
            try:
                await asyncio.wait_for(self._slot_free.wait(), remaining)
            except TimeoutError:
                return

    def _maybe_vacuum(self) -> None:
        """VACUUM the outbox after many deletions (autovacuum looks at a table once a minute only)."""
        if self._deleted < VACUUM_AFTER_ENTRIES or time.monotonic() - self._vacuumed_at < VACUUM_EVERY_S:
            return
        if self._vacuum is not None and not self._vacuum.done():
            return
        self._deleted = 0
        self._vacuumed_at = time.monotonic()
        self._vacuum = asyncio.get_running_loop().create_task(self._vacuum_outbox(), name="mirror-vacuum")

    async def _vacuum_outbox(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, 2)", SCHEMA_LOCK):
                    return  # another worker is at it
                try:
                    await conn.execute("VACUUM (ANALYZE) pgtenantproxy.outbox")
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1, 2)", SCHEMA_LOCK)
        except Exception as exc:
            logger.warning("mirror worker: VACUUM of the outbox failed: %s", describe(exc))

    async def _prune(self, shop_id: int, now: float) -> None:
        if now - self._pruned_at.get(shop_id, -PRUNE_EVERY_S) < PRUNE_EVERY_S:
            return
        self._pruned_at[shop_id] = now
        status = await self.pool.execute(PRUNE_SQL, shop_id)
        count = int(status.split()[-1])
        if count:
            self.stats.totals["skipped_unprovisioned"] += count
            logger.info("shop %s has no tenant database: %d outbox entries not mirrored", shop_id, count)

    # --- one shop -----------------------------------------------------------
    async def _drain_shop(self, shop_id: int) -> None:
        try:
            await self._drain_leased(shop_id)
        except TargetUnavailable as exc:
            await self._unavailable(shop_id, exc)
        except UnknownTenantError:
            logger.info("shop %s: no longer registered; its entries wait", shop_id)
            self._back_off(shop_id)
        except Exception as exc:
            if is_transient(exc):
                logger.warning("shop %s: unified unavailable: %s", shop_id, describe(exc))
            else:
                logger.exception("shop %s: mirroring failed", shop_id)
            self._back_off(shop_id)
        finally:
            self._inflight.pop(shop_id, None)
            self._slot_free.set()

    async def _drain_leased(self, shop_id: int) -> None:
        key = shop_lock_key(shop_id)
        async with self.pool.acquire() as source:
            if not await source.fetchval("SELECT pg_try_advisory_lock($1, $2)", LEASE_LOCK, key):
                return  # another worker drains this shop right now
            try:
                for _ in range(MAX_BATCHES_PER_TURN):
                    async with self.targets.lease(shop_id) as target:
                        result = await self.applier.run_batch(source, target, shop_id)
                    self._deleted += result.synced + result.dead
                    self._recovered(shop_id)
                    if result.claimed < self.section.batch_size or self._stopping.is_set():
                        return
            finally:
                if not source.is_closed():
                    try:
                        await source.execute("SELECT pg_advisory_unlock($1, $2)", LEASE_LOCK, key)
                    except Exception as exc:  # the lease dies with the connection anyway
                        logger.debug("releasing the lease of shop %s: %s", shop_id, describe(exc))

    def _back_off(self, shop_id: int) -> _Backoff:
        state = self._backoff.setdefault(shop_id, _Backoff())
        state.failures += 1
        state.until = time.monotonic() + self.policy.delay_ms(state.failures) / 1000
        return state

    async def _unavailable(self, shop_id: int, exc: TargetUnavailable) -> None:
        self.stats.target_unavailable += 1
        state = self._back_off(shop_id)
        logger.warning("%s (failure %d, retrying in %.1fs)", exc, state.failures,
                       max(0.0, state.until - time.monotonic()))
        if self.policy.exhausted(state.failures) and not state.marked:
            try:
                await self.pool.execute(MARK_DEGRADED, shop_id, UNREACHABLE, str(exc)[:2000])
                state.marked = True
            except Exception as err:
                logger.warning("shop %s: could not record the degraded state: %s", shop_id, describe(err))

    def _recovered(self, shop_id: int) -> None:
        state = self._backoff.pop(shop_id, None)
        if state is not None and state.failures:
            logger.info("shop %s: target reachable again after %d failures", shop_id, state.failures)
