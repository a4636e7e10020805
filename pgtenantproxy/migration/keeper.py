"""The phase keeper: applies :func:`.automatic.automatic_move` to every shop, in one proxy at a time.

Runs in the proxy next to write mirroring. Several proxy instances may run
it; the one holding the session advisory lock ``(KEEPER_LOCK, 0)`` on unified
is the leader and the only one making moves (the others retry the lock every
interval, so a leader that dies is replaced within about one interval). Each
move is a fenced :func:`.store.transition` on the version the keeper read: a
shop an operator moved meanwhile is left alone (the conflict is logged at
debug level and the shop looked at again next time).

While it leads, the keeper also runs its *periodic jobs*, each a task of its
own (so a slow round over many tenant databases never delays the phase moves)
every ``job.interval_s``: id block refills (:mod:`.id_refill`, ``refiller=``,
every ``[migration] id_block_refill_interval_s``) and the refresh of cut-over
shops' foreign tables (:class:`~.federation.FederationKeeper`, every
``[federation] refresh_interval_s``), or any :class:`PeriodicJob` in ``jobs=``.
A job's failure is logged and the job runs again after its interval.

Facts come from this instance: the mirror status poller (lag, degraded) and
the current read strategy with its overrides. Degraded reasons are read from
``pgtenantproxy.mirror_state``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

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


class PeriodicJob(Protocol):
    """Work the leading keeper runs every ``interval_s`` (read again after each round: reloadable)."""

    @property
    def interval_s(self) -> float: ...

    async def run_once(self) -> Sequence[object]: ...


class PhaseKeeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        status: StatusBook,
        selected: Callable[[int], bool],
        *,
        interval_s: float = 0.5,
        refiller: IdBlockRefiller | None = None,
        jobs: Sequence[tuple[str, PeriodicJob]] = (),
    ) -> None:
        self.pool = pool
        self.status = status
        self.selected = selected
        self.interval_s = interval_s
        self.refiller = refiller
        #: (name, job): run while this instance leads (see the module doc).
        self.jobs: list[tuple[str, PeriodicJob]] = [
            *([("id block refill", refiller)] if refiller is not None else []), *jobs]
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
        loop = asyncio.get_running_loop()
        periodic = [loop.create_task(self._periodic(name, job), name=f"keeper: {name}")
                    for name, job in self.jobs]
        try:
            while not self._stopping.is_set():
                await self.tick(conn)
                await self._pause()
        finally:
            for task in periodic:
                task.cancel()
            await asyncio.gather(*periodic, return_exceptions=True)
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

    async def _periodic(self, name: str, job: PeriodicJob) -> None:
        """``job.run_once()`` every ``job.interval_s`` while this instance leads."""
        while not self._stopping.is_set():
            try:
                await job.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("%s: %s; retrying", name, describe(exc))
            await self._pause(job.interval_s)

    async def _pause(self, seconds: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), self.interval_s if seconds is None else seconds)
        except TimeoutError:
            pass
