"""The routed relay's tenant units: running them, pinned transactions, refusals and holds.

* A tenant unit runs on a pooled connection of its shop
  (:class:`~pgtenantproxy.server.tenant_batch.TenantBatch`) while the relay
  dispatches nothing else; a read that fails before any byte reached the
  client may fall back to unified.
* A *primary* unit (a ``tenant_primary`` shop's) never falls back; when its
  transaction is left open there (ReadyForQuery T/E) the connection is
  *pinned* to the session (:attr:`SessionFacts.pinned_shop`) until a
  ReadyForQuery I, and a deferred BEGIN is replayed on it first.
* A refusal is raised *by the server holding the session's transaction*
  (:func:`~pgtenantproxy.protocol.local_answers.refusal_unit`), so that
  transaction fails like after any error; a client that believes it is in a
  transaction no server has (deferred BEGIN, lost pinned connection) gets it
  raised inside a fresh transaction on unified.
* A hold waits (nothing is dispatched meanwhile) while the shop is held, then
  the unit is decided again; too long gives 55P03.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import error_response
from pgtenantproxy.protocol.framing import Message
from pgtenantproxy.protocol.local_answers import refusal_unit
from pgtenantproxy.protocol.messages import ReadyForQuery
from pgtenantproxy.server.tenant_batch import Outcome, TenantBatch
from pgtenantproxy.server.unified_side import UnifiedSide
from pgtenantproxy.server.unit_decision import (
    Decision,
    hold_timeout_error,
    primary_unavailable,
    tenant_unavailable,
)

logger = logging.getLogger(__name__)

#: How often a held unit looks whether its shop's hold has ended.
HOLD_POLL_S = 0.01
_BEGIN = Message(c.QUERY, b"BEGIN\x00")


class MovedTransactions(UnifiedSide):
    def dispose(self) -> None:
        """The session ended: a pinned tenant connection is closed (its transaction rolls back)."""
        self._disposed = True
        self._unpin(reusable=False)

    # --- refusals and holds -----------------------------------------------------------
    def _refuse(self, decision: Decision, error: tuple[str, str, str], *, lost_tx: bool = False) -> None:
        """Raise ``error`` on the server holding the session's transaction (see the module docstring)."""
        unit = refusal_unit(*error)
        if self.facts.pinned_shop is not None:
            refused = dataclasses.replace(decision, target="tenant", primary=True, reason="refused")
            self._start_tenant(unit, refused)
            return
        if lost_tx and self.facts.deferred_begin is None:
            self.facts.deferred_begin = _BEGIN  # the client believes in a transaction: give it a failed one
        self._send_unified(unit, dataclasses.replace(decision, target="unified", reason="refused", note=None))

    async def _hold(self, unit: Unit, decision: Decision) -> None:
        held = decision.held
        deadline = time.monotonic() + decision.hold_s
        try:
            # The catalog swaps whole snapshots from another task: poll the one in force.
            while held is not None and held() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(HOLD_POLL_S)
        finally:
            self.tenant_task = None
        if held is not None and held():
            logger.info("shop %s: a unit waited %.1f s for a cutover hold; refused", decision.shop_id,
                        decision.hold_s)
            self._refuse(decision, hold_timeout_error(decision.shop_id))
        else:
            self._queue.appendleft(unit)
        self._pump()

    def _fatal_in_tenant_tx(self) -> None:
        self._queue.clear()
        self.client.write(error_response(
            "0A000", "pgtenantproxy: a Flush, COPY data or a function call cannot run in a transaction on "
            f"shop {self.facts.pinned_shop}'s database", severity="FATAL"))
        self._on_tenant_failure()

    # --- tenant units ---------------------------------------------------------------
    def _start_tenant(self, unit: Unit, decision: Decision) -> None:
        assert decision.shop_id is not None
        pinned = self.pinned if self.facts.pinned_shop == decision.shop_id else None
        begin = self.facts.deferred_begin if decision.primary and pinned is None else None
        self.facts.deferred_begin = None
        batch = TenantBatch(
            self.client,
            self.router.pool(decision.shop_id),
            unit,
            self.facts.statements,
            self.facts.shared_settings(),
            timeout=self.router.tenant_timeout,
            primary=decision.primary,
            conn=pinned,
            conn_status=self._pinned_status,
            begin=begin.raw() if begin is not None else None,
        )
        self.pinned = None  # the batch has it now; it comes back as batch.kept
        self.tenant_batch = batch
        in_tx = begin is not None or pinned is not None
        task = self._run_tenant(unit, decision, batch, in_tx)
        self.tenant_task = asyncio.get_running_loop().create_task(task)

    async def _run_tenant(self, unit: Unit, decision: Decision, batch: TenantBatch, in_tx: bool) -> None:
        started = time.perf_counter()
        try:
            outcome = await batch.run()
        except Exception:
            logger.exception("tenant unit failed")
            outcome = Outcome.FAILED if batch.forwarded else Outcome.FALLBACK
        finally:
            self.tenant_task = None
            self.tenant_batch = None
        if decision.primary:
            self._repin(decision.shop_id, batch)
        if outcome is Outcome.FAILED:
            logger.warning("shop %s: tenant failed mid-answer: %s", decision.shop_id, batch.error)
            self._on_tenant_failure()
            return
        self._after_tenant(unit, decision, batch, outcome, in_tx, time.perf_counter() - started)
        if self.close_when_idle and self.idle:
            self._on_idle()
            return
        self._pump()

    def _after_tenant(self, unit: Unit, decision: Decision, batch: TenantBatch, outcome: Outcome,
                      in_tx: bool, seconds: float) -> None:
        """A tenant unit ended (DONE or FALLBACK): record it, or fall back / refuse / report."""
        if outcome is Outcome.DONE:
            result = "error" if batch.answered_error else "ok"
            self.router.completed(unit, self.facts, decision, result, seconds)
        elif decision.primary:
            logger.warning("shop %s: tenant unit failed (%s); no fallback for a cut-over shop",
                           decision.shop_id, batch.error)
            self._refuse(decision, primary_unavailable(decision.shop_id), lost_tx=in_tx)
        elif self.router.fallback_enabled:
            logger.info(
                "shop %s: tenant read failed (%s); re-running on unified", decision.shop_id, batch.error
            )
            self._send_unified(unit, dataclasses.replace(decision, target="unified", reason="fallback"))
        else:
            logger.warning("shop %s: tenant read failed (%s); fallback is off", decision.shop_id, batch.error)
            self.client.write(tenant_unavailable(decision.shop_id) + ReadyForQuery.idle().build())
            self.router.completed(unit, self.facts, decision, "error", seconds)

    def _repin(self, shop_id: int | None, batch: TenantBatch) -> None:
        """After a primary unit: keep its connection while its transaction is open."""
        kept = batch.kept
        if kept is not None and self._disposed:
            batch.pool.release(kept, reusable=False)
            kept = None
        if kept is None and batch.status != c.TX_IDLE and not self._disposed:
            logger.warning("shop %s: the connection of an open transaction could not be kept (broken=%s); "
                           "the transaction is lost and the client is told so", shop_id, batch.error)
            self._lost_tx_shop = shop_id
        self.pinned = kept
        self._pinned_pool = batch.pool
        self._pinned_status = batch.status if kept is not None else c.TX_IDLE
        self.facts.pinned_shop = shop_id if kept is not None else None

    def _unpin(self, *, reusable: bool) -> None:
        conn, self.pinned = self.pinned, None
        self.facts.pinned_shop = None
        self._pinned_status = c.TX_IDLE
        if conn is not None and self._pinned_pool is not None:
            self._pinned_pool.release(conn, reusable=reusable)
