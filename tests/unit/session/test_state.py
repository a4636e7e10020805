"""state.py's two tables: every pair outside them raises, every pair inside is taken by some scenario."""

from __future__ import annotations

import itertools

import pytest

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.messages import frame
from pgtenantproxy.session.decision import AnswerBegin, AnswerEnd, CopyFirstRow, Hold, ToTenant
from pgtenantproxy.session.state import (
    TRANSITIONS,
    TX_TRANSITIONS,
    Event,
    IllegalMove,
    State,
    TxEvent,
    TxPlace,
    advance,
    advance_tx,
)

from .harness import FakeLink, Harness
from .wire import X, cc, q, rfq, select_answer

ALL_PAIRS = list(itertools.product(State, Event))
ALL_TX_PAIRS = list(itertools.product(TxPlace, TxEvent))

#: Defensive entries no input reaches today: a primary unit always takes the deferred BEGIN with
#: it (BEGIN_SENT moves to UNIFIED before the unit runs), and LOST is reported before any unit runs.
TX_DEFENSIVE = {
    (TxPlace.DEFERRED, TxEvent.PINNED),
    (TxPlace.DEFERRED, TxEvent.LOST),
    (TxPlace.DEFERRED, TxEvent.UNPINNED),
    (TxPlace.LOST, TxEvent.UNPINNED),
}


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda v: v.value)
def test_advance_follows_the_table_or_raises(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert advance(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalMove, match=f"no move from {state.value} on {event.value}"):
            advance(state, event)


@pytest.mark.parametrize(("place", "event"), ALL_TX_PAIRS, ids=lambda v: v.value)
def test_advance_tx_follows_the_table_or_raises(place: TxPlace, event: TxEvent) -> None:
    if (place, event) in TX_TRANSITIONS:
        assert advance_tx(place, event) is TX_TRANSITIONS[(place, event)]
    else:
        with pytest.raises(IllegalMove, match=f"no move from {place.value} on {event.value}"):
            advance_tx(place, event)


def test_every_live_state_can_close_and_closed_stays_closed() -> None:
    for state in State:
        assert advance(state, Event.CLOSE) is State.CLOSED


def test_the_tables_only_name_known_members() -> None:
    assert set(TRANSITIONS) <= set(ALL_PAIRS)
    assert set(TX_TRANSITIONS) <= set(ALL_TX_PAIRS)


# --- reachability: scenarios through the machine, moves recorded by RecordingMachine -------------------
PRIMARY = ToTenant(1, "tenant_primary", primary=True)
READ = ToTenant(1, "read")


def _scenarios() -> list[Harness]:
    done: list[Harness] = []

    # IDLE -SENT_UNIFIED-> BUSY -SENT_UNIFIED-> BUSY -DRAINED-> IDLE; IDLE/BUSY -CLOSE-> (terminate)
    h = Harness()
    h.client(q("SELECT 1"), q("SELECT 2"))
    h.unified(select_answer(), select_answer())
    h.client(q("SELECT 3"), X)
    done.append(h)
    h = Harness()
    h.client(X)
    done.append(h)

    # tenant: BORROWING -READY-> RUNNING -END-> IDLE; BORROWING -END-> IDLE (pool gave up)
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    h.tenant(select_answer())
    h.client(q("SELECT * FROM orders"))
    h.machine.tenant_unavailable("no connection")
    done.append(h)

    # dispose while BORROWING, RUNNING, HELD
    h = Harness({"orders": READ})
    h.client(q("SELECT * FROM orders"))
    h.machine.dispose()
    done.append(h)
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    h.machine.dispose()
    done.append(h)
    h = Harness({"orders": Hold(1, "held", held=lambda: True, hold_s=1.0)})
    h.client(q("UPDATE orders SET x = 1"))
    h.machine.dispose()
    done.append(h)

    # HELD -HOLD_END-> IDLE
    h = Harness({"orders": Hold(1, "held", held=lambda: False, hold_s=1.0)})
    h.client(q("UPDATE orders SET x = 1"))
    h.fire()
    done.append(h)

    # COPY FROM STDIN started by the proxy: IDLE -COPY_START-> COPY_WAITING -COPY_PLACED-> IDLE, or -CLOSE->
    copy = CopyFirstRow(reason="copy_first_row", table="t")
    h = Harness({"COPY t": copy})
    h.client(q("COPY t FROM STDIN"), frame(c.COPY_DONE, b""))
    done.append(h)
    h = Harness({"COPY t": copy})
    h.client(q("COPY t FROM STDIN"))
    h.machine.dispose()
    done.append(h)

    # lazy BEGIN, END answered; BEGIN sent to unified
    h = Harness({"BEGIN": AnswerBegin(reason="deferred_begin"), "COMMIT": AnswerEnd(reason="deferred_end")})
    h.client(q("BEGIN"), q("COMMIT"), q("BEGIN"), q("SELECT 1"))
    done.append(h)

    # UNIFIED -PINNED-> PINNED -PINNED-> PINNED -UNPINNED-> UNIFIED; UNIFIED -UNPINNED-> UNIFIED;
    # then PINNED -LOST-> LOST -REPORTED-> UNIFIED; UNIFIED -LOST-> LOST; CLOSED -CLOSE-> CLOSED
    link = FakeLink()
    h = Harness({"orders": PRIMARY}, links={1: [link, FakeLink(), FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    h.tenant(select_answer())
    h.client(q("BEGIN; UPDATE orders SET x = 1"))
    h.tenant(cc("BEGIN"), cc("UPDATE 1"), rfq("T"))
    h.client(q("UPDATE orders SET x = 2"))
    h.tenant(cc("UPDATE 1"), rfq("T"))
    h.client(q("COMMIT orders"))
    h.tenant(cc("COMMIT"), rfq("I"))
    h.client(q("BEGIN; UPDATE orders SET x = 1"))
    h.tenant(cc("BEGIN"), cc("UPDATE 1"), rfq("T"))
    h.client(q("UPDATE orders SET x = 3"))
    pinned = h.machine.running_link
    assert pinned is not None
    pinned.broken = True
    h.tenant(cc("UPDATE 1"), rfq("T"))
    h.client(q("UPDATE orders SET x = 4"))
    h.unified(cc("BEGIN"), rfq("T"))  # the refusal's BEGIN, filtered
    h.client(q("BEGIN; UPDATE orders SET x = 5"))
    done.append(h)
    h = Harness({"orders": PRIMARY}, links={1: [FakeLink()]})
    h.client(q("BEGIN; UPDATE orders SET x = 1"))
    running = h.machine.running_link
    assert running is not None
    running.broken = True
    h.tenant(cc("BEGIN"), cc("UPDATE 1"), rfq("T"))
    done.append(h)
    h = Harness({"orders": PRIMARY}, links={1: [FakeLink()]})
    h.client(q("BEGIN; UPDATE orders SET x = 1"))
    h.tenant(cc("BEGIN"), cc("UPDATE 1"), rfq("T"))
    h.client(X)
    h.machine.dispose()
    done.append(h)
    return done



def test_every_move_in_the_tables_is_reachable() -> None:
    moves: set[tuple[State, Event]] = set()
    tx_moves: set[tuple[TxPlace, TxEvent]] = set()
    for h in _scenarios():
        moves |= h.machine.moves
        tx_moves |= h.machine.tx_moves
    assert set(TRANSITIONS) - moves == set()
    assert set(TX_TRANSITIONS) - tx_moves == TX_DEFENSIVE
    assert moves <= set(TRANSITIONS) and tx_moves <= set(TX_TRANSITIONS)
