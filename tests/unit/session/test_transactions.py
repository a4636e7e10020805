"""Where the session's transaction lives: lazy BEGIN, local COMMIT, pinned tenant links, lost ones."""

from __future__ import annotations

import pytest

from pgtenantproxy.protocol.local_answers import refusal_sql
from pgtenantproxy.session.decision import (
    DEFERRED_READ,
    SESSION_SEQUENCE,
    AnswerBegin,
    AnswerDeferred,
    AnswerEnd,
    AnswerLocal,
    Aside,
    Refusal,
    Refuse,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.refusals import (
    IN_FAILED_TRANSACTION,
    lost_transaction,
    pinned_refusal,
    primary_unavailable,
)
from pgtenantproxy.session.state import State, TxPlace

from .harness import FakeLink, Harness, splits
from .wire import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    FLUSH,
    NO_DATA,
    PARSE_COMPLETE,
    SYNC,
    bind,
    cc,
    close,
    describe,
    error,
    execute,
    extended,
    param_description,
    parse,
    q,
    rfq,
    row_description,
    run_prepared,
    select_answer,
    sqlstate_of,
    types,
)

PRIMARY = ToTenant(1, "tenant_primary", primary=True)
BEGIN = AnswerBegin(reason="deferred_begin")
END_COMMIT = AnswerEnd(reason="deferred_end", tag="COMMIT")
#: The deferred BEGIN at the head of a tenant request: Parse/Bind/Execute of the unnamed statement.
BEGIN_HEAD = parse("", "BEGIN") + bind() + execute()
BEGIN_HEAD_ANSWER = PARSE_COMPLETE + BIND_COMPLETE + cc("BEGIN")
INSERT = "INSERT INTO orders VALUES (1)"


def _world(**rules: object) -> tuple[Harness, FakeLink]:
    link = FakeLink("pinned")
    table = {"BEGIN": BEGIN, "COMMIT": PRIMARY, "ROLLBACK": PRIMARY, "orders": PRIMARY}
    table.update(rules)  # type: ignore[arg-type]
    h = Harness(table, links={1: [link, FakeLink("spare")]})  # type: ignore[arg-type]
    return h, link


# --- lazy BEGIN ----------------------------------------------------------------------------------------
def test_lazy_begin_is_answered_by_the_proxy() -> None:
    h, _ = _world()
    h.client(q("BEGIN"))
    assert h.take() == [("client", cc("BEGIN") + rfq("T"))]
    assert h.tx is TxPlace.DEFERRED and h.facts.deferred_begin == "BEGIN"
    assert h.machine.tx_status == ord("T") and not h.machine.idle
    assert h.state is State.IDLE and h.router.acted_on == [BEGIN]
    assert h.router.done == []  # nothing ran anywhere


def test_extended_lazy_begin_is_answered_message_for_message() -> None:
    h, _ = _world()
    unit = parse("", "BEGIN") + bind() + describe("P") + execute() + SYNC
    h.client(unit)
    assert h.take() == [("client", PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + cc("BEGIN") + rfq("T"))]
    assert h.facts.deferred_begin == "BEGIN"


def test_commit_right_after_a_lazy_begin_is_answered_locally_too() -> None:
    h, _ = _world(COMMIT=END_COMMIT)
    h.client(q("BEGIN"), q("COMMIT"))
    assert h.take() == [("client", cc("BEGIN") + rfq("T")), ("client", cc("COMMIT") + rfq("I"))]
    assert h.tx is TxPlace.UNIFIED and h.facts.deferred_begin is None
    assert h.machine.tx_status == ord("I") and h.machine.idle
    assert h.unified_bytes() == b"" and h.fx.of("borrow") == []


SET_LOCAL = "SET LOCAL statement_timeout = '5s'"


