"""The phase keeper: applies :func:`.automatic.automatic_move` to every shop, in one proxy at a time.

Runs in the proxy next to write mirroring. Several proxy instances may run
it; the one holding the session advisory lock ``(KEEPER_LOCK, 0)`` on unified
is the leader and the only one making moves (the others retry the lock every
interval, so a leader that dies is replaced within about one interval). Each
move is a fenced :func:`.store.transition` on the version the keeper read: a
shop an operator moved meanwhile is left alone (the conflict is logged at
debug level and the shop looked at again next time).

While it leads, the keeper also refills id blocks (:mod:`.id_refill`) when it
was given an :class:`~.id_refill.IdBlockRefiller`: a task of its own, every
``[migration] id_block_refill_interval_s``, so a slow round over many tenant
databases never delays the phase moves.

Facts come from this instance: the mirror status poller (lag, degraded) and
the current read strategy with its overrides. Degraded reasons are read from
``pgtenantproxy.mirror_state``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from pgtenantproxy.dualwrite.errors import describe
from pgtenantproxy.dualwrite.status import StatusBook
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phases, transition
from pgtenantproxy.migration.automatic import MirrorFacts, automatic_move
from pgtenantproxy.migration.id_refill import IdBlockRefiller

logger = logging.getLogger(__name__)

KEEPER_LOCK = 0x50475455
ACTOR = "pgtenantproxy keeper"


class PhaseKeeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        status: StatusBook,
        selected: Callable[[int], bool],
        *,
        interval_s: float = 0.5,
        refiller: IdBlockRefiller | None = None,
    ) -> None:
        self.pool = pool
        self.status = status
        self.selected = selected
        self.interval_s = interval_s
        self.refiller = refiller
        self.leader = False
        self.moves = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Lead when the lock is free, until :meth:`stop`; failures are logged and retried."""
        self._stopping.clear()
        while not self._stopping.is_set():
            try:
                async with self.pool.acquire() as conn:
                    await self._lead(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("phase keeper: %s; retrying", describe(exc))
            self.leader = False
            await self._pause()

    def stop(self) -> None:
        self._stopping.set()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, 0)", KEEPER_LOCK):
            return
        self.leader = True
        refill = (None if self.refiller is None else
                  asyncio.get_running_loop().create_task(self._refill(self.refiller), name="id-block-refill"))
        try:
            while not self._stopping.is_set():
                await self.tick(conn)
                await self._pause()
        finally:
            if refill is not None:
                refill.cancel()
                await asyncio.gather(refill, return_exceptions=True)
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1, 0)", KEEPER_LOCK)

    async def tick(self, conn: asyncpg.Connection) -> list[ph.ShopPhase]:
        """One round over every recorded shop; returns the moves made."""
        records = await read_phases(conn)
        reasons = {
            int(r["shop_id"]): f"{r['cause']}: {r['reason']}"
            for r in await conn.fetch(
                "SELECT shop_id, cause, reason FROM pgtenantproxy.mirror_state WHERE degraded"
            )
        }
        moved: list[ph.ShopPhase] = []
        for shop, record in records.items():
            facts = MirrorFacts(
                caught_up=self.status.caught_up(shop),
                degraded=self.status.degraded(shop) or shop in reasons,
                degraded_reason=reasons.get(shop),
            )
            move = automatic_move(record, facts, selected=self.selected(shop))
            if move is None:
                continue
            try:
                moved.append(await transition(conn, shop, move[0], reason=move[1], actor=ACTOR,
                                              expect_version=record.version, action="keeper"))
            except MigrationError as exc:
                logger.debug("phase keeper: shop %s: %s", shop, exc)
                continue
            logger.info("shop %s: %s -> %s (%s)", shop, record.phase, move[0], move[1])
        self.moves += len(moved)
        return moved

    async def _refill(self, refiller: IdBlockRefiller) -> None:
        """Id block refills every ``id_block_refill_interval_s`` while this instance leads."""
        while not self._stopping.is_set():
            try:
                await refiller.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("id block refill: %s; retrying", describe(exc))
            await self._pause(refiller.interval_s)

    async def _pause(self, seconds: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), self.interval_s if seconds is None else seconds)
        except TimeoutError:
            pass
