"""Gauges read from the control schema: dead letters, degraded shops, capture, reference copies' lag.

They describe shared state (every proxy instance and mirror worker sees the
same tables), so each instance reads them itself, every ``interval``
seconds, on the control-plane pool. Before write mirroring was ever set up
the tables do not exist: :attr:`ControlGauges.available` stays false and
nothing is exported. The reference copies' lag per shop
(:func:`~pgtenantproxy.lifecycle.reference.reference_lag` of the tables that
``reference_tables`` returns) is read only while reference tables are
configured (else it is None). A failed poll keeps the last values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.lifecycle.reference import reference_lag as read_reference_lag

logger = logging.getLogger(__name__)

POLL_SQL = """
SELECT (SELECT count(*) FROM pgtenantproxy.dead_letters) AS dead_letters,
       (SELECT count(*) FROM pgtenantproxy.mirror_state WHERE degraded) AS degraded,
       (SELECT count(*) FROM pgtenantproxy.capture_tables WHERE active) AS capture
"""
EXISTS_SQL = "SELECT to_regclass('pgtenantproxy.dead_letters') IS NOT NULL"


@dataclass
class ControlGauges:
    pool: asyncpg.Pool
    interval: float = 5.0
    available: bool = False
    dead_letters: int = 0
    degraded_shops: int = 0
    capture_tables: int = 0
    #: The configured reference tables (labels), read at every poll.
    reference_tables: Callable[[], Sequence[str]] | None = None
    #: shop -> lag of its reference copies (shops with usable copies); None: no reference tables.
    reference_lag: dict[int, float] | None = None
    _task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        async with self.pool.acquire() as conn:
            tables = self.reference_tables() if self.reference_tables is not None else ()
            self.reference_lag = await read_reference_lag(conn, tables) if tables else None
            if not await conn.fetchval(EXISTS_SQL):
                self.available = False
                return
            row = await conn.fetchrow(POLL_SQL)
        self.dead_letters = int(row["dead_letters"])
        self.degraded_shops = int(row["degraded"])
        self.capture_tables = int(row["capture"])
        self.available = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="control-gauges")

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.poll()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logger.warning("control-schema gauges: poll failed (%s); keeping the last values", exc)
                failing = True
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