def test_set_local_and_savepoint_after_a_lazy_begin_are_answered_and_replayed_on_the_tenant() -> None:
    h, link = _world(**{"SET LOCAL": AnswerDeferred(tag="SET", sql=SET_LOCAL),
                        "SAVEPOINT": AnswerDeferred(tag="SAVEPOINT", sql="SAVEPOINT a")})
    h.client(q("BEGIN"), q(SET_LOCAL), q("SAVEPOINT a"))
    assert h.take() == [("client", cc("BEGIN") + rfq("T")), ("client", cc("SET") + rfq("T")),
                        ("client", cc("SAVEPOINT") + rfq("T"))]
    assert h.tx is TxPlace.DEFERRED and h.facts.deferred_replay == (SET_LOCAL, "SAVEPOINT a")
    h.client(q(INSERT))  # the first statement that names a shop: the transaction begins there
    replayed = parse("", SET_LOCAL) + bind() + execute() + parse("", "SAVEPOINT a") + bind() + execute()
    assert h.fx.tenant_writes() == [BEGIN_HEAD + replayed + q(INSERT) + SYNC]
    h.tenant(BEGIN_HEAD_ANSWER, PARSE_COMPLETE, BIND_COMPLETE, cc("SET"), PARSE_COMPLETE, BIND_COMPLETE,
             cc("SAVEPOINT"), cc("INSERT 0 1"), rfq("T"), rfq("T"))
    assert h.client_bytes() == cc("INSERT 0 1") + rfq("T")
    assert h.tx is TxPlace.PINNED and h.facts.deferred_replay == ()
    assert link.usable


def test_replayed_statements_go_to_unified_after_the_begin_when_the_transaction_runs_there() -> None:
    h, _ = _world(**{"SET LOCAL": AnswerDeferred(tag="SET", sql=SET_LOCAL), "shops": ToUnified(reason="x")})
    h.client(q("BEGIN"), q(SET_LOCAL))
    h.take()
    h.client(q("SELECT * FROM shops"))
    assert h.unified_bytes() == q("BEGIN; " + SET_LOCAL) + q("SELECT * FROM shops")


GLOBAL_READ = Aside(reason=DEFERRED_READ)


def test_a_global_read_before_the_first_shop_statement_runs_aside_the_transaction_stays_deferred() -> None:
    h, _link = _world(shops=GLOBAL_READ)
    h.client(q("BEGIN"), q("SELECT * FROM shops"), q(INSERT))
    assert h.unified_bytes() == q("SELECT * FROM shops")  # outside the transaction, on unified
    assert h.fx.tenant_writes() == []  # the INSERT waits for the read's answer
    h.unified(select_answer(b"s"))  # its ReadyForQuery says I: outside any transaction
    assert h.client_bytes().endswith(rfq("T"))  # the client is still in its transaction
    assert h.fx.tenant_writes() == [BEGIN_HEAD + q(INSERT) + SYNC]  # which begins on the shop's database


def test_a_failing_global_read_fails_the_deferred_transaction_as_directly() -> None:
    h, _ = _world(shops=GLOBAL_READ, **{"SELECT 2": ToUnified(reason="transaction_block")})
    h.client(q("BEGIN"), q("SELECT * FROM shops"))
    h.take()
    h.unified(error("22012"), rfq("I"))
    out = h.client_bytes()
    assert sqlstate_of(out) == "22012" and out.endswith(rfq("E"))
    assert h.tx is TxPlace.UNIFIED and h.machine.tx_status == ord("E")
    assert h.unified_bytes().startswith(q("BEGIN; " + refusal_sql(*IN_FAILED_TRANSACTION)))  # failed there
    h.client(q("SELECT 2"))
    assert h.unified_bytes().endswith(q("SELECT 2"))  # after our batch: the server answers it 25P02


def test_lazy_begin_waits_for_unified_to_owe_nothing() -> None:
    h, _ = _world()
    h.client(q("SELECT 1"), q("BEGIN"))
    assert h.take() == [("unified", q("SELECT 1"))]
    h.unified(select_answer())
    assert h.take() == [("client", select_answer()), ("client", cc("BEGIN") + rfq("T"))]


def test_lazy_begin_goes_to_a_primary_tenant_as_the_head_of_a_simple_query() -> None:
    h, link = _world()
    h.client(q("BEGIN"))
    h.take()
    h.client(q(INSERT))
    assert h.take() == [("borrow", 1), ("attach", link), ("tenant", link, BEGIN_HEAD + q(INSERT) + SYNC)]
    assert h.tx is TxPlace.UNIFIED and h.facts.deferred_begin is None  # sent
    h.tenant(BEGIN_HEAD_ANSWER, cc("INSERT 0 1"), rfq("T"), rfq("T"))
    assert h.take() == [("client", cc("INSERT 0 1") + rfq("T")), ("clear_timer",), ("detach", link)]
    assert h.tx is TxPlace.PINNED and h.facts.pinned_shop == 1
    assert h.machine.tx_status == ord("T")
    assert h.router.outcomes == ["ok"]


