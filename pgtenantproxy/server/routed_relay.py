"""The relay when routing is on: client units go to unified or to a tenant database.

Client bytes are split into messages and grouped into units
(:mod:`pgtenantproxy.protocol.batch`); each complete, unpinned unit is put to
the router, which answers "unified" or "tenant shop N". Unified units are
written to the session's own server connection at once (pipelining keeps
working); a tenant unit waits until unified has answered everything before it,
runs on a pooled tenant connection (:mod:`pgtenantproxy.server.tenant_batch`),
and units behind it wait for its ReadyForQuery. So the client receives answers
in exactly the order it sent its units, whichever server produced them.

Session facts the router needs are kept here: the transaction status (last
ReadyForQuery of unified: tenant units only ever run when it is 'I'), the
client's prepared statements, and the session settings the unified server
reports (ParameterStatus), which a tenant connection gets before a unit runs.

The relay is one class chain, one job per module: :mod:`.relay_base` (shared
state, what the session asks), :mod:`.unified_side` (sending to unified,
filtering its answers), :mod:`.moved_tx` (tenant units, pinned transactions,
refusals, holds), and this module (the client side: tracking, dispatching).

Write routing (``tenant_primary`` shops, :mod:`pgtenantproxy.dispatch.write_routing`)
adds decisions besides "unified" and "tenant"; the relay acts on them only
when unified owes nothing (else it waits and asks again, so the router sees
the right transaction status), and the router has no side effects for them:

* ``tenant`` with ``primary``: run on the shop's database; a transaction left
  open there pins that connection to the session (:mod:`.moved_tx`).
* ``begin`` / ``local``: the proxy answers a lazy BEGIN (and a COMMIT/ROLLBACK
  right after it) itself, as a simple Query or as an extended-protocol unit
  (:func:`~pgtenantproxy.protocol.local_answers.extended_reply`);
  :attr:`SessionFacts.deferred_begin` remembers the BEGIN's text as a simple
  Query, which the next unit's server gets first (its answer is skipped). A
  statement the BEGIN unit parsed reaches a server when a later unit uses it
  (tenant re-prepare; :mod:`.unified_statements` for unified).
* ``refuse``: the error is raised by the server holding the session's transaction.
* ``hold``: wait (the pump stops) while the shop is held, then decide again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import Message
from pgtenantproxy.protocol.local_answers import ReplyFilter, command_complete, extended_reply
from pgtenantproxy.protocol.messages import SYNC_MESSAGE, CloseOrDescribe, Parse, Query
from pgtenantproxy.server.moved_tx import HOLD_POLL_S, MovedTransactions
from pgtenantproxy.server.unit_decision import (
    SHARED_SETTINGS,
    UNIFIED_PINNED,
    Decision,
    SessionFacts,
    UnitRouter,
    hold_timeout_error,
    lost_transaction,
    pinned_refusal,
)

__all__ = [
    "HOLD_POLL_S",
    "MAX_QUEUED_UNITS",
    "SHARED_SETTINGS",
    "UNIFIED_PINNED",
    "Decision",
    "RoutedRelay",
    "SessionFacts",
    "UnitRouter",
    "hold_timeout_error",
]

logger = logging.getLogger(__name__)

#: Pause reading the client when this many units wait behind a tenant unit.
MAX_QUEUED_UNITS = 256
_DESCRIBE_ONLY = frozenset({c.PARSE, c.DESCRIBE, c.CLOSE, c.FLUSH})


def _describes_only(unit: Unit) -> bool:
    """An extended-protocol part with no Execute (nothing runs: Parse, Describe, Close, Flush)."""
    return unit.kind == "extended" and all(m.type in _DESCRIBE_ONLY for m in unit.messages)


def local_reply(unit: Unit, tag: str, status: int) -> bytes:
    """The proxy's own answer to a lazy BEGIN (status T) or the COMMIT/ROLLBACK after it (I)."""
    if unit.kind == "query":
        return command_complete(tag, status)
    return extended_reply(unit, tag, status)


def _replayable(unit: Unit, decision: Decision) -> Message:
    """The lazy BEGIN as the simple Query replayed where its transaction runs."""
    if unit.kind == "query":
        return unit.messages[0]
    return Message(c.QUERY, Query(decision.begin_sql).build()[5:])


