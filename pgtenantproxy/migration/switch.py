"""The fenced switch of a shop's writes from one database to the other (cutover and its rollback).

One procedure for both directions: ``source`` is the database that has the
shop's writes now (unified for a cutover, the tenant database for a rollback),
``target`` the one that gets them; ``drain`` waits for the mirror that runs
source -> target. Steps, all inside one deadline (``[migration]
fence_timeout_ms``, counted from the hold):

1. **hold**: every proxy holds the shop's new write transactions
   (:func:`.store.set_fence`, with a deadline so a dead holder releases by
   itself) and the source database's fence row says ``holding``; then wait until
   every live proxy instance has acknowledged the hold (:mod:`.instances`);
2. **writers**: the source fence's exclusive lock: waits for the transactions
   that wrote the shop and are still open; new ones queue behind it. A
   statement queued there was sent by a proxy just before it acknowledged the
   hold (its transaction began on the source): the lock is let go until such
   stragglers are through, then taken again;
3. **drain**: the keys still pending in the source's outbox are noted, then the
   mirror drains them to zero;
4. **check**: exactly those keys are compared on both sides (row hashes);
5. **prepare**: the direction's own step (a cutover reserves ids);
6. **flip**: the phase moves (one fenced update, its epoch; in the same
   transaction the direction's ``on_flip`` writes what must be durable before the
   target takes writes: a cutover records its id blocks), the source fence
   becomes ``closed`` (writes there fail with 55000, except the mirror's) and the
   target's fence is opened; then wait until every live proxy has seen the flip;
7. **release**: statements queued at the source fence are cancelled (their
   transactions began before the switch), the lock is released, the proxies'
   hold is cleared: held transactions run on the target.

A failure or the deadline before the flip aborts: the source fence opens, the
lock is released, the hold cleared; the shop is where it was and nothing was
lost (every write either committed on the source before the hold, and is
mirrored, or waited and then ran on the source). After the flip the switch
completes (its remaining steps only release).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pgtenantproxy.dualwrite import fence
from pgtenantproxy.dualwrite.schema import FENCE_WRITE
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.instances import wait_seen
from pgtenantproxy.lifecycle.phases import ShopPhase
from pgtenantproxy.lifecycle.store import set_fence, transition
from pgtenantproxy.migration.cutover_report import ABORTED, DONE, FenceResult
from pgtenantproxy.migration.dirty import differing_keys, dirty_keys
from pgtenantproxy.tenancy.control_schema import shop_lock_key

logger = logging.getLogger(__name__)


#: Pause between letting late writers through and taking the fence lock again.
STRAGGLER_PAUSE_S = 0.02
_WAITERS = """
SELECT count(*) FROM pg_locks l
WHERE l.locktype = 'advisory' AND NOT l.granted AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 2
"""


class Abort(MigrationError):
    """A step of the switch failed before the flip: everything is undone."""


@dataclass
class SwitchPlan:
    shop_id: int
    record: ShopPhase  # read before; the flip is fenced on its version
    target_phase: str
    unified: asyncpg.Connection  # dedicated sessions (they hold session locks)
    tenant: asyncpg.Connection
    source_is_unified: bool
    drain: Callable[[float], Awaitable[bool]]  # wait (timeout s) until source -> target is drained
    tables: list[TableInfo]
    prepare: Callable[[], Awaitable[dict[str, Any]]] | None = None
    action: str = "cutover"
    #: Runs on the control connection inside the flip's transaction, before the phase moves.
    on_flip: Callable[[asyncpg.Connection], Awaitable[None]] | None = None

    @property
    def source(self) -> asyncpg.Connection:
        return self.unified if self.source_is_unified else self.tenant

    @property
    def target(self) -> asyncpg.Connection:
        return self.tenant if self.source_is_unified else self.unified


@dataclass
class _Clock:
    deadline_s: float
    started: float = field(default_factory=time.monotonic)
    mark: float = field(default_factory=time.monotonic)
    steps: dict[str, float] = field(default_factory=dict)

    def remaining(self) -> float:
        return max(0.05, self.deadline_s - (time.monotonic() - self.started))

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = (now - self.mark) * 1000
        self.mark = now


async def run_switch(
    control: asyncpg.Connection, plan: SwitchPlan, *, fence_timeout_s: float, ack_timeout_s: float,
    actor: str | None,
) -> FenceResult:
    """Run the steps of the module doc; returns DONE or ABORTED (with why). Other errors propagate
    (before the flip, after undoing the fence)."""
    shop = plan.shop_id
    clock = _Clock(fence_timeout_s)
    await set_fence(control, shop, hold_s=fence_timeout_s + ack_timeout_s + 2.0, actor=actor,
                    expect_version=plan.record.version)
    locked = flipped = False
    result = FenceResult(shop, ABORTED, plan.record.phase)
    try:
        await fence.hold(plan.source, shop, reason=f"{plan.action}: writes held")
        locked = await _quiesce(control, plan, clock, ack_timeout_s)
        extra = await _converge(plan, clock)
        record = await _flip(control, plan, actor)
        flipped = True
        clock.step("flip")
        await _after_flip(control, plan, record, extra, ack_timeout_s)
        clock.step("flip_acknowledged")
        result = FenceResult(shop, DONE, record.phase, extra=extra)
    except Abort as exc:
        logger.warning("shop %s: %s aborted: %s; nothing changed", shop, plan.action, exc)
        result.detail = str(exc)
    finally:
        if not flipped:
            await fence.open_(plan.source, shop)
        if locked and not plan.source.is_closed():
            await fence.release_exclusive(plan.source, shop)
        await set_fence(control, shop, hold_s=None, actor=actor)
        clock.step("release")
        result.steps_ms = clock.steps
        result.pause_s = time.monotonic() - clock.started
        logger.info("shop %s: %s held its writes for %.0f ms", shop, plan.action, result.pause_s * 1000)
    return result


async def _after_flip(control: asyncpg.Connection, plan: SwitchPlan, record: ShopPhase,
                      extra: dict[str, Any], ack_timeout_s: float) -> None:
    """Every proxy sees the flip (or is left to the database fences), then the queued writers go."""
    late = await wait_seen(control, record.epoch, timeout_s=ack_timeout_s)
    if late:
        logger.warning("shop %s: proxy instances %s did not acknowledge the flip in time; the database "
                       "fences refuse what they would still send to the old side",
                       plan.shop_id, ", ".join(late))
    extra["cancelled_waiters"] = await fence.cancel_waiters(plan.source, plan.shop_id)


async def _quiesce(
    control: asyncpg.Connection, plan: SwitchPlan, clock: _Clock, ack_timeout_s: float
) -> bool:
    """Steps 1-2: every proxy holds, no open transaction has written the shop. True: the lock is held."""
    held = await _current_epoch_of(control, plan.shop_id)
    late = await wait_seen(control, held, timeout_s=min(ack_timeout_s, clock.remaining()))
    if late:
        raise Abort(f"proxy instances {', '.join(late)} did not acknowledge the hold "
                    f"within {ack_timeout_s:g} s")
    clock.step("hold_acknowledged")
    while True:
        if not await fence.acquire_exclusive(plan.source, plan.shop_id, timeout_s=clock.remaining()):
            raise Abort(f"transactions writing shop {plan.shop_id} were still open when the fence timed out")
        if not await _waiting(plan.source, plan.shop_id):
            break
        # A statement a proxy had already sent before it acknowledged the hold is queued behind our
        # lock: its transaction began on the source and must finish there. Let it through, take the
        # lock again (the proxies hold everything new meanwhile).
        await fence.release_exclusive(plan.source, plan.shop_id)
        await asyncio.sleep(STRAGGLER_PAUSE_S)
    clock.step("writers_done")
    return True


async def _waiting(conn: asyncpg.Connection, shop_id: int) -> int:
    """Sessions queued for the shop's write-fence lock (writers that reached the database late)."""
    return int(await conn.fetchval(_WAITERS, FENCE_WRITE, shop_lock_key(shop_id) & 0xFFFFFFFF))


