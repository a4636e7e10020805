"""The routed session's states and every move between them, as data, in one place.

Two independent machines, each a table ``(state, event) -> next state``:

* :class:`State` (who has the session's attention): ``IDLE`` (nothing owed by
  anyone), ``UNIFIED_BUSY`` (the unified server owes answers; more units may
  be pipelined to it, nothing else starts), ``TENANT_BORROWING`` (a tenant unit
  waits for its connection), ``TENANT_RUNNING`` (its request is out, its answer
  comes), ``HELD`` (a unit waits for its shop's cutover hold), ``COPY_WAITING``
  (the proxy started a COPY FROM STDIN itself and waits for its first row, which
  decides where it runs), ``CLOSED``.
* :class:`TxPlace` (where the session's transaction lives): ``UNIFIED`` (or
  none), ``DEFERRED`` (a BEGIN the proxy answered and sent nowhere yet),
  ``PINNED`` (open on a tenant connection the session keeps), ``LOST`` (a
  pinned connection could not be kept: the next unit is refused so the client
  learns its transaction is gone).

:func:`advance` is the only way to change either: a move that is not in the
table raises :class:`IllegalMove` (a bug, never a client's doing).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class State(enum.Enum):
    IDLE = "idle"
    UNIFIED_BUSY = "unified_busy"
    TENANT_BORROWING = "tenant_borrowing"
    TENANT_RUNNING = "tenant_running"
    HELD = "held"
    COPY_WAITING = "copy_waiting"
    CLOSED = "closed"


class Event(enum.Enum):
    SENT_UNIFIED = "sent_unified"  # a client unit went to unified (one ReadyForQuery owed)
    UNIFIED_DRAINED = "unified_drained"  # unified answered the last unit it owed
    TENANT_START = "tenant_start"  # a unit starts on a tenant connection
    TENANT_READY = "tenant_ready"  # its connection is there, the request written
    TENANT_END = "tenant_end"  # its answer is complete, or it failed before / during
    HOLD_START = "hold_start"
    HOLD_END = "hold_end"
    COPY_START = "copy_start"  # the proxy answered a COPY FROM STDIN itself; its first row is awaited
    COPY_PLACED = "copy_placed"  # the first row (or the data's end) came: the COPY goes where it runs
    CLOSE = "close"


class TxPlace(enum.Enum):
    UNIFIED = "unified"
    DEFERRED = "deferred"
    PINNED = "pinned"
    LOST = "lost"


class TxEvent(enum.Enum):
    BEGIN_ANSWERED = "begin_answered"  # the proxy answered a lazy BEGIN
    BEGIN_SENT = "begin_sent"  # the deferred BEGIN went to the server running the next unit
    END_ANSWERED = "end_answered"  # the proxy answered the COMMIT/ROLLBACK of an empty deferred transaction
    PINNED = "pinned"  # a primary unit left its transaction open on its tenant connection
    UNPINNED = "unpinned"  # that transaction ended (ReadyForQuery I) or the session ended
    LOST = "lost"  # the open transaction's connection could not be kept
    REPORTED = "reported"  # the client was told its transaction is lost


class IllegalMove(Exception):
    """A move the tables do not allow: a bug in the machine."""


_ANY_LIVE = (State.IDLE, State.UNIFIED_BUSY, State.TENANT_BORROWING, State.TENANT_RUNNING, State.HELD,
             State.COPY_WAITING)

TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.IDLE, Event.SENT_UNIFIED): State.UNIFIED_BUSY,
    (State.IDLE, Event.TENANT_START): State.TENANT_BORROWING,
    (State.IDLE, Event.HOLD_START): State.HELD,
    (State.UNIFIED_BUSY, Event.SENT_UNIFIED): State.UNIFIED_BUSY,
    (State.UNIFIED_BUSY, Event.UNIFIED_DRAINED): State.IDLE,
    (State.TENANT_BORROWING, Event.TENANT_READY): State.TENANT_RUNNING,
    (State.TENANT_BORROWING, Event.TENANT_END): State.IDLE,
    (State.TENANT_RUNNING, Event.TENANT_END): State.IDLE,
    (State.HELD, Event.HOLD_END): State.IDLE,
    (State.IDLE, Event.COPY_START): State.COPY_WAITING,
    (State.COPY_WAITING, Event.COPY_PLACED): State.IDLE,
    **{(s, Event.CLOSE): State.CLOSED for s in _ANY_LIVE},
    (State.CLOSED, Event.CLOSE): State.CLOSED,
}

TX_TRANSITIONS: Mapping[tuple[TxPlace, TxEvent], TxPlace] = {
    (TxPlace.UNIFIED, TxEvent.BEGIN_ANSWERED): TxPlace.DEFERRED,
    (TxPlace.DEFERRED, TxEvent.BEGIN_SENT): TxPlace.UNIFIED,
    (TxPlace.DEFERRED, TxEvent.END_ANSWERED): TxPlace.UNIFIED,
    (TxPlace.DEFERRED, TxEvent.PINNED): TxPlace.PINNED,  # the BEGIN went with a primary unit
    (TxPlace.DEFERRED, TxEvent.LOST): TxPlace.LOST,
    (TxPlace.UNIFIED, TxEvent.PINNED): TxPlace.PINNED,
    (TxPlace.UNIFIED, TxEvent.LOST): TxPlace.LOST,
    (TxPlace.PINNED, TxEvent.PINNED): TxPlace.PINNED,
    (TxPlace.PINNED, TxEvent.UNPINNED): TxPlace.UNIFIED,
    (TxPlace.PINNED, TxEvent.LOST): TxPlace.LOST,
    (TxPlace.LOST, TxEvent.REPORTED): TxPlace.UNIFIED,
    (TxPlace.LOST, TxEvent.UNPINNED): TxPlace.LOST,
    (TxPlace.UNIFIED, TxEvent.UNPINNED): TxPlace.UNIFIED,
    (TxPlace.DEFERRED, TxEvent.UNPINNED): TxPlace.DEFERRED,
}


def advance(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalMove(f"session: no move from {state.value} on {event.value}") from None


def advance_tx(place: TxPlace, event: TxEvent) -> TxPlace:
    try:
        return TX_TRANSITIONS[(place, event)]
    except KeyError:
        raise IllegalMove(f"session transaction: no move from {place.value} on {event.value}") from None
