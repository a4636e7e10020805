"""A COPY FROM STDIN routed by its first row: its bookkeeping, from the statement to the data's end.

Once a shop's rows live on its own database, ``COPY customers (shop_id, name) FROM
STDIN`` must run there, and only the rows say which shop it is. The router answers
:class:`~pgtenantproxy.session.decision.CopyFirstRow` (where the tenant column is,
the data format); the machine (its part for COPY is :mod:`.copy_flow`) then:

1. **starts the COPY itself**: the client gets the proxy's CopyInResponse
   (:func:`~pgtenantproxy.protocol.copy_answers.copy_in_reply`), sends its data, and
   the statement and that data are **held** here (mode ``WAITING``) until the first
   complete row has come (:mod:`pgtenantproxy.protocol.copy_rows` reads it);
2. **asks again**, with :attr:`~pgtenantproxy.session.facts.SessionFacts.copy_first_row`
   set: the first row's shop decides (its database when the shop writes there; unified
   otherwise, or when the data ended without a row; a refusal, or a cutover's hold);
   a first row without a shop is refused at once (0A000);
3. **places** it: the statement goes where the answer says, its answer edited
   (:class:`~pgtenantproxy.protocol.copy_answers.CopyInReply`: the client already got
   a CopyInResponse), the held units after it, then the rest as it comes, never the
   whole stream at once. On a tenant (mode ``TENANT``) every row is read and checked:
   a row of another shop, or with no shop, ends the COPY: the proxy sends CopyFail
   (nothing is committed) and the client gets the proxy's 0A000 instead of the
   server's answer to it. On unified (mode ``UNIFIED``) the data is forwarded unread,
   as before this feature. ``DISCARDING``: the servers are done with this COPY (a
   refusal, the proxy's CopyFail, the server's own error); the client's remaining data
   is dropped, as PostgreSQL ignores copy messages outside a COPY.

The client's stream (:meth:`CopyIn.part`): CopyData (and Flush/Sync, which a server
in copy-in mode ignores) up to CopyDone or CopyFail; in the extended protocol the
client then sends a Sync, which the server answers with the COPY's only
ReadyForQuery. That Sync goes to the server that has the statement while it still
owes that answer, and is dropped otherwise, so the client always gets exactly one
ReadyForQuery. Any other message ends the stream early (the client broke the
protocol; a COPY on a tenant is then failed with PostgreSQL's 08P01).

Invariants: the machine holds one :class:`CopyIn` from the statement until the
client's stream ends; nothing is sent to a server before the placement; units
reach the server in the client's order; held data is bounded by the first row in
``WAITING`` and by :data:`HOLD_LIMIT` (the client is paused) afterwards.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.copy_answers import CopyInReply, copy_fail
from pgtenantproxy.protocol.copy_rows import CopyRow, RowReader, row_reader, shop_of
from pgtenantproxy.protocol.errors import error_response
from pgtenantproxy.session.decision import CopyFirstRow, Refusal
from pgtenantproxy.session.facts import FirstRow
from pgtenantproxy.session.refusals import copy_interrupted, copy_row_refusal

#: Bytes of client data held while the COPY's connection is being found (the client is paused past it).
HOLD_LIMIT = 1 << 20


class CopyMode(enum.Enum):
    WAITING = "waiting"  # no server has the statement: data held until the first row
    PLACING = "placing"  # the first row is known, where it runs is not yet (a cutover hold)
    TENANT = "tenant"  # on a tenant connection: rows read and checked against its shop
    UNIFIED = "unified"  # on unified: data forwarded unread
    DISCARDING = "discarding"  # the servers are done with it: the client's rest is dropped


class Part(enum.Enum):
    DATA = "data"  # CopyData, or a Flush/Sync a server in copy-in mode ignores
    CLOSING = "closing"  # CopyDone/CopyFail of an extended-protocol COPY: its Sync comes next
    END = "end"  # the last unit of the client's stream
    OTHER = "other"  # not part of the stream: the client ended it without CopyDone


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row the COPY cannot take: another shop's, or one without a shop (``shop_id`` None)."""

    number: int
    shop_id: int | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Held:
    """A unit of the client's stream (None: the client broke the stream off here), and its first bad row."""

    unit: Unit | None
    part: Part
    bad: BadRow | None = None


