"""The session machine's side of a COPY FROM STDIN routed by its first row (sans-IO).

:class:`CopyFlow` is part of :class:`~pgtenantproxy.session.machine.SessionMachine`,
kept in a module of its own: the machine calls it at a few points (starting the
COPY, client data, the tenant connection coming, the tenant unit's end, a hold's
end) and it drives the machine back through :class:`CopyHost`, the machine's own
members it uses. What happens to one COPY, and why, is in :mod:`.copy_in`; here:

* :meth:`CopyFlow.start`: the proxy's CopyInResponse to the client, then the data;
* :meth:`CopyFlow.units`: each unit of the client's stream at the head of the
  queue is held (``WAITING``: until the first row; ``PLACING``: a cutover hold;
  ``TENANT`` while the connection is being found), sent (one write per call, to the
  tenant connection or to unified), or dropped (``DISCARDING``);
* :meth:`CopyFlow._place`: the machine's ``_decide`` asked again with the first row
  in :attr:`~pgtenantproxy.session.facts.SessionFacts.copy_first_row`, then its
  ``_act`` (a tenant unit with :class:`~pgtenantproxy.protocol.copy_answers.CopyInReply`,
  a unified unit, a refusal or a hold);
* a row of another shop on a tenant: CopyFail (and, for a simple Query that went with
  a head, the Sync of ours that the tenant unit owes after the data), the client's
  error put in place of the server's.

Also here, because it is about COPY too: an extended-protocol COPY FROM that
unified runs as any unified unit (no shop cut over, or not routed by its rows).
Unified ignores that unit's Sync in copy-in mode and answers the client's Sync
after CopyDone/CopyFail instead; :meth:`CopyFlow.started` (unified's
CopyInResponse came for an extended unit) and :meth:`CopyFlow.absorbs` make the
machine owe that answer once, not twice. (A client that pipelines its data and
final Sync before the CopyInResponse arrives is not followed.)

Invariant: while :attr:`CopyFlow.active`, every unit at the head of the machine's
queue belongs to the COPY's stream (the first other one ends it), so the machine
dispatches nothing before the COPY's data is over.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.copy_answers import CopyInReply, copy_in_reply, copy_in_response
from pgtenantproxy.protocol.messages import SYNC_MESSAGE
from pgtenantproxy.session.contract import Effects, TenantLink
from pgtenantproxy.session.copy_in import CopyIn, CopyMode, Held, Part
from pgtenantproxy.session.decision import (
    UNIFIED_PINNED,
    CopyFirstRow,
    Decision,
    Hold,
    Refusal,
    Refuse,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.runs import TenantRun
from pgtenantproxy.session.state import Event, State
from pgtenantproxy.session.unified_answers import UnifiedAnswers


class CopyHost(Protocol):
    """What a :class:`CopyFlow` uses of its session machine (the machine's own members)."""

    fx: Effects
    facts: SessionFacts
    state: State
    _queue: deque[Unit]
    _run: TenantRun | None
    _answers: UnifiedAnswers

    def _advance(self, event: Event) -> None: ...
    def _decide(self, unit: Unit) -> Decision: ...
    def _act(self, unit: Unit, decision: Decision) -> None: ...
    def _backpressure(self) -> None: ...


class CopyFlow:
    def __init__(self, host: CopyHost) -> None:
        self.host = host
        #: The COPY whose data the client is sending, if any.
        self.copy: CopyIn | None = None
        self._busy = False
        self._absorb_sync = False

    # --- what the machine asks ------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.copy is not None

    @property
    def crowded(self) -> bool:
        return self.copy is not None and self.copy.crowded

    def admits(self, unit: Unit, decision: CopyFirstRow) -> bool:
        """May the proxy start this COPY itself (a shape it can answer, where the session allows)?"""
        facts = self.host.facts
        if self.copy is not None or unit.pinned or copy_in_reply(unit, b"") is None:
            return False
        if facts.pinned_shop is not None:
            return decision.shop_id == facts.pinned_shop
        return decision.shop_id is None and facts.tx_status == c.TX_IDLE

    def start(self, unit: Unit, decision: CopyFirstRow) -> None:
        """Answer the COPY's start ourselves; its data is held until the first row says where it runs."""
        reply = copy_in_reply(unit, copy_in_response(decision.columns, decision.format.binary))
        assert reply is not None  # admits() said so
        self.copy = CopyIn(unit, decision)
        self.host._advance(Event.COPY_START)
        self.host.fx.to_client(reply)
        self.units()

    def reply_for(self, unit: Unit) -> CopyInReply | None:
        """The edit of a tenant's answer to the COPY statement (None: another unit)."""
        copy = self.copy
        if copy is None or unit is not copy.statement:
            return None
        copy.reply = CopyInReply(extended=copy.extended)
        return copy.reply

    def connected(self, unit: Unit) -> None:
        """The tenant unit ``unit`` has its connection and its request is written."""
        if self.copy is not None and unit is self.copy.statement:
            self.units()  # the data held while the connection was found

    def run_ended(self, unit: Unit) -> None:
        """The tenant unit ``unit`` ended; if it is the COPY, its server is done before the client is."""
        if self.copy is not None and unit is self.copy.statement:
            self.copy.mode = CopyMode.DISCARDING

    def refused(self, unit: Unit) -> None:
        """``unit`` is refused instead of run (a hold that lasted too long)."""
        if self.copy is not None and unit is self.copy.statement:
            self.copy.mode = CopyMode.DISCARDING

    def hold_ended(self, unit: Unit) -> bool:
        """A hold ended; True when it held the COPY, now placed."""
        copy = self.copy
        if copy is None or unit is not copy.statement:
            return False
        self._place(copy)
        return True

    def dispose(self) -> None:
        self.copy = None

    # --- extended-protocol COPY on unified -------------------------------------------------
    def started(self, answered: Unit | None) -> None:
        """Unified's CopyInResponse came in the answer to ``answered`` (see the module docstring)."""
        if answered is not None and answered.kind is UnitKind.EXTENDED:
            self._absorb_sync = True

    def absorbs(self, unit: Unit) -> bool:
        """Is ``unit`` the client's Sync after an extended COPY's data (its answer is owed already)?"""
        if self._absorb_sync and len(unit.messages) == 1 and unit.messages[0].type == c.SYNC:
            self._absorb_sync = False
            return True
        return False

    # --- the client's data -----------------------------------------------------------------
    def units(self) -> None:
        """The COPY's data at the head of the queue, and what was held: held, sent, or dropped."""
        if self._busy:
            return  # the outer call goes on (a placement may act, and come back here, synchronously)
        self._busy = True
        try:
            self._take()
        finally:
            self._busy = False
        self.host._backpressure()

    def _take(self) -> None:
        queue = self.host._queue
        out: list[bytes] = []
        last: CopyIn | None = None
        while (copy := self.copy) is not None:
            last = copy
            if copy.held and self._ready(copy):
                self._send(copy, copy.unhold(), out)
                continue
            if not queue or copy.interrupted is not None:
                break
            unit = queue[0]
            part = copy.part(unit)
            if part is Part.OTHER:
                held = copy.interrupt(unit.messages[0].type)
            else:
                queue.popleft()
                held = None
            if copy.mode is CopyMode.WAITING:
                self._flush(copy, out)
                self._wait(copy, unit, part, held)
            elif self._ready(copy) and not copy.held:
                self._send(copy, held or copy.take(unit, part), out)
            elif held is not None:
                copy.held.append(held)
            else:
                copy.hold(unit, part)
        if last is not None:  # where the COPY runs (it may have ended with this call)
            self._flush(last, out)

    def _wait(self, copy: CopyIn, unit: Unit, part: Part, interrupted: Held | None) -> None:
        """Before the first row: hold the unit; place the COPY once the first row (or the end) came."""
        if interrupted is not None:
            self._refuse(copy, copy.interruption())
            self.copy = None
            return
        if copy.hold(unit, part) or part is not Part.DATA:
            copy.no_first_row()
            self._place(copy)

    def _place(self, copy: CopyIn) -> None:
        """The first row (or the data's end) is known: ask where the COPY runs, and send it there."""
        host = self.host
        facts = host.facts
        if copy.first_bad is not None:
            pinned = facts.pinned_shop
            self._refuse(copy, copy.refusal(copy.first_bad, pinned, transaction=pinned is not None))
            return
        if host.state is State.COPY_WAITING:
            host._advance(Event.COPY_PLACED)
        facts.copy_first_row = copy.first
        try:
            decision = host._decide(copy.statement)
        finally:
            facts.copy_first_row = None
        match decision:
            case ToTenant(primary=True):
                copy.mode = CopyMode.TENANT
            case Hold():
                copy.mode = CopyMode.PLACING
            case Refuse():
                copy.mode = CopyMode.DISCARDING
            case ToUnified():
                copy.mode = CopyMode.UNIFIED
            case _:
                decision, copy.mode = UNIFIED_PINNED, CopyMode.UNIFIED
        if copy.mode is CopyMode.UNIFIED:
            copy.reply = CopyInReply(extended=copy.extended)
        host._act(copy.statement, decision)
        if copy.mode is CopyMode.UNIFIED and copy.reply is not None:
            host._answers.expect(copy.reply)

    def _refuse(self, copy: CopyIn, error: Refusal) -> None:
        """The COPY never reaches a server: the client gets ``error``, raised where its transaction is."""
        host = self.host
        if host.state is State.COPY_WAITING:
            host._advance(Event.COPY_PLACED)
        copy.mode = CopyMode.DISCARDING
        d = copy.decision
        host._act(copy.statement, Refuse(host.facts.pinned_shop, "copy_refused", kind=d.kind, table=d.table,
                                         error=error))

    # --- sending -----------------------------------------------------------------------------
    def _link(self, copy: CopyIn) -> TenantLink | None:
        """The tenant connection running the COPY now, if any."""
        run = self.host._run
        if run is None or run.unit is not copy.statement or self.host.state is not State.TENANT_RUNNING:
            return None
        return run.link

    def _ready(self, copy: CopyIn) -> bool:
        """Can the COPY's data go (or be dropped) now, rather than be held?"""
        if copy.mode is CopyMode.TENANT:
            return self._link(copy) is not None
        return copy.mode in (CopyMode.UNIFIED, CopyMode.DISCARDING)

    def _send(self, copy: CopyIn, held: Held, out: list[bytes]) -> None:
        """One unit of the client's stream (or its interruption) where the COPY runs, or dropped."""
        unit, part, mode = held.unit, held.part, copy.mode
        last = unit is None or part is Part.END
        if mode is CopyMode.UNIFIED:
            if unit is not None:
                out.append(unit.raw())  # unread; a unit that broke the stream off goes the usual way
        elif mode is CopyMode.TENANT:
            if unit is None:
                self._fail(copy, copy.interruption(), out)
            elif held.bad is not None:
                self._fail(copy, copy.refusal(held.bad, copy.shop_id), out)
            else:
                out.append(unit.raw())
                if part is Part.END and not copy.extended:
                    self._trailer(out)
        elif unit is not None and part is Part.END and copy.extended and self._link(copy) is not None:
            out.append(unit.raw())  # DISCARDING: the server still answers the client's Sync
        if last:
            self.copy = None

    def _fail(self, copy: CopyIn, error: Refusal, out: list[bytes]) -> None:
        """End the COPY on its tenant with CopyFail: nothing is committed, the client gets ``error``."""
        fail, response = copy.fail(error)
        out.append(fail)
        if not copy.extended:
            self._trailer(out)
        elif copy.interrupted is not None:
            out.append(SYNC_MESSAGE)  # the client will not send its own
        if copy.reply is not None:
            copy.reply.replace_error(response)
        copy.mode = CopyMode.DISCARDING

    def _trailer(self, out: list[bytes]) -> None:
        """The Sync of ours a simple-Query COPY that went with a head owes after its data."""
        run = self.host._run
        if run is not None and run.work.sync_after_copy:
            run.work.sync_after_copy = False
            out.append(SYNC_MESSAGE)

    def _flush(self, copy: CopyIn, out: list[bytes]) -> None:
        if not out:
            return
        data = b"".join(out)
        out.clear()
        if copy.mode is CopyMode.UNIFIED:
            self.host.fx.to_unified(data)
            return
        link = self._link(copy)
        if link is not None:
            self.host.fx.to_tenant(link, data)
