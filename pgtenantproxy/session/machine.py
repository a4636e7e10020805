"""The routed session as one sans-IO state machine.

Inputs: :meth:`SessionMachine.client_data`, :meth:`~SessionMachine.unified_data`,
:meth:`~SessionMachine.tenant_data` (bytes), and the events
:meth:`~SessionMachine.tenant_ready`, :meth:`~SessionMachine.tenant_unavailable`,
:meth:`~SessionMachine.tenant_lost`, :meth:`~SessionMachine.timer_fired`. Outputs:
calls on its :class:`~pgtenantproxy.session.contract.Effects` (send to the
client, to unified, to a tenant link; borrow, attach, give back a link; set a
timer; end the session). No asyncio, no sockets: the driver
(:mod:`pgtenantproxy.server.routed`) carries the actions out, and the unit tests
feed byte vectors and record them.

How a unit travels:

1. Client bytes are split into messages, each parsed once
   (:class:`~pgtenantproxy.protocol.records.ClientMessage`), tracked (prepared
   statements) and grouped into units (:mod:`pgtenantproxy.protocol.batch`).
2. :meth:`_pump` takes units in order while the state is ``IDLE`` or
   ``UNIFIED_BUSY`` and asks the router. A unified unit is written at once
   (pipelining keeps working). Any other decision waits until unified owes
   nothing (so the router sees the right transaction status), then acts:
   a tenant unit (:mod:`.tenant_unit`: one write, answers of the proxy's own
   preparations removed), a refusal, a hold, the proxy's own answer to a
   lazy BEGIN / the COMMIT right after it, or a COPY FROM STDIN the proxy
   starts itself and places by its first row (:mod:`.copy_flow`).
3. Answers reach the client in the order of the units, whichever server made them.

States and where the session's transaction lives are declared in
:mod:`.state`; every move goes through :func:`~pgtenantproxy.session.state.advance`.
Invariants: ``owed`` counts the ReadyForQuery unified owes for client units
(never for the proxy's own batches, whose answers :mod:`.unified_answers` removes); at
most one tenant unit or hold is in progress, and no unit is dispatched meanwhile;
the pinned tenant link is either held here or lent to the running unit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit, UnitKind
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.local_answers import ReplyFilter, refusal_sql, refusal_unit
from pgtenantproxy.protocol.messages import SYNC_MESSAGE, ParameterStatus, Query, ReadyForQuery
from pgtenantproxy.protocol.records import ClientReader
from pgtenantproxy.session.contract import Effects, TenantLink, UnitRouter
from pgtenantproxy.session.copy_flow import CopyFlow
from pgtenantproxy.session.decision import (
    DEFERRED_READ,
    SESSION_SEQUENCE,
    UNIFIED_PINNED,
    AnswerBegin,
    AnswerDeferred,
    AnswerEnd,
    AnswerLocal,
    Aside,
    CopyFirstRow,
    Decision,
    Hold,
    Refusal,
    Refuse,
    Rewrites,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.refusals import (
    IN_FAILED_TRANSACTION,
    hold_timeout_error,
    lost_transaction,
    not_in_tenant_transaction,
    pinned_refusal,
    primary_unavailable,
    tenant_unavailable,
)
from pgtenantproxy.session.rewrite import rewritten
from pgtenantproxy.session.runs import (
    HeldUnit,
    TenantRun,
    UnifiedBatch,
    _Admit,
    describes_only,
    lacks_statements,
    local_reply,
)
from pgtenantproxy.session.state import Event, State, TxEvent, TxPlace, advance, advance_tx
from pgtenantproxy.session.tenant_unit import UNKNOWN_SQL, Outcome, TenantUnit
from pgtenantproxy.session.unified_answers import UnifiedAnswers
from pgtenantproxy.session.unified_statements import UnifiedStatements

logger = logging.getLogger(__name__)

#: Pause reading the client when this many units wait behind a tenant unit.
MAX_QUEUED_UNITS = 256
#: How long the connection of an autocommit statement that drew from a sequence is kept for a
#: lastval()/currval() right after it.
LINGER_S = 1.0
#: How often a held unit looks whether its shop's hold has ended.
HOLD_POLL_S = 0.01

_DISPATCHING = (State.IDLE, State.UNIFIED_BUSY)
_FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")
_TRACKED = frozenset({c.PARSE, c.CLOSE, c.QUERY})


class SessionMachine:
    def __init__(
        self,
        router: UnitRouter,
        facts: SessionFacts,
        effects: Effects,
        *,
        clock: Callable[[], float] = time.monotonic,
        perf: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.router = router
        self.facts = facts
        self.fx = effects
        self.state = State.IDLE
        self.tx = TxPlace.UNIFIED
        #: ReadyForQuery unified still owes for client units.
        self.owed = 0
        #: Close the session at the next idle point (graceful shutdown).
        self.close_when_idle = False
        #: The unified server sent a FATAL/PANIC error: it will close, and said why.
        self.server_said_fatal = False
        self._clock = clock
        self._perf = perf
        self._reader = ClientReader()
        self._assembler = BatchAssembler()
        self._queue: deque[Unit] = deque()
        self._answers = UnifiedAnswers()
        self._unified_statements = UnifiedStatements()
        self._unified_batch = UnifiedBatch.AT_SYNC
        self._pending: deque[tuple[Unit, Decision, float]] = deque()
        self._answer_failed = False  # an ErrorResponse in unified's current answer
        self._await_drain = False  # the next unit waits for unified to owe nothing
        self._flushed_unanswered = False  # a Flush-split part went to unified; no byte back yet
        self._client_paused = False
        self._pinned: TenantLink | None = None
        self._pinned_status = c.TX_IDLE
        self._linger: TenantLink | None = None
        self._lost_shop: int | None = None
        self._run: TenantRun | None = None
        self._held: HeldUnit | None = None
        #: Unified's bytes for the client that arrived while a tenant unit ran (sent after it).
        self._unified_waiting: list[bytes] = []
        #: COPY FROM STDIN routed by its first row; extended COPY's Sync on unified (:mod:`.copy_flow`).
        self._copies = CopyFlow(self)

    # --- what the driver asks ---------------------------------------------------------
    @property
    def tx_status(self) -> int:
        if self.tx is TxPlace.PINNED:
            return self._pinned_status
        return c.TX_IN_BLOCK if self.tx is TxPlace.DEFERRED else self.facts.tx_status

    @property
    def idle(self) -> bool:
        return (
            self.owed == 0
            and self.state is State.IDLE
            and not self._queue
            and not self._assembler.has_pending
            and self.tx_status == c.TX_IDLE
            and not self._copies.active
        )

    @property
    def server_at_boundary(self) -> bool:
        """True when a message of the proxy's own can be sent to the client now."""
        return self._answers.at_boundary and self.state in (State.IDLE, State.UNIFIED_BUSY, State.CLOSED)

    @property
    def running_link(self) -> TenantLink | None:
        """The tenant link running this client's query now (for a cancel), if any."""
        run = self._run
        return run.link if run is not None and self.state is State.TENANT_RUNNING else None

    def cancel_requested(self) -> None:
        """The client cancels its query: a tenant unit's "canceling statement" error is its answer
        (forwarded as any error), not a sign of a broken tenant to fall back from."""
        if self._run is not None:
            self._run.work.client_cancelled = True

    def dispose(self) -> None:
        """The session ended: links are given back closed (a pinned transaction rolls back)."""
        if self.state is State.CLOSED and self._run is None and self._pinned is None and self._linger is None:
            return
        self._advance(Event.CLOSE)
        self.fx.clear_timer()
        self._copies.dispose()
        run, self._run = self._run, None
        if run is not None and run.link is not None:
            self.fx.detach(run.link)
            self.fx.give_back(run.decision.shop_id or 0, run.link, reusable=False, failed=False)
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            self.fx.give_back(self.facts.pinned_shop or 0, pinned, reusable=False, failed=False)
        if self._linger is not None:
            self._release_linger()

    # --- client -> servers ----------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        assembler, queue = self._assembler, self._queue
        track = self.facts.statements.track
        fresh = not assembler.has_pending and not self._reader.has_partial
        try:
            records = self._reader.feed(data)
        except ProtocolViolation as exc:
            self.fx.violation(exc)
            return
        for rec in records:
            if rec.type in _TRACKED:
                track(rec)
            queue.extend(assembler.feed(rec))
        if fresh and records and queue and not assembler.has_pending and not self._reader.has_partial:
            last = queue[-1]
            if len(last.messages) == len(records) and last.messages[0] is records[0]:
                last.wire = data  # the unit is this very chunk: forwarded as it came
        if self._copies.active:
            self._copies.units()
        if self.state in _DISPATCHING and not (self._await_drain and self.owed):
            self._pump()
        else:
            self._backpressure()

    def _pump(self) -> None:
        """Dispatch queued units in order; stop at one that must wait (see the module docstring)."""
        if self._copies.active:
            self._copies.units()
            if self._copies.active:
                return  # the COPY's data is not over: nothing may overtake it
        queue = self._queue
        while queue and self.state in _DISPATCHING:
            unit = queue[0]
            if unit.kind is UnitKind.TERMINATE:
                queue.clear()
                self.fx.to_unified(unit.raw())
                self._close("terminate")
                return
            admitted = self._admit(unit)
            if admitted is _Admit.STOP:
                return
            if admitted is _Admit.ASIDE:
                continue
            if self.owed and self._needs_preparing(unit):
                self._await_drain = True  # the proxy's own batch must not overtake owed answers
                break
            decision = self._decide(unit)
            if _rewrites(decision) and (self.owed or self._flushed_unanswered):
                self._await_drain = True  # its statements are parsed again first, in a batch of the proxy's
                break
            if self._linger is not None and not self._uses_linger(decision):
                self._release_linger()
            if not isinstance(decision, ToUnified):
                if self.owed or self._flushed_unanswered:
                    self._await_drain = True
                    break
                queue.popleft()
                self._act(unit, decision)
                if self._await_drain and self.owed:
                    break  # a read run aside for a deferred transaction: its answer decides what follows
                continue
            queue.popleft()
            self.router.acted(decision)
            self._send_unified(unit, decision)
        self._await_drain = self._await_drain and bool(queue)
        self._backpressure()

    def _admit(self, unit: Unit) -> _Admit:
        """Units without their Sync: a Parse/Describe head is described aside (so the rest of the
        client's batch is routed like any unit); inside a moved transaction anything else ends the
        session."""
        moved = self.tx in (TxPlace.PINNED, TxPlace.DEFERRED)
        if not unit.complete and describes_only(unit) and not self.owed and (
            moved or self._unified_batch is UnifiedBatch.AT_SYNC
        ):
            self._queue.popleft()
            self._describe_aside(unit)
            return _Admit.ASIDE
        if not unit.complete and moved:
            if self.tx is TxPlace.PINNED:
                self._fatal_in_tenant_tx()
                return _Admit.STOP
        elif self._unified_batch is UnifiedBatch.PROXY_SYNCED and unit.complete:
            unit.pinned = False  # its Flush-split head was synced by the proxy
            self._unified_batch = UnifiedBatch.AT_SYNC
        if self.tx is TxPlace.PINNED and unit.pinned:
            self._fatal_in_tenant_tx()
            return _Admit.STOP
        return _Admit.GO

    def _decide(self, unit: Unit) -> Decision:
        """Ask the router about complete units; keep its answer inside what the session allows."""
        if not unit.complete:
            return UNIFIED_PINNED
        try:
            decision = self.router.decide(unit, self.facts)
        except Exception:
            logger.exception("routing failed; unit sent to unified")
            decision = ToUnified(reason="router_error")
        if self.tx is TxPlace.LOST:
            return Refuse(self._lost_shop, "lost_transaction", error=lost_transaction(self._lost_shop))
        if isinstance(decision, CopyFirstRow):
            if self._copies.admits(unit, decision):
                return decision
            decision = UNIFIED_PINNED
        # a key lookup may hold the unit, a DEALLOCATE is answered where the transaction stays
        if self.tx is TxPlace.PINNED and not isinstance(decision, Hold | AnswerLocal):
            pinned = self.facts.pinned_shop
            if isinstance(decision, ToTenant) and decision.shop_id == pinned:
                if self._pinned_status == c.TX_FAILED and self._pinned is not None and lacks_statements(
                    unit, self._pinned.prepared, self.facts.statements
                ):  # its statements would be parsed in the failed transaction: its error, as directly
                    return Refuse(pinned, "failed_transaction", error=IN_FAILED_TRANSACTION)
                return decision if decision.primary else dataclasses.replace(decision, primary=True)
            if isinstance(decision, Refuse) and decision.shop_id == pinned:
                return decision
            assert pinned is not None
            return Refuse(pinned, "refused", error=pinned_refusal(pinned))
        if isinstance(decision, ToTenant) and not decision.primary and (
            unit.pinned or self.facts.tx_status != c.TX_IDLE or self.tx is TxPlace.DEFERRED
        ):
            return UNIFIED_PINNED  # never, whatever a router says
        if isinstance(decision, ToTenant) and unit.pinned:
            return UNIFIED_PINNED
        return decision

    def _act(self, unit: Unit, decision: Decision) -> None:
        self.router.acted(decision)
        match decision:
            case ToTenant():
                self._start_tenant(unit, decision)
            case Refuse():
                self._refuse(decision, decision.error, lost_tx=decision.reason == "lost_transaction")
            case Hold():
                self._start_hold(unit, decision)
            case AnswerBegin():
                sql = unit.messages[0].sql if unit.kind is UnitKind.QUERY else decision.begin_sql
                self._move_tx(TxEvent.BEGIN_ANSWERED, begin=sql or decision.begin_sql)
                self.fx.to_client(local_reply(unit, decision.tag, c.TX_IN_BLOCK))
            case AnswerEnd():
                self._move_tx(TxEvent.END_ANSWERED)
                self.fx.to_client(local_reply(unit, decision.tag, c.TX_IDLE))
            case AnswerDeferred():
                self.facts.deferred_replay += (decision.sql,)
                self.fx.to_client(local_reply(unit, decision.tag, c.TX_IN_BLOCK))
            case AnswerLocal() if self.tx_status == c.TX_FAILED:
                self._refuse(decision, IN_FAILED_TRANSACTION)  # the server's own 25P02, as directly
            case AnswerLocal():
                self.fx.to_client(local_reply(unit, decision.tag, self.tx_status))
            case Aside():
                self._send_aside(unit, decision)
            case CopyFirstRow():
                self._copies.start(unit, decision)
            case _:
                self._send_unified(unit, decision)

    def _backpressure(self) -> None:
        crowded = len(self._queue) > MAX_QUEUED_UNITS or self._copies.crowded
        if crowded and not self._client_paused:
            self._client_paused = True
            self.fx.pause_client()
        elif not crowded and self._client_paused:
            self._client_paused = False
            self.fx.resume_client()

    # --- unified ----------------------------------------------------------------------------
    def _send_unified(self, unit: Unit, decision: Decision) -> None:
        sent = self._prepare_unified(unit, decision)
        begin = self.facts.deferred_begin
        if begin is not None:  # the client got its answers already: skip the server's
            replay = self.facts.deferred_replay
            self._move_tx(TxEvent.BEGIN_SENT)
            self._answers.expect(ReplyFilter())
            self.fx.to_unified(Query("; ".join((begin, *replay))).build())
        self._write_unified(sent)
        if unit.complete and not self._copies.absorbs(unit):
            self._owe(unit, decision)

    def _send_aside(self, unit: Unit, decision: Decision) -> None:
        """Parse/Describe only, outside the deferred transaction: unified answers, the client's
        ReadyForQuery keeps saying it is in a transaction."""
        sent = self._prepare_unified(unit, decision)
        deferred_read = decision.reason == DEFERRED_READ
        self._answers.expect(ReplyFilter(rewrite_to=c.TX_IN_BLOCK,
                                         failed_to=c.TX_FAILED if deferred_read else None))
        self._write_unified(sent)
        self._owe(unit, ToUnified(decision.shop_id, decision.reason, decision.source, decision.kind,
                                  decision.table))
        self._await_drain = self._await_drain or deferred_read

    def _fail_deferred(self) -> None:
        """A read run aside for the deferred transaction failed: the client was told its transaction
        failed ('E'), so the transaction is begun on unified and failed there, quietly: what follows
        gets the server's own 25P02, and its ROLLBACK ends it, as directly."""
        sql = "; ".join((self.facts.deferred_begin or "BEGIN", *self.facts.deferred_replay,
                         refusal_sql(*IN_FAILED_TRANSACTION)))
        self._move_tx(TxEvent.BEGIN_SENT)
        self._answers.expect(ReplyFilter(quiet=True))
        self.fx.to_unified(Query(sql).build())
        self.facts.tx_status = c.TX_FAILED

    def _owe(self, unit: Unit, decision: Decision) -> None:
        self.owed += 1
        self._advance(Event.SENT_UNIFIED)
        self._pending.append((unit, decision, self._perf()))

    def _write_unified(self, unit: Unit) -> None:
        """Every client message unified gets goes through here (its statements are tracked)."""
        self._unified_statements.sent(unit)
        if not unit.complete and unit.kind is UnitKind.EXTENDED:
            self._unified_batch = UnifiedBatch.CLIENT_OPEN
            # A Flush asks for answers with no ReadyForQuery to end them: nothing else may reach the
            # client before unified has started answering (PostgreSQL sends them at the Flush, at once).
            self._flushed_unanswered = unit.messages[-1].type == c.FLUSH
        elif self._unified_batch is UnifiedBatch.CLIENT_OPEN:
            self._unified_batch = UnifiedBatch.AT_SYNC
        self.fx.to_unified(unit.raw())

    def _needs_preparing(self, unit: Unit) -> bool:
        if not self._preparable(unit):
            return False
        return bool(self._unified_statements.preparation(unit, self.facts.statements, record=False))

    def _preparable(self, unit: Unit) -> bool:
        return (
            self._unified_batch is not UnifiedBatch.CLIENT_OPEN
            and unit.kind is UnitKind.EXTENDED
            and self.facts.tx_status != c.TX_FAILED
        )

    def _prepare_unified(self, unit: Unit, decision: Decision | None = None) -> Unit:
        """Statements ``unit`` uses that unified lacks: parsed first (not in a failed transaction,
        where the Parse would fail, and the unit with it; never inside the client's open batch).
        The unit as unified runs it is returned (a federated read's texts rewritten)."""
        client = self.facts.statements
        rewrites = _rewrites(decision)
        if rewrites:
            unit, client = rewritten(unit, rewrites, client)
        if not self._preparable(unit):
            return unit
        plan = self._unified_statements.preparation(unit, client)
        if plan:
            self._answers.expect(ReplyFilter(quiet=True))
            self.fx.to_unified(plan + SYNC_MESSAGE)
        return unit

    def _describe_aside(self, unit: Unit) -> None:
        """A Flush-split Parse/Describe (asyncpg's prepare) in a moved transaction: unified describes it.

        Describing has no effect on data, and unified's tables look like the shop's; the
        proxy ends that batch with a Sync of its own (answer skipped), and the Sync-ended
        rest of the client's batch is then routed like any unit (the statement is
        re-prepared wherever it runs).
        """
        self._answers.expect(ReplyFilter())
        self._unified_statements.sent(unit)
        self.fx.to_unified(unit.raw() + SYNC_MESSAGE)
        self._unified_batch = UnifiedBatch.PROXY_SYNCED
        self._flushed_unanswered = True  # nothing may reach the client before this answer

    def unified_data(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        flushed, self._flushed_unanswered = self._flushed_unanswered, False
        answered = self._unified_answer(data)
        if answered and self.close_when_idle and self.idle:
            self._close("idle_close")
        elif (answered or flushed) and self._queue and not (self._await_drain and self.owed):
            self._pump()

    def _unified_answer(self, data: bytes) -> bool:
        """Forward unified's bytes; keep the books. True when a ReadyForQuery came."""
        read = self._answers.feed(data)
        if read.skipped_status is not None:
            self.facts.tx_status = read.skipped_status
        if read.to_client:
            self._unified_to_client(read.to_client)
        answered = False
        for frame in read.frames:
            mtype = frame.type
            if mtype == c.READY_FOR_QUERY:
                self.facts.tx_status = frame.body[0] if frame.body else c.TX_IDLE
                if self.owed:
                    self._unified_done()
                self._answer_failed = False
                answered = True
            elif mtype == c.ERROR_RESPONSE:
                self._answer_failed = True
                if _FATAL[0] in frame.body or _FATAL[1] in frame.body:
                    self.server_said_fatal = True
            elif mtype == c.COPY_IN_RESPONSE:
                self._copies.started(self._pending[0][0] if self._pending else None)
            else:
                self._parameter_status(frame.body)
        return answered

    def _unified_to_client(self, data: bytes) -> None:
        """While a tenant answer may be reaching the client, unified's own messages (notices,
        notifications, parameter changes) wait for its end, so none lands inside a tenant message."""
        if self.state in (State.TENANT_BORROWING, State.TENANT_RUNNING):
            self._unified_waiting.append(data)
        else:
            self.fx.to_client(data)

    def _parameter_status(self, body: bytes) -> None:
        try:
            ps = ParameterStatus.parse(body)
        except ProxyError:
            return
        self.facts.settings[ps.name] = ps.value

    def _unified_done(self) -> None:
        self.owed -= 1
        if not self.owed:
            self._advance(Event.UNIFIED_DRAINED)
        if not self._pending:
            return
        unit, decision, started = self._pending.popleft()
        if self._answer_failed and decision.reason == DEFERRED_READ and self.tx is TxPlace.DEFERRED:
            self._fail_deferred()
        if self._answer_failed:
            outcome = "error"
        else:
            outcome = "fallback" if decision.reason == "fallback" else "ok"
        self.router.completed(unit, self.facts, decision, outcome, self._perf() - started)

    # --- tenant units ------------------------------------------------------------------------
    def _start_tenant(self, unit: Unit, decision: ToTenant) -> None:
        shop = decision.shop_id
        assert shop is not None
        pinned = self._pinned if self.tx is TxPlace.PINNED and self.facts.pinned_shop == shop else None
        lingering = self._linger if self._uses_linger(decision) else None
        begin = self.facts.deferred_begin if decision.primary and pinned is None else None
        replay = self.facts.deferred_replay if begin is not None else ()
        if begin is not None:
            self._move_tx(TxEvent.BEGIN_SENT)
        work = TenantUnit(
            unit,
            self.facts.statements,
            self.facts.shared_settings(),
            primary=decision.primary,
            begin_sql=begin,
            replay=replay,
            continuing=pinned is not None,
            failed_tx=pinned is not None and self._pinned_status == c.TX_FAILED,
            copy_in=self._copies.reply_for(unit),
            sql_prepares=decision.sql_prepares,
        )
        if pinned is not None:
            work.status = self._pinned_status
        self._run = TenantRun(unit, decision, work, self._perf(), begin is not None or pinned is not None)
        self._advance(Event.TENANT_START)
        if pinned is not None:
            self._pinned = None  # lent to the run; it comes back in _keep
            if not pinned.usable:
                self._run.link = pinned
                pinned.broken = True
                self._finish_tenant(Outcome.FALLBACK, "the tenant connection of this transaction was lost")
                return
            self.tenant_ready(pinned)
            return
        if lingering is not None:
            self._linger = None
            self.facts.linger_shop = None
            self.tenant_ready(lingering)
            return
        link = self.fx.borrow(shop)
        if link is not None:
            self.tenant_ready(link)

    def tenant_ready(self, link: TenantLink) -> None:
        """The tenant unit's connection is there: write its request."""
        run = self._run
        if run is None or self.state is not State.TENANT_BORROWING:
            self.fx.give_back(run.decision.shop_id or 0 if run else 0, link, reusable=True, failed=False)
            return
        run.link = link
        self._advance(Event.TENANT_READY)
        self.fx.attach(link)
        self.fx.to_tenant(link, run.work.request(link))
        if not run.work.primary:
            self.fx.set_timer(self.router.tenant_timeout)
        self._copies.connected(run.unit)

    def tenant_unavailable(self, error: str) -> None:
        """No connection could be had for the tenant unit (the pool gave up)."""
        if self._run is not None and self.state is State.TENANT_BORROWING:
            self._finish_tenant(Outcome.FALLBACK, error, failed=False)

    def tenant_data(self, data: bytes) -> None:
        run = self._run
        if run is None or self.state is not State.TENANT_RUNNING:
            return
        work = run.work
        out = work.feed(data)
        if out:
            self.fx.to_client(out)
        if work.done:
            error = work.prep_failed or ("tenant error" if work.broken_error else None)
            self._finish_tenant(work.outcome(), error)

    def tenant_lost(self) -> None:
        run = self._run
        if run is None or self.state is not State.TENANT_RUNNING:
            return
        if run.link is not None:
            run.link.broken = True
        outcome = Outcome.FAILED if run.work.forwarded and not run.work.skipped else Outcome.FALLBACK
        self._finish_tenant(outcome, "the tenant connection was lost")

    def timer_fired(self) -> None:
        if self.state is State.HELD:
            self._poll_hold()
            return
        if self._linger is not None and self._run is None:
            self._release_linger()  # no statement came soon after: the connection goes back to the pool
            return
        run = self._run
        if self.state is not State.TENANT_RUNNING or run is None or run.work.forwarded or run.link is None:
            return  # an answer already reaching the client is waited for, as a direct server's would be
        self.fx.cancel_tenant(run.link)
        run.link.broken = True
        self._finish_tenant(Outcome.FALLBACK, f"no answer within {self.router.tenant_timeout:g} s")

    def _finish_tenant(self, outcome: Outcome, error: str | None, *, failed: bool = True) -> None:
        run = self._run
        assert run is not None
        self._run = None
        self.fx.clear_timer()
        self._copies.run_ended(run.unit)
        work = run.work
        if run.link is not None:
            self.fx.detach(run.link)
        if outcome is Outcome.DONE:
            if not work.forwarded:
                held = work.release()
                if held:
                    self.fx.to_client(held)
        if run.link is not None and not work.skipped:
            self._record_parses(run.unit, run.link, known=outcome is Outcome.DONE and not work.answered_error)
        self._advance(Event.TENANT_END)
        if self._unified_waiting:
            self.fx.to_client(b"".join(self._unified_waiting))
            self._unified_waiting.clear()
        kept = self._keep_or_give_back(run, outcome, failed=failed and outcome is not Outcome.DONE)
        if run.decision.primary:
            self._repin(run, kept, outcome)
        if outcome is Outcome.FAILED:
            logger.warning("shop %s: tenant failed mid-answer: %s", run.decision.shop_id, error)
            self._close("tenant_failed")
            return
        self._after_tenant(run, outcome, error)
        if self.close_when_idle and self.idle:
            self._close("idle_close")
            return
        self._pump()

    def _record_parses(self, unit: Unit, link: TenantLink, *, known: bool) -> None:
        """The unit's named Parses now exist on the link (after an error: each may, or may not)."""
        for msg in unit.messages:
            if msg.type == c.PARSE and msg.name:
                link.prepared[msg.name] = (msg.sql or "") if known else UNKNOWN_SQL

    def _keep_or_give_back(self, run: TenantRun, outcome: Outcome, *, failed: bool) -> TenantLink | None:
        link = run.link
        if link is None:
            return None
        work = run.work
        at_rest = not link.broken and work.done
        if run.decision.primary and at_rest and outcome is Outcome.DONE and work.status != c.TX_IDLE:
            return link  # its transaction is open: the session keeps it
        if run.decision.linger and at_rest and outcome is Outcome.DONE and work.status == c.TX_IDLE:
            self._linger = link  # a lastval()/currval() right after it is answered there
            self.facts.linger_shop = run.decision.shop_id
            self.fx.set_timer(LINGER_S)
            return None
        shop = run.decision.shop_id or 0
        self.fx.give_back(shop, link, reusable=at_rest and work.status == c.TX_IDLE, failed=failed)
        return None

    def _uses_linger(self, decision: Decision) -> bool:
        return (isinstance(decision, ToTenant) and decision.reason == SESSION_SEQUENCE
                and decision.shop_id == self.facts.linger_shop)

    def _release_linger(self) -> None:
        link, self._linger = self._linger, None
        shop, self.facts.linger_shop = self.facts.linger_shop, None
        if link is not None:
            self.fx.give_back(shop or 0, link, reusable=link.usable, failed=False)

    def _repin(self, run: TenantRun, kept: TenantLink | None, outcome: Outcome) -> None:
        """After a primary unit: keep its link while its transaction is open."""
        shop = run.decision.shop_id
        if kept is not None:
            self._pinned, self._pinned_status = kept, run.work.status
            self._move_tx(TxEvent.PINNED, shop=shop)
            return
        if outcome is Outcome.DONE and run.work.status != c.TX_IDLE:
            logger.warning("shop %s: the connection of an open transaction could not be kept; "
                           "the transaction is lost and the client is told so", shop)
            self._move_tx(TxEvent.LOST, shop=shop)
            return
        self._move_tx(TxEvent.UNPINNED)

    def _after_tenant(self, run: TenantRun, outcome: Outcome, error: str | None) -> None:
        """A tenant unit ended (DONE or FALLBACK): record it, or fall back / refuse / report."""
        decision, unit = run.decision, run.unit
        seconds = self._perf() - run.started
        if outcome is Outcome.DONE:
            result = "error" if run.work.answered_error else "ok"
            self.router.completed(unit, self.facts, decision, result, seconds)
        elif decision.primary:
            logger.warning("shop %s: tenant unit failed (%s); no fallback for a cut-over shop",
                           decision.shop_id, error)
            self._refuse(decision, primary_unavailable(decision.shop_id), lost_tx=run.in_tx)
        elif self.router.fallback_enabled:
            logger.info("shop %s: tenant read failed (%s); re-running on unified", decision.shop_id, error)
            self._send_unified(unit, ToUnified(decision.shop_id, "fallback", decision.source, decision.kind,
                                               decision.table))
        else:
            logger.warning("shop %s: tenant read failed (%s); fallback is off", decision.shop_id, error)
            self.fx.to_client(tenant_unavailable(decision.shop_id) + ReadyForQuery.idle().build())
            self.router.completed(unit, self.facts, decision, "error", seconds)

    # --- refusals and holds ----------------------------------------------------------------
    def _refuse(self, decision: Decision, error: Refusal, *, lost_tx: bool = False) -> None:
        """Raise ``error`` on the server holding the session's transaction, so it fails there like
        after any error; a client that believes it is in a transaction no server has gets it raised
        inside a fresh transaction on unified."""
        unit = refusal_unit(*error)
        if self.tx is TxPlace.LOST:
            self._move_tx(TxEvent.REPORTED)
        if self.tx is TxPlace.PINNED:
            self._start_tenant(unit, ToTenant(decision.shop_id, "refused", kind=decision.kind,
                                              table=decision.table, primary=True))
            return
        if lost_tx and self.tx is TxPlace.UNIFIED:
            self._move_tx(TxEvent.BEGIN_ANSWERED, begin="BEGIN")
        self._send_unified(unit, ToUnified(decision.shop_id, "refused", decision.source, decision.kind,
                                           decision.table))

    def _start_hold(self, unit: Unit, decision: Hold) -> None:
        self._held = HeldUnit(unit, decision, self._clock() + decision.hold_s)
        self._advance(Event.HOLD_START)
        self.fx.set_timer(HOLD_POLL_S)
        if decision.wake is not None:
            decision.wake(lambda: self.fx.set_timer(0.0))

    def _poll_hold(self) -> None:
        held = self._held
        assert held is not None
        if held.decision.held() and self._clock() < held.deadline:
            self.fx.set_timer(HOLD_POLL_S)
            return
        self._held = None
        self._advance(Event.HOLD_END)
        if held.decision.held():
            error = held.decision.timeout_error
            if error is None:
                logger.info("shop %s: a unit waited %.1f s for a cutover hold; refused",
                            held.decision.shop_id, held.decision.hold_s)
                error = hold_timeout_error(held.decision.shop_id)
            self._copies.refused(held.unit)
            self._refuse(held.decision, error)
        elif not self._copies.hold_ended(held.unit):
            self._queue.appendleft(held.unit)
        self._pump()

    def _fatal_in_tenant_tx(self) -> None:
        self._queue.clear()
        self.fx.to_client(not_in_tenant_transaction(self.facts.pinned_shop))
        self._close("tenant_failed")

    # --- state ---------------------------------------------------------------------------------
    def _advance(self, event: Event) -> None:
        self.state = advance(self.state, event)

    def _move_tx(self, event: TxEvent, *, shop: int | None = None, begin: str | None = None) -> None:
        place = self.tx = advance_tx(self.tx, event)
        facts = self.facts
        facts.pinned_shop = shop if place is TxPlace.PINNED else None
        facts.deferred_begin = begin if place is TxPlace.DEFERRED else None
        if place is not TxPlace.DEFERRED or event is TxEvent.BEGIN_ANSWERED:
            facts.deferred_replay = ()
        if place is TxPlace.LOST:
            self._lost_shop = shop
        if place is not TxPlace.PINNED:
            self._pinned_status = c.TX_IDLE

    def _close(self, reason: str) -> None:
        self._advance(Event.CLOSE)
        self.fx.end(reason)


def _rewrites(decision: Decision | None) -> Rewrites:
    return decision.rewrites if isinstance(decision, ToUnified | Aside) else ()