def test_the_trailing_sync_answer_is_removed_at_every_split() -> None:
    stream = BEGIN_HEAD_ANSWER + cc("INSERT 0 1") + rfq("T") + rfq("T")
    for chunks in splits(stream):
        h, _link = _world()
        h.client(q("BEGIN"), q(INSERT))
        h.take()
        for chunk in chunks:
            h.tenant(chunk)
        assert h.client_bytes() == cc("INSERT 0 1") + rfq("T"), chunks
        assert h.tx is TxPlace.PINNED and h.fx.of("give_back") == []


def test_lazy_begin_goes_to_a_primary_tenant_as_the_head_of_an_extended_unit() -> None:
    h, _link = _world()
    h.client(q("BEGIN"))
    h.take()
    unit = extended(INSERT)
    h.client(unit)
    assert h.fx.tenant_writes() == [BEGIN_HEAD + unit]  # no Sync of ours: the unit has one
    answer = PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + cc("INSERT 0 1") + rfq("T")
    h.tenant(BEGIN_HEAD_ANSWER, answer)
    assert h.client_bytes() == answer
    assert h.tx is TxPlace.PINNED


def test_a_failing_lazy_begin_on_the_tenant_is_reported_in_a_transaction_on_unified() -> None:
    h, _link = _world()
    h.client(q("BEGIN"), q(INSERT))
    h.take()
    h.tenant(PARSE_COMPLETE, BIND_COMPLETE, error("25001", "cannot begin"), rfq())
    assert h.client_bytes() == b""
    # the client believes it is in a transaction: the 08006 is raised inside one on unified
    assert h.unified_bytes() == q("BEGIN") + q(refusal_sql(*primary_unavailable(1)))
    assert h.tx is TxPlace.UNIFIED
    h.unified(cc("BEGIN"), rfq("T"), error("08006"), rfq("E"))
    assert h.client_bytes() == error("08006") + rfq("E")


def test_primary_unavailable_after_a_lazy_begin_is_raised_in_a_transaction_on_unified() -> None:
    h = Harness({"BEGIN": BEGIN, "orders": PRIMARY})
    h.client(q("BEGIN"), q(INSERT))
    assert h.fx.of("borrow") == [("borrow", 1)]
    h.take()
    h.machine.tenant_unavailable("connect: refused")
    assert h.unified_bytes() == q("BEGIN") + q(refusal_sql(*primary_unavailable(1)))


# --- pinned transactions ---------------------------------------------------------------------------------
def _pinned(**rules: object) -> tuple[Harness, FakeLink]:
    h, link = _world(**rules)
    h.client(q("BEGIN"), q(INSERT))
    h.tenant(BEGIN_HEAD_ANSWER, cc("INSERT 0 1"), rfq("T"), rfq("T"))
    assert h.tx is TxPlace.PINNED
    h.take()
    h.router.done.clear()
    return h, link


def test_an_autocommit_insert_keeps_its_link_for_a_lastval_right_after_it() -> None:
    h, link = _world(orders=ToTenant(1, "tenant_primary", primary=True, linger=True),
                     lastval=ToTenant(1, SESSION_SEQUENCE, primary=True), shops=ToUnified(reason="x"))
    h.client(q(INSERT))
    h.tenant(cc("INSERT 0 1"), rfq("I"))
    assert h.fx.of("give_back") == [] and h.facts.linger_shop == 1  # kept, not back in the pool
    h.take()
    h.client(q("SELECT lastval()"))
    assert h.take() == [("attach", link), ("tenant", link, q("SELECT lastval()"))]  # no borrow: that link
    h.tenant(select_answer(b"7"))
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.facts.linger_shop is None


def test_a_kept_link_goes_back_at_the_next_statement_or_after_a_while() -> None:
    h, link = _world(orders=ToTenant(1, "tenant_primary", primary=True, linger=True),
                     shops=ToUnified(reason="x"))
    h.client(q(INSERT))
    h.tenant(cc("INSERT 0 1"), rfq("I"))
    h.take()
    h.client(q("SELECT * FROM shops"))
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    h.unified(select_answer(b"s"))
    h.take()
    h.client(q(INSERT))
    h.tenant(cc("INSERT 0 1"), rfq("I"))
    h.take()
    h.machine.timer_fired()  # nothing came soon after
    assert h.fx.of("give_back") and h.facts.linger_shop is None