class RoutedRelay(MovedTransactions):
    def start(self, server_leftover: bytes, client_leftover: bytes) -> None:
        self.server.start_relay(self.from_server, server_leftover)
        self.client.start_relay(self.from_client, client_leftover)

    # --- client -> servers --------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (msg := self._reader.next_message()) is not None:
                self._track(msg)
                self._queue.extend(self._assembler.feed(msg))
        except ProtocolViolation as exc:
            self._on_violation(exc)
            return
        self._pump()

    def _track(self, msg: Message) -> None:
        """Keep the prepared-statement table in step with what the client sends."""
        mtype = msg.type
        if mtype == c.PARSE:
            self.facts.statements.parsed(Parse.parse(msg.body), msg)
        elif mtype == c.CLOSE:
            target = CloseOrDescribe.parse(msg.body)
            if target.kind == "S":
                self.facts.statements.closed(target.name)
        elif mtype == c.QUERY:
            self.facts.statements.simple_query(Query.parse(msg.body).sql)

    def _pump(self) -> None:
        """Dispatch queued units in order; stop at a tenant unit (or a hold) until it is done."""
        while self._queue and self.tenant_task is None:
            unit = self._queue[0]
            if unit.kind == "terminate":
                self._queue.clear()
                self.server.write(unit.raw())
                self._on_terminate()
                return
            if not unit.complete and self._in_moved_tx():
                if _describes_only(unit) and not self.owed:
                    self._queue.popleft()
                    self._describe_aside(unit)
                    continue
                if self.facts.pinned_shop is not None:
                    self._fatal_in_tenant_tx()
                    return
            elif self._flush_synced and unit.complete:
                unit.pinned, self._flush_synced = False, False  # its Flush-split head was synced by us
            if self.facts.pinned_shop is not None and unit.pinned:
                self._fatal_in_tenant_tx()
                return
            decision = self._decide(unit)
            if decision.target != "unified":
                if self.owed:
                    break  # unified answers first, to keep the order (and the tx status right)
                self._queue.popleft()
                self._act(unit, decision)
                continue
            self._queue.popleft()
            self._send_unified(unit, decision)
        self._backpressure()

    def _in_moved_tx(self) -> bool:
        return self.facts.pinned_shop is not None or self.facts.deferred_begin is not None

    def _describe_aside(self, unit: Unit) -> None:
        """A Flush-split Parse/Describe (asyncpg's prepare) in a moved transaction: unified describes it.

        Describing has no effect on data, and unified's tables look like the shop's; the
        proxy ends that batch with a Sync of its own (answer skipped), and the Sync-ended
        rest of the client's batch is then routed like any unit (the statement is
        re-prepared wherever it runs).
        """
        self._filters.append(ReplyFilter())
        self._unified_statements.sent(unit)
        self._unified_mid_batch = False
        self.server.write(unit.raw() + SYNC_MESSAGE)
        self._flush_synced = True

    def _decide(self, unit: Unit) -> Decision:
        """Ask the router about complete units (pinned ones too, for its bookkeeping)."""
        if not unit.complete:
            return UNIFIED_PINNED
        try:
            decision = self.router.decide(unit, self.facts)
        except Exception:
            logger.exception("routing failed; unit sent to unified")
            decision = Decision("unified", reason="router_error")
        lost, self._lost_tx_shop = self._lost_tx_shop, None
        if lost is not None:
            return Decision("refuse", lost, "lost_transaction", error=lost_transaction(lost))
        pinned = self.facts.pinned_shop
        if pinned is not None:
            if decision.target in ("tenant", "refuse") and decision.shop_id == pinned:
                return decision
            return Decision("refuse", pinned, "refused", error=pinned_refusal(pinned))
        if decision.tenant and (unit.pinned or (not decision.primary and self.facts.tx_status != c.TX_IDLE)):
            return UNIFIED_PINNED  # never, whatever a router says
        return decision

    def _act(self, unit: Unit, decision: Decision) -> None:
        target = decision.target
        if target == "tenant":
            self._start_tenant(unit, decision)
        elif target == "refuse":
            assert decision.error is not None
            self._refuse(decision, decision.error, lost_tx=decision.reason == "lost_transaction")
        elif target == "hold":
            self.tenant_task = asyncio.get_running_loop().create_task(self._hold(unit, decision))
        elif target == "begin":
            self.facts.deferred_begin = _replayable(unit, decision)
            self.client.write(local_reply(unit, decision.tag, c.TX_IN_BLOCK))
        elif target == "aside":  # Parse/Describe only, outside the deferred transaction
            self._prepare_unified(unit)
            self._filters.append(ReplyFilter(rewrite_to=c.TX_IN_BLOCK))
            self._write_unified(unit)
            self.owed += 1
            self._pending_unified.append((unit, dataclasses.replace(decision, target="unified"),
                                          time.perf_counter()))
        elif target == "local":
            self.facts.deferred_begin = None
            self.client.write(local_reply(unit, decision.tag, c.TX_IDLE))
        else:
            self._send_unified(unit, decision)

    def _backpressure(self) -> None:
        crowded = len(self._queue) > MAX_QUEUED_UNITS
        if crowded and not self._client_paused:
            self._client_paused = True
            self.client.pause_reading()
        elif not crowded and self._client_paused:
            self._client_paused = False
            self.client.resume_reading()
