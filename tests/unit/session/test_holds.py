"""Holds: a unit waits for its shop's cutover hold (timer polls, fake clock), then runs or is refused."""

from __future__ import annotations

from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.local_answers import refusal_sql
from pgtenantproxy.session.decision import AnswerBegin, Decision, Hold, ToTenant, ToUnified
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.machine import HOLD_POLL_S
from pgtenantproxy.session.refusals import hold_timeout_error
from pgtenantproxy.session.state import State, TxPlace

from .harness import FakeLink, Harness
from .wire import cc, error, q, rfq, select_answer, sqlstate_of

UPDATE = "UPDATE orders SET x = 1"
AFTER = ToUnified(reason="after_hold")


class Cutover:
    """The shop's hold, as the router sees it: held until ``release``; then ``after`` decides."""

    def __init__(self, after: Decision = AFTER) -> None:
        self.holding = True
        self.after = after
        self.hold = Hold(1, "held", held=lambda: self.holding, hold_s=5.0)

    def __call__(self, unit: Unit, facts: SessionFacts) -> Decision:
        return self.hold if self.holding else self.after


def _held(after: Decision = AFTER, **kwargs: object) -> tuple[Harness, Cutover]:
    cutover = Cutover(after)
    h = Harness({"orders": cutover}, **kwargs)  # type: ignore[arg-type]
    h.client(q(UPDATE))
    return h, cutover


def test_a_held_unit_sets_the_poll_timer_and_waits() -> None:
    h, cutover = _held()
    assert h.take() == [("timer", HOLD_POLL_S)]
    assert h.state is State.HELD and h.router.acted_on == [cutover.hold]
    h.client(q("SELECT 2"))  # behind it, even a unified unit waits
    assert h.take() == []
    for _ in range(5):
        h.clock.advance(HOLD_POLL_S)
        h.fire()
        assert h.take() == [("timer", HOLD_POLL_S)]
    assert h.state is State.HELD and h.unified_bytes() == b""


def test_a_released_hold_decides_the_unit_again_and_sends_it() -> None:
    h, cutover = _held()
    h.client(q("SELECT 2"))
    h.take()
    cutover.holding = False
    h.fire()
    assert h.take() == [("unified", q(UPDATE)), ("unified", q("SELECT 2"))]
    assert h.state is State.UNIFIED_BUSY
    assert h.router.acted_on == [cutover.hold, ToUnified(reason="after_hold"), ToUnified(reason="default")]
    h.unified(cc("UPDATE 1"), rfq(), select_answer())
    assert h.router.outcomes == ["ok", "ok"]
    assert h.client_bytes() == cc("UPDATE 1") + rfq() + select_answer()


def test_a_released_hold_can_send_the_unit_to_its_new_tenant_database() -> None:
    link = FakeLink()
    h, cutover = _held(ToTenant(1, "tenant_primary", primary=True), links={1: [link]})
    h.take()
    cutover.holding = False
    h.fire()
    assert h.take() == [("borrow", 1), ("attach", link), ("tenant", link, q(UPDATE))]
    h.tenant(cc("UPDATE 1"), rfq())
    assert h.client_bytes() == cc("UPDATE 1") + rfq()


def test_a_hold_that_outlasts_its_deadline_is_refused_with_55p03_on_unified() -> None:
    h, _cutover = _held()
    h.take()
    h.clock.advance(4.99)
    h.fire()
    assert h.take() == [("timer", HOLD_POLL_S)]
    h.clock.advance(0.02)
    h.fire()
    refusal = q(refusal_sql(*hold_timeout_error(1)))
    assert h.take() == [("unified", refusal)]
    assert b"55P03" in refusal and refusal.startswith(b"Q") and b"DO $pgtenantproxy$" in refusal
    assert h.state is State.UNIFIED_BUSY and q(UPDATE) not in h.unified_bytes()
    answer = error("55P03", "pgtenantproxy: shop 1 is being cut over; retry") + rfq()
    h.unified(answer)
    assert h.client_bytes() == answer and sqlstate_of(answer) == "55P03"
    assert h.router.done[0][1] == ToUnified(1, "refused")
    assert h.router.outcomes == ["error"]


def test_a_hold_timeout_in_a_deferred_transaction_fails_it_on_unified() -> None:
    cutover = Cutover()
    h = Harness({"BEGIN": AnswerBegin(reason="deferred_begin"), "orders": cutover})
    h.client(q("BEGIN"), q(UPDATE))
    h.take()
    h.clock.advance(6)
    h.fire()
    assert h.unified_bytes() == q("BEGIN") + q(refusal_sql(*hold_timeout_error(1)))
    assert h.tx is TxPlace.UNIFIED
    h.unified(cc("BEGIN"), rfq("T"), error("55P03"), rfq("E"))
    assert h.client_bytes() == error("55P03") + rfq("E")


def test_a_hold_waits_for_unified_to_owe_nothing_first() -> None:
    h = Harness({"orders": Cutover()})
    h.client(q("SELECT 1"), q(UPDATE))
    assert h.take() == [("unified", q("SELECT 1"))]
    h.unified(select_answer())
    assert h.take() == [("client", select_answer()), ("timer", HOLD_POLL_S)]
    assert h.state is State.HELD


def test_dispose_while_held_clears_the_timer() -> None:
    h, _ = _held()
    h.take()
    h.machine.dispose()
    assert h.take() == [("clear_timer",)]
    assert h.state is State.CLOSED