def test_a_pinned_transaction_continues_on_the_same_link_with_no_settings_prelude() -> None:
    h, link = _pinned()
    h.facts.settings["TimeZone"] = "Europe/Paris"  # would make a prelude on a fresh link
    h.client(q("UPDATE orders SET x = 2"))
    assert h.take() == [("attach", link), ("tenant", link, q("UPDATE orders SET x = 2"))]  # no borrow
    assert h.machine.running_link is link
    h.tenant(cc("UPDATE 1"), rfq("T"))
    assert h.take() == [("client", cc("UPDATE 1") + rfq("T")), ("clear_timer",), ("detach", link)]
    assert h.tx is TxPlace.PINNED


def test_a_pinned_unit_is_reprepared_on_the_pinned_link() -> None:
    h, link = _pinned()
    h.client(parse("s1", "SELECT * FROM orders") + describe("S", "s1") + SYNC)
    h.tenant(PARSE_COMPLETE, param_description(), row_description("v"), rfq("T"))
    assert link.prepared == {"s1": "SELECT * FROM orders"}
    h.take()
    h.client(run_prepared("s1"))
    assert h.fx.tenant_writes() == [run_prepared("s1")]  # warm


def test_commit_on_the_pinned_link_gives_it_back_reusable() -> None:
    h, link = _pinned()
    h.client(q("COMMIT"))
    assert h.fx.tenant_writes() == [q("COMMIT")]
    h.tenant(cc("COMMIT"), rfq("I"))
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.tx is TxPlace.UNIFIED and h.facts.pinned_shop is None and h.machine.idle
    h.client(q(INSERT))  # a new transaction-less unit: a fresh borrow
    assert h.fx.of("borrow") == [("borrow", 1)]


def test_a_unit_for_something_else_is_refused_on_the_pinned_link() -> None:
    h, link = _pinned()
    h.client(q("UPDATE global_settings SET x = 1"))
    refusal = q(refusal_sql(*pinned_refusal(1)))
    assert h.take() == [("attach", link), ("tenant", link, refusal)]
    assert h.router.acted_on[-1] == Refuse(1, "refused", error=pinned_refusal(1))
    assert h.unified_bytes() == b""
    answer = error("0A000", "pgtenantproxy: this statement cannot run in a transaction") + rfq("E")
    h.tenant(answer)
    assert h.client_bytes() == answer
    assert h.tx is TxPlace.PINNED and h.machine.tx_status == ord("E")
    assert h.router.outcomes == ["error"]
    h.take()
    h.client(q("ROLLBACK"))
    assert h.fx.tenant_writes() == [q("ROLLBACK")]
    h.tenant(cc("ROLLBACK"), rfq("I"))
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.tx is TxPlace.UNIFIED


@pytest.mark.parametrize(
    "decision",
    [ToUnified(reason="x"), ToTenant(2, "read"), ToTenant(2, "p", primary=True), BEGIN, END_COMMIT],
    ids=lambda d: f"{type(d).__name__}-{d.shop_id}",
)
def test_while_pinned_every_other_decision_becomes_the_refusal(decision: object) -> None:
    h, _link = _pinned(other=decision)
    h.client(q("SELECT other"))
    assert h.fx.tenant_writes() == [q(refusal_sql(*pinned_refusal(1)))]


def test_a_router_refusal_for_the_pinned_shop_is_run_there() -> None:
    refusal = Refusal("0A000", "no", "hint")
    h, _link = _pinned(other=Refuse(1, "refused", error=refusal))
    h.client(q("SELECT other"))
    assert h.fx.tenant_writes() == [q(refusal_sql(*refusal))]