async def _converge(plan: SwitchPlan, clock: _Clock) -> dict[str, Any]:
    """Steps 3-5: drain, compare the last changed keys, prepare."""
    shop = plan.shop_id
    keys = await dirty_keys(plan.source, shop)
    if not await plan.drain(clock.remaining()):
        raise Abort(f"the mirror of shop {shop} did not drain before the fence timed out (or it is degraded)")
    clock.step("drained")
    differ = await differing_keys(plan.unified, plan.tenant, plan.tables, keys, shop)
    if differ:
        listed = "; ".join(f"{t}: {', '.join(k[:5])}" for t, k in differ.items())
        raise Abort(f"shop {shop}: rows differ after the drain ({listed})")
    clock.step("checked")
    extra: dict[str, Any] = {"dirty_keys": sum(len(k) for k in keys.values())}
    if plan.prepare is not None:
        extra.update(await plan.prepare())
        clock.step("prepared")
    return extra


async def _flip(control: asyncpg.Connection, plan: SwitchPlan, actor: str | None) -> ShopPhase:
    """Step 6: the phase (with ``on_flip`` in its transaction), then the fences (source closed, target
    open)."""
    async with control.transaction():
        if plan.on_flip is not None:
            await plan.on_flip(control)
        flipped = await transition(control, plan.shop_id, plan.target_phase,
                                   expect_version=plan.record.version,
                                   reason=f"{plan.action}: writes switched", actor=actor, action=plan.action)
    await fence.close(plan.source, plan.shop_id, reason=f"{plan.action}: writes go to the other database")
    await fence.open_(plan.target, plan.shop_id)
    return flipped


async def _current_epoch_of(control: asyncpg.Connection, shop_id: int) -> int:
    return int(await control.fetchval(
        "SELECT epoch FROM pgtenantproxy.shop_phases WHERE shop_id = $1", shop_id))
