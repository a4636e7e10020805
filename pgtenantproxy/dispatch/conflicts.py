"""The readiness recorder's flusher: in-memory conflict counts into ``cutover_conflicts``.

The data path only adds to a :class:`~pgtenantproxy.routing.readiness.ConflictTally`
(no I/O); every :attr:`ConflictRecorder.interval` seconds the counts are taken
and upserted into ``pgtenantproxy.cutover_conflicts`` (``count += delta``,
``last_seen`` now; the first sample stays). A failed flush puts its counts
back, so they are written by a later one; :meth:`stop` flushes a last time.
Started and stopped by :class:`~pgtenantproxy.dispatch.runtime.RoutingRuntime`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.routing.readiness import ConflictTally

logger = logging.getLogger(__name__)

UPSERT = """
INSERT INTO pgtenantproxy.cutover_conflicts (shop_id, kind, fingerprint, sample, count)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (shop_id, kind, fingerprint)
DO UPDATE SET count = cutover_conflicts.count + EXCLUDED.count, last_seen = clock_timestamp()
"""


@dataclass
class ConflictRecorder:
    interval: float = 2.0
    tally: ConflictTally = field(default_factory=ConflictTally)
    flushed: int = 0
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def flush(self, pool: asyncpg.Pool) -> int:
        """Write what was counted since the last flush; returns the number of rows upserted."""
        async with self._lock:
            rows = self.tally.take()
            if not rows:
                return 0
            try:
                async with pool.acquire() as conn:
                    await conn.executemany(UPSERT, rows)
            except BaseException:
                self.tally.give_back(rows)
                raise
            self.flushed += len(rows)
            return len(rows)

    def start(self, pool: asyncpg.Pool) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(pool))

    async def _run(self, pool: asyncpg.Pool) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush(pool)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    logger.warning("cutover conflicts: flush failed (%s); keeping the counts", exc)

    async def stop(self, pool: asyncpg.Pool) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self.flush(pool), 5.0)
        except Exception as exc:
            logger.info("cutover conflicts: last flush failed: %s", exc)