def test_in_a_failed_pinned_transaction_a_statement_the_link_lacks_gets_the_transactions_error() -> None:
    h, _link = _pinned()
    h.client(parse("s1", "SELECT * FROM orders") + SYNC)  # parsed on unified (the router says so)
    h.router.rules.pop("orders")
    h.tenant(error("22012"), rfq("E"))
    h.take()
    assert h.machine.tx_status == ord("E")
    h.router.rules["orders"] = PRIMARY
    h.client(run_prepared("s1"))
    # directly, s1 would have been parsed in this transaction and failed with 25P02: a Bind of a statement
    # the link lacks would say 26000 instead, so the server is asked for its 25P02
    assert h.fx.tenant_writes() == [q(refusal_sql(*IN_FAILED_TRANSACTION))]
    h.tenant(error("25P02"), rfq("E"))
    assert sqlstate_of(h.client_bytes()) == "25P02"


def test_in_a_failed_pinned_transaction_a_statement_the_link_has_runs_there() -> None:
    h, link = _pinned()
    h.client(parse("s1", "SELECT * FROM orders") + SYNC)
    h.tenant(PARSE_COMPLETE, rfq("T"))
    assert link.prepared == {"s1": "SELECT * FROM orders"}
    h.client(q("SELECT 1/0"))
    h.tenant(error("22012"), rfq("E"))
    h.take()
    h.client(run_prepared("s1"))
    assert h.fx.tenant_writes() == [run_prepared("s1")]  # the server answers 25P02 itself


def test_deallocate_in_a_pinned_transaction_is_answered_by_the_proxy() -> None:
    h, _link = _pinned(**{"DEALLOCATE": AnswerLocal(1, "deallocate", tag="DEALLOCATE ALL")})
    h.client(q("DEALLOCATE ALL"))
    assert h.take() == [("client", cc("DEALLOCATE ALL") + rfq("T"))]
    assert h.tx is TxPlace.PINNED


def test_a_pinned_link_that_died_meanwhile_is_refused_in_a_transaction_on_unified() -> None:
    h, link = _pinned()
    link.broken = True
    h.client(q("UPDATE orders SET x = 2"))
    assert h.fx.of("tenant") == []
    assert h.fx.of("give_back") == [("give_back", 1, link, False, True)]
    assert h.unified_bytes() == q("BEGIN") + q(refusal_sql(*primary_unavailable(1)))
    assert h.tx is TxPlace.UNIFIED
    h.unified(cc("BEGIN"), rfq("T"), error("08006"), rfq("E"))
    assert types(h.client_bytes()) == "EZ" and sqlstate_of(h.client_bytes()) == "08006"


def test_a_link_that_cannot_be_kept_loses_the_transaction_and_the_next_unit_is_told() -> None:
    h, link = _world()
    h.client(q("BEGIN"), q(INSERT))
    link.broken = True  # e.g. the driver saw something that makes it unusable
    h.tenant(BEGIN_HEAD_ANSWER, cc("INSERT 0 1"), rfq("T"), rfq("T"))
    assert h.fx.of("give_back") == [("give_back", 1, link, False, False)]
    assert h.tx is TxPlace.LOST and h.facts.pinned_shop is None
    h.take()
    h.client(q("UPDATE orders SET x = 2"))
    assert h.router.acted_on[-1] == Refuse(1, "lost_transaction", error=lost_transaction(1))
    assert h.take() == [
        ("unified", q("BEGIN")),
        ("unified", q(refusal_sql(*lost_transaction(1)))),
    ]
    assert h.tx is TxPlace.UNIFIED
    h.unified(cc("BEGIN"), rfq("T"), error("08006"), rfq("E"))
    assert h.client_bytes() == error("08006") + rfq("E")


def test_a_non_primary_decision_for_the_pinned_shop_keeps_the_transaction() -> None:
    """Regression: a read decision for the pinned shop used to give the pinned link back (closed) and
    leave tx PINNED with no link; the next unit then ran outside the client's transaction."""
    h, link = _pinned()
    h.router.rules = {"shop1_view": ToTenant(1, "read"), **h.router.rules}
    h.client(q("SELECT * FROM shop1_view"))
    h.tenant(select_answer(status="T"))
    assert h.fx.of("give_back") == []
    h.client(q("UPDATE orders SET x = 2"))
    assert h.fx.of("borrow") == [] and h.fx.tenant_writes()[-1:] == [q("UPDATE orders SET x = 2")]
    assert h.fx.of("tenant")[-1][1] is link


