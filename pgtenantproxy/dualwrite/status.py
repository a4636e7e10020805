"""Mirror lag, degraded shops and read-your-writes, for the router: synchronous answers from a cache.

A small poller reads the outbox of unified every ``status_interval_ms`` (one
query; the state is shared by every proxy instance and by workers running
anywhere, because it lives in the control schema). Between polls the router
asks, synchronously and for free:

* ``lag_ms(shop)``: age of the shop's oldest pending entry (0 when none),
  aged further by the time since the poll;
* ``degraded(shop)``: the shop has dead letters, or its tenant is unreachable;
* ``caught_up(shop, max_lag_ms)``: lag under the limit and not degraded;
* ``write_marker(shop)`` / ``applied(shop, marker)``: read-your-writes;
* ``readable(shop, marker)``: everything above at once (what a read needs).

If the poller has not succeeded for ``stale_after_s`` the answers turn
pessimistic (infinite lag, nothing applied): reads go to unified.

Read-your-writes with out-of-order commits
------------------------------------------
Outbox ids come from a sequence, so they are handed out in one order and may
commit in another: a high-water mark of ids would skip an entry that commits
late. Instead, a session takes ``marker = write_marker(shop)`` (the monotonic
time) right after its write to the shop *committed* (the answer reached the
client; for a transaction block, at its commit). Each poll records, along with
its local start time ``t``, the sequence's ``last_value`` ``S`` (read inside the
poll's query, so after ``t``; the sequence has ``CACHE 1``, so ``S`` bounds every
id handed out before) and, per shop, the smallest pending id.

The marker resolves to ``S_m``, the ``S`` of the first poll that started at or
after it. Every entry of the session's write has an id <= ``S_m`` (drawn before
the commit, hence before the poll) and is visible to every poll from then on
(committed before the poll's snapshot). So once a poll (that one or any
later) shows no pending entry of the shop with id <= ``S_m`` and the shop not
degraded, those entries are gone from the outbox, and an entry leaves the
outbox only after its key was committed on the tenant (or when it is
dead-lettered, which degrades the shop in the same transaction): the
write is on the tenant. Later writes (ids > ``S_m``) do not delay the answer.
A marker older than the poll history resolves to the oldest ``S`` kept, which
is larger, so the answer is only ever more cautious.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.dualwrite.errors import describe
from pgtenantproxy.dualwrite.stats import MirrorStats, ShopGauge

logger = logging.getLogger(__name__)

HISTORY = 256  # polls kept to resolve markers (~40 s at 150 ms)

COUNT_EVERY = 10  # queue sizes (a full count) are refreshed every this many polls

#: One probe per shop with pending entries, however long its queue: the smallest pending id and the
#: oldest capture time. The oldest entry is the smallest id, except entries that were retried or
#: replayed from the dead letters, which carry a next_attempt_at and are found by the partial index.
POLL_SQL = """
WITH RECURSIVE s(shop_id) AS (
    (SELECT shop_id FROM pgtenantproxy.outbox ORDER BY shop_id LIMIT 1)
    UNION ALL
    SELECT (SELECT o.shop_id FROM pgtenantproxy.outbox o
            WHERE o.shop_id > s.shop_id ORDER BY o.shop_id LIMIT 1)
    FROM s WHERE s.shop_id IS NOT NULL),
shops AS (
    SELECT s.shop_id, f.id AS min_id,
           least(f.captured_at, (SELECT min(r.captured_at) FROM pgtenantproxy.outbox r
                                 WHERE r.shop_id = s.shop_id AND r.next_attempt_at IS NOT NULL)) AS oldest
    FROM s CROSS JOIN LATERAL (SELECT o.id, o.captured_at FROM pgtenantproxy.outbox o
                               WHERE o.shop_id = s.shop_id ORDER BY o.id LIMIT 1) AS f
    WHERE s.shop_id IS NOT NULL)
SELECT (SELECT last_value FROM pgtenantproxy.outbox_id_seq) AS last_id,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(
            shop_id, min_id, extract(epoch FROM clock_timestamp() - oldest) * 1000)), '[]')::text
        FROM shops) AS pending,
       ARRAY(SELECT shop_id FROM pgtenantproxy.mirror_state WHERE degraded) AS degraded
"""
COUNT_SQL = "SELECT shop_id, count(*) AS n FROM pgtenantproxy.outbox GROUP BY shop_id"


@dataclass(frozen=True)
class WriteMarker:
    """Taken right after a session's write to ``shop_id`` committed."""

    shop_id: int
    taken_at: float  # time.monotonic()


@dataclass(frozen=True)
class ShopPending:
    min_id: int
    age_ms: float


@dataclass
class Snapshot:
    """What one poll saw."""

    started_at: float
    received_at: float
    last_id: int
    pending: dict[int, ShopPending] = field(default_factory=dict)
    degraded: frozenset[int] = frozenset()