class CopyIn:
    """One COPY FROM STDIN from its statement to the end of the client's data (see the module docstring)."""

    def __init__(self, statement: Unit, decision: CopyFirstRow) -> None:
        self.statement = statement
        self.decision = decision
        self.extended = statement.kind is UnitKind.EXTENDED
        self.mode = CopyMode.WAITING
        #: What the first row says (None: not come yet).
        self.first: FirstRow | None = None
        #: The first row, when it has no shop (the COPY is refused).
        self.first_bad: BadRow | None = None
        #: Units taken from the client and not sent yet.
        self.held: deque[Held] = deque()
        self.held_bytes = 0
        #: The type of the message that broke the client's stream off, if one did.
        self.interrupted: int | None = None
        #: The edit of the statement's answer, once it is sent.
        self.reply: CopyInReply | None = None
        self._reader: RowReader = row_reader(decision.format, decision.column)
        self._closing = False  # CopyDone/CopyFail came (extended: the Sync is next)

    # --- the client's stream -------------------------------------------------------------
    def part(self, unit: Unit) -> Part:
        """What ``unit`` is in the client's stream (see the module docstring)."""
        messages = unit.messages
        mtype = messages[0].type
        if unit.kind is UnitKind.COPY:
            if mtype == c.COPY_DATA:
                return Part.OTHER if self._closing else Part.DATA
            if self._closing:
                return Part.OTHER
            if self.extended:
                self._closing = True
                return Part.CLOSING
            return Part.END
        if len(messages) == 1 and mtype in (c.SYNC, c.FLUSH):
            if mtype == c.SYNC and self._closing:
                return Part.END
            return Part.DATA
        return Part.OTHER

    @property
    def crowded(self) -> bool:
        """Held data past :data:`HOLD_LIMIT` once the first row is known (the client is paused)."""
        return self.mode is not CopyMode.WAITING and self.held_bytes > HOLD_LIMIT

    def take(self, unit: Unit, part: Part) -> Held:
        """``unit`` to send now: on a tenant, its rows read and checked."""
        rows = self.read(unit) if self.mode is CopyMode.TENANT else []
        return Held(unit, part, self.check(rows) if rows else None)

    def hold(self, unit: Unit, part: Part) -> bool:
        """Keep ``unit`` until it can be sent; True when it brought the first row."""
        rows = self.read(unit) if self.mode is not CopyMode.UNIFIED else []
        found = bool(rows) and self.first is None
        if found:
            head = rows[0]
            self.first_bad = self._verdict(head, None)
            shop = None if self.first_bad is not None else shop_of(head.value or b"", self.binary)
            self.first = FirstRow(shop)
        bad = self.check(rows) if rows and self.first_bad is None else None
        self.held.append(Held(unit, part, bad))
        self.held_bytes += len(unit.messages[0].body)
        return found

    def interrupt(self, message_type: int) -> Held:
        """The client sent another message before the end of its data."""
        self.interrupted = message_type
        return Held(None, Part.OTHER)

    def unhold(self) -> Held:
        held = self.held.popleft()
        if held.unit is not None:
            self.held_bytes -= len(held.unit.messages[0].body)
        return held

    def no_first_row(self) -> None:
        """The data ended (or the client broke off) before any row: the COPY has none."""
        if self.first is None:
            self.first = FirstRow(None)

    # --- rows ----------------------------------------------------------------------------
    @property
    def binary(self) -> bool:
        return self.decision.format.binary

    @property
    def shop_id(self) -> int | None:
        """The first row's shop: every row must be its."""
        return self.first.shop_id if self.first is not None else None

    def read(self, unit: Unit) -> list[CopyRow]:
        """The rows ``unit`` completes (CopyDone completes a last line without its newline)."""
        if unit.kind is not UnitKind.COPY:
            return []
        msg = unit.messages[0]
        if msg.type == c.COPY_DATA:
            return self._reader.feed(msg.body)
        return self._reader.finish() if msg.type == c.COPY_DONE else []

    def check(self, rows: list[CopyRow]) -> BadRow | None:
        """The first of ``rows`` that is not the first row's shop's."""
        shop = self.shop_id
        for row in rows:
            bad = self._verdict(row, shop)
            if bad is not None:
                return bad
        return None

    def _verdict(self, row: CopyRow, shop: int | None) -> BadRow | None:
        if row.problem is not None:
            return BadRow(row.number, None, row.problem)
        if row.value is None:
            return BadRow(row.number, None, "has no shop (its tenant column is NULL)")
        found = shop_of(row.value, self.binary)
        if found is None:
            return BadRow(row.number, None, "has no shop (its tenant column is not a shop id)")
        if shop is not None and found != shop:
            return BadRow(row.number, found)
        return None

    # --- errors --------------------------------------------------------------------------
    def refusal(self, bad: BadRow, runs_on: int | None, *, transaction: bool = False) -> Refusal:
        """The error for ``bad`` (the COPY runs, or would run, on ``runs_on``'s database)."""
        return copy_row_refusal(self.decision.table, bad.number, shop_id=bad.shop_id, runs_on=runs_on,
                                problem=bad.problem, transaction=transaction)

    def interruption(self) -> Refusal:
        """PostgreSQL's error for a message in the middle of COPY data."""
        return copy_interrupted(self.interrupted or 0)

    def fail(self, error: Refusal) -> tuple[bytes, bytes]:
        """(the CopyFail that ends the COPY on its server, the ErrorResponse the client gets instead)."""
        return copy_fail(error.message), error_response(error.sqlstate, error.message, hint=error.hint)