# --- the Flush-split prepare (asyncpg: Parse/Describe/Flush, then Bind/Execute/Sync) --------------------
PREPARE = parse("s1", "SELECT * FROM orders") + describe("S", "s1") + FLUSH
PREPARE_ANSWER = PARSE_COMPLETE + param_description() + row_description("v")
RUN = bind("s1") + execute() + SYNC
RUN_ANSWER = BIND_COMPLETE + cc("SELECT 0") + rfq("T")


def test_flush_split_outside_a_transaction_is_described_aside_and_the_rest_routed() -> None:
    h = Harness({"orders": ToTenant(1, "read")}, links={1: [FakeLink()]})
    h.client(PREPARE)
    assert h.take() == [("unified", PREPARE + SYNC)]  # asyncpg's prepare: described with a Sync of ours
    assert h.machine.owed == 0
    h.unified(PREPARE_ANSWER, rfq("I"))
    assert h.take() == [("client", PREPARE_ANSWER)]  # our Sync's ReadyForQuery removed
    h.client(RUN)
    assert h.fx.tenant_writes() == [close("S", "s1") + parse("s1", "SELECT * FROM orders") + RUN]


def test_flush_split_in_a_deferred_transaction_is_described_aside_with_a_sync_of_ours() -> None:
    h = Harness({"BEGIN": BEGIN, "orders": ToUnified(reason="global")})
    h.client(q("BEGIN"))
    h.take()
    h.client(PREPARE)
    assert h.take() == [("unified", PREPARE + SYNC)]
    assert h.tx is TxPlace.DEFERRED and h.machine.owed == 0
    h.unified(PREPARE_ANSWER, rfq("I"))
    assert h.take() == [("client", PREPARE_ANSWER)]  # our Sync's ReadyForQuery removed
    h.client(RUN)
    assert h.take() == [("unified", q("BEGIN")), ("unified", RUN)]  # s1 is on unified already
    h.unified(cc("BEGIN"), rfq("T"), RUN_ANSWER)
    assert h.client_bytes() == RUN_ANSWER
    assert h.router.outcomes == ["ok"] and h.machine.owed == 0


def test_flush_split_in_a_deferred_transaction_then_a_primary_tenant_unit() -> None:
    h, _link = _world()
    h.client(q("BEGIN"), PREPARE)
    h.unified(PREPARE_ANSWER, rfq("I"))
    h.take()
    h.client(RUN)
    assert h.fx.tenant_writes() == [
        BEGIN_HEAD + close("S", "s1") + parse("s1", "SELECT * FROM orders") + RUN
    ]
    h.tenant(BEGIN_HEAD_ANSWER, CLOSE_COMPLETE, PARSE_COMPLETE, RUN_ANSWER)
    assert h.client_bytes() == RUN_ANSWER
    assert h.tx is TxPlace.PINNED


def test_flush_split_describe_in_a_pinned_transaction_goes_aside_to_unified() -> None:
    h, _link = _pinned()
    h.client(PREPARE)
    assert h.take() == [("unified", PREPARE + SYNC)]
    h.unified(PREPARE_ANSWER, rfq("I"))
    assert h.client_bytes() == PREPARE_ANSWER
    h.take()
    h.client(RUN)
    assert h.fx.tenant_writes() == [close("S", "s1") + parse("s1", "SELECT * FROM orders") + RUN]


def test_a_flush_that_would_run_something_in_a_pinned_transaction_ends_the_session() -> None:
    h, link = _pinned()
    h.client(parse("", INSERT) + bind() + execute() + FLUSH)
    log = h.take()
    assert [e[0] for e in log] == ["client", "end"]
    assert sqlstate_of(log[0][1]) == "0A000" and b"VFATAL" in log[0][1]
    assert log[1] == ("end", "tenant_failed")
    assert h.state is State.CLOSED
    h.machine.dispose()
    assert h.take() == [("clear_timer",), ("give_back", 1, link, False, False)]


def test_rows_of_a_split_prepare_do_not_leak_our_sync_at_any_offset() -> None:
    stream = PREPARE_ANSWER + rfq("I")
    for chunks in splits(stream):
        h = Harness({"BEGIN": BEGIN})
        h.client(q("BEGIN"), PREPARE)
        h.take()
        for chunk in chunks:
            h.unified(chunk)
        assert h.client_bytes() == PREPARE_ANSWER, chunks