class StatusBook:
    """The answers, from the snapshots recorded so far (no I/O: :class:`MirrorStatus` feeds it)."""

    def __init__(
        self,
        *,
        max_lag_ms: float = 1000.0,
        stale_after_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag_ms = max_lag_ms
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._latest: Snapshot | None = None
        self.counts: dict[int, int] = {}
        self._starts: deque[float] = deque(maxlen=HISTORY)
        self._last_ids: deque[int] = deque(maxlen=HISTORY)

    def record(self, snap: Snapshot) -> bool:
        """Keep a poll's snapshot; False (ignored) when a poll that started later was recorded already."""
        if self._latest is not None and snap.started_at < self._latest.started_at:
            return False
        self._latest = snap
        self._starts.append(snap.started_at)
        self._last_ids.append(snap.last_id)
        return True

    # --- the router's API (synchronous) -----------------------------------------
    def lag_ms(self, shop_id: int) -> float:
        snap = self._fresh()
        if snap is None:
            return float("inf")
        pending = snap.pending.get(shop_id)
        if pending is None:
            return 0.0
        return pending.age_ms + (self._clock() - snap.received_at) * 1000

    def queue_size(self, shop_id: int) -> int:
        """Entries pending for the shop (counted every few polls; 0 once none is pending)."""
        snap = self._latest
        if snap is None or shop_id not in snap.pending:
            return 0
        return max(1, self.counts.get(shop_id, 1))

    def degraded(self, shop_id: int) -> bool:
        snap = self._latest
        return snap is not None and shop_id in snap.degraded

    def caught_up(self, shop_id: int, max_lag_ms: float | None = None) -> bool:
        """Lag under ``max_lag_ms`` (default ``[dual_write] max_lag_ms``), not degraded, status fresh."""
        limit = self.max_lag_ms if max_lag_ms is None else max_lag_ms
        return not self.degraded(shop_id) and self.lag_ms(shop_id) < limit

    def write_marker(self, shop_id: int) -> WriteMarker:
        return WriteMarker(shop_id, self._clock())

    def applied(self, shop_id: int, marker: WriteMarker) -> bool:
        """True once every outbox entry of ``shop_id`` committed before ``marker`` was applied."""
        snap = self._fresh()
        if snap is None or shop_id in snap.degraded:
            return False
        i = bisect.bisect_left(self._starts, marker.taken_at)
        if i == len(self._starts):
            return False  # no poll started after the write yet
        bound = self._last_ids[i]
        pending = snap.pending.get(shop_id)
        return pending is None or pending.min_id > bound

    def readable(self, shop_id: int, marker: WriteMarker | None = None) -> bool:
        """May a read of ``shop_id`` go to its tenant database (as far as mirroring is concerned)?"""
        if not self.caught_up(shop_id):
            return False
        return marker is None or self.applied(shop_id, marker)

    def _fresh(self) -> Snapshot | None:
        snap = self._latest
        if snap is None or self._clock() - snap.received_at > self.stale_after_s:
            return None
        return snap



class MirrorStatus(StatusBook):
    """:class:`StatusBook` kept fresh by polling unified: :meth:`run` (or :meth:`poll` by hand)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval_s: float = 0.15,
        max_lag_ms: float = 1000.0,
        stale_after_s: float | None = None,
        stats: MirrorStats | None = None,
    ) -> None:
        stale = stale_after_s if stale_after_s is not None else max(2.0, 10 * interval_s)
        super().__init__(max_lag_ms=max_lag_ms, stale_after_s=stale)
        self.pool = pool
        self.interval_s = interval_s
        self.stats = stats
        self._stopping = asyncio.Event()
        self._polls = 0
        self.ready = asyncio.Event()

    async def poll(self) -> Snapshot:
        """Read the state once (raises on failure)."""
        started = self._clock()
        row = await self.pool.fetchrow(POLL_SQL)
        snap = _snapshot(row, started, self._clock())
        if not self.record(snap):
            assert self._latest is not None
            return self._latest
        if self._polls % COUNT_EVERY == 0:
            self.counts = {int(r["shop_id"]): int(r["n"]) for r in await self.pool.fetch(COUNT_SQL)}
        self._polls += 1
        if self.stats is not None:
            self.stats.set_queues({
                shop: ShopGauge(self.queue_size(shop), p.age_ms / 1000) for shop, p in snap.pending.items()
            })
        self.ready.set()
        return snap

    async def run(self) -> None:
        """Poll every ``interval_s`` until :meth:`stop`; failures are logged and retried."""
        self._stopping.clear()
        failing = False
        while not self._stopping.is_set():
            try:
                await self.poll()
                if failing:
                    logger.info("mirror status: polling works again")
                failing = False
            except Exception as exc:
                if not failing:
                    logger.warning("mirror status: poll failed (%s); reads fall back to unified",
                                   describe(exc))
                failing = True
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()


def _snapshot(row: asyncpg.Record, started: float, received: float) -> Snapshot:
    pending = {
        int(shop): ShopPending(int(min_id), float(age)) for shop, min_id, age in json.loads(row["pending"])
    }
    degraded = frozenset(int(s) for s in row["degraded"])
    return Snapshot(started, received, int(row["last_id"]), pending, degraded)
