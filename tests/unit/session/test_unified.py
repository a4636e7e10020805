"""Units to the session's own (unified) server: bytes as-is, owed ReadyForQuery, outcomes, filters."""

from __future__ import annotations

from pgtenantproxy.session.decision import AnswerBegin, Aside, ToTenant, ToUnified
from pgtenantproxy.session.state import State, TxPlace

from .harness import FakeLink, Harness, splits
from .wire import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    NO_DATA,
    PARSE_COMPLETE,
    SYNC,
    bind,
    cc,
    close,
    data_row,
    describe,
    error,
    execute,
    extended,
    extended_rows,
    notice,
    notification,
    param_description,
    parameter_status,
    parse,
    q,
    rfq,
    row_description,
    run_prepared,
    select_answer,
)

DEFAULT = ToUnified(reason="default")


def test_simple_query_goes_as_is_and_its_answer_comes_back_as_is() -> None:
    h = Harness()
    h.client(q("SELECT 1"))
    assert h.take() == [("unified", q("SELECT 1"))]
    assert (h.machine.owed, h.state) == (1, State.UNIFIED_BUSY)
    assert h.router.acted_on == [DEFAULT]
    answer = notice() + select_answer()
    h.unified(answer)
    assert h.take() == [("client", answer)]
    assert (h.machine.owed, h.state) == (0, State.IDLE)
    assert h.router.done == [("SELECT 1", DEFAULT, "ok", 0.0)]


def test_extended_unit_goes_in_one_write_as_is() -> None:
    h = Harness()
    unit = extended("SELECT $1::int", params=(b"7",))
    h.client(unit)
    assert h.take() == [("unified", unit)]
    answer = extended_rows(b"7")
    h.unified(answer)
    assert h.take() == [("client", answer)]
    assert h.router.outcomes == ["ok"]


def test_answer_chunks_pass_through_immediately() -> None:
    h = Harness()
    h.client(q("SELECT 1"))
    h.take()
    answer = select_answer()
    h.unified(answer[:7])
    h.unified(answer[7:])
    assert h.take() == [("client", answer[:7]), ("client", answer[7:])]
    assert h.machine.owed == 0


def test_pipelined_units_are_all_written_and_owed_counts_down() -> None:
    h = Harness()
    h.client(q("SELECT 1"), extended("SELECT 2"), q("SELECT 3"))
    assert [e[1] for e in h.take()] == [q("SELECT 1"), extended("SELECT 2"), q("SELECT 3")]
    assert h.machine.owed == 3
    h.unified(select_answer())
    assert (h.machine.owed, h.state) == (2, State.UNIFIED_BUSY)
    h.unified(extended_rows(b"2"), select_answer(b"3"))
    assert (h.machine.owed, h.state) == (0, State.IDLE)
    assert [d[0] for d in h.router.done] == ["SELECT 1", "SELECT 2", "SELECT 3"]
    assert h.router.outcomes == ["ok", "ok", "ok"]


def test_error_in_the_middle_of_a_simple_query_is_outcome_error() -> None:
    h = Harness()
    h.client(q("SELECT 1; SELECT 1/0"), q("SELECT 2"))
    first = row_description("v") + data_row(b"1") + cc("SELECT 1") + error("22012", "by zero") + rfq()
    h.unified(first + select_answer(b"2"))
    assert h.client_bytes() == first + select_answer(b"2")
    assert h.router.outcomes == ["error", "ok"]


def test_error_in_the_middle_of_an_extended_batch_is_outcome_error() -> None:
    h = Harness()
    batch = parse("", "SELECT 1/$1") + bind("", "", (b"0",)) + execute() + parse("", "SELECT 2") + SYNC
    h.client(batch)
    assert h.unified_bytes() == batch
    h.unified(PARSE_COMPLETE, BIND_COMPLETE, error("22012"), rfq())
    assert h.router.outcomes == ["error"]
    assert h.machine.owed == 0


def test_error_then_ready_in_a_failed_transaction_sets_tx_status() -> None:
    h = Harness()
    h.client(q("UPDATE t SET x = 1"))
    h.unified(error("23505"), rfq("E"))
    assert h.facts.tx_status == ord("E") and h.machine.tx_status == ord("E")
    assert h.router.outcomes == ["error"]


def test_parameter_status_is_forwarded_and_recorded_in_facts() -> None:
    h = Harness()
    h.client(q("SET TimeZone = 'UTC'"))
    answer = cc("SET") + parameter_status("TimeZone", "UTC") + rfq()
    h.unified(answer)
    assert h.client_bytes() == answer
    assert h.facts.settings == {"TimeZone": "UTC"}
    assert h.facts.shared_settings() == {"TimeZone": "UTC"}


def test_asynchronous_messages_while_idle_pass_to_the_client() -> None:
    h = Harness()
    h.unified(notification(), parameter_status("application_name", "x"))
    assert h.client_bytes() == notification() + parameter_status("application_name", "x")
    assert h.machine.owed == 0 and h.state is State.IDLE


def test_a_fatal_error_from_unified_is_noticed() -> None:
    h = Harness()
    assert not h.machine.server_said_fatal
    h.unified(error("57P01", "terminating connection due to administrator command", severity="FATAL"))
    assert h.machine.server_said_fatal


def test_close_when_idle_ends_the_session_after_the_last_answer() -> None:
    h = Harness()
    h.client(q("SELECT 1"), q("SELECT 2"))
    h.machine.close_when_idle = True
    h.unified(select_answer())
    assert h.fx.of("end") == []
    h.unified(select_answer())
    assert h.fx.of("end") == [("end", "idle_close")]
    assert h.state is State.CLOSED


def test_close_when_idle_waits_for_a_transaction_to_end() -> None:
    h = Harness()
    h.client(q("BEGIN"))
    h.machine.close_when_idle = True
    h.unified(cc("BEGIN"), rfq("T"))
    assert h.fx.of("end") == [] and not h.machine.idle
    h.client(q("COMMIT"))
    h.unified(cc("COMMIT"), rfq("I"))
    assert h.fx.of("end") == [("end", "idle_close")]


def test_server_at_boundary_follows_the_unified_stream() -> None:
    h = Harness()
    h.client(q("SELECT 1"))
    answer = select_answer()
    assert h.machine.server_at_boundary
    h.unified(answer[:3])
    assert not h.machine.server_at_boundary
    h.unified(answer[3:])
    assert h.machine.server_at_boundary


def test_a_router_that_raises_sends_the_unit_to_unified() -> None:
    h = Harness()
    h.router.fail_with = RuntimeError("bug in the router")
    h.client(q("SELECT 1"))
    assert h.unified_bytes() == q("SELECT 1")
    h.unified(select_answer())
    assert h.router.done[0][1] == ToUnified(reason="router_error")


# --- statements unified lacks --------------------------------------------------------------------
SQL = "SELECT v FROM orders WHERE shop_id = $1"


def _parsed_on_tenant() -> tuple[Harness, FakeLink]:
    """s1 was parsed (and run) on a tenant: unified never saw its Parse."""
    link = FakeLink()
    h = Harness({"orders": ToTenant(1, "read")}, links={1: [link]})
    h.client(extended(SQL, "s1", (b"1",)))
    h.tenant(extended_rows(b"x"))
    assert h.router.outcomes == ["ok"]
    h.router.rules.clear()
    h.take()
    return h, link


def test_a_statement_unified_lacks_is_prepared_first_and_the_answer_removed() -> None:
    h, _ = _parsed_on_tenant()
    h.client(run_prepared("s1", (b"2",)))
    assert h.take() == [
        ("unified", close("S", "s1") + parse("s1", SQL) + SYNC),
        ("unified", run_prepared("s1", (b"2",))),
    ]
    assert h.machine.owed == 1
    answer = extended_rows(b"y", parsed=False)
    h.unified(CLOSE_COMPLETE, PARSE_COMPLETE, rfq(), answer)
    assert h.client_bytes() == answer
    assert h.machine.owed == 0 and h.router.outcomes == ["ok", "ok"]
    h.take()
    h.client(run_prepared("s1", (b"3",)))  # now unified has it
    assert h.take() == [("unified", run_prepared("s1", (b"3",)))]


def test_a_name_parsed_again_after_a_deallocate_unified_did_not_see_is_closed_there_first() -> None:
    h = Harness()
    h.client(extended(SQL, "s1", (b"1",)))
    h.unified(extended_rows(b"x"))
    h.take()
    # the client dropped s1 where unified did not see it (a DEALLOCATE the proxy answered itself)
    h.facts.statements.closed("s1")
    h.client(extended(SQL, "s1", (b"2",)))
    assert h.take() == [("unified", close("S", "s1") + SYNC), ("unified", extended(SQL, "s1", (b"2",)))]
    h.unified(CLOSE_COMPLETE, rfq(), extended_rows(b"y"))
    assert h.client_bytes() == extended_rows(b"y")
    h.take()
    h.client(extended(SQL, "s2", (b"3",)))  # an ordinary new name: nothing first
    assert h.take() == [("unified", extended(SQL, "s2", (b"3",)))]


def test_reprepare_answer_split_at_every_offset() -> None:
    answer = extended_rows(b"y", parsed=False)
    stream = CLOSE_COMPLETE + PARSE_COMPLETE + notice() + rfq() + answer
    for chunks in splits(stream):
        h, _ = _parsed_on_tenant()
        h.client(run_prepared("s1", (b"2",)))
        for chunk in chunks:
            h.unified(chunk)
        assert h.client_bytes() == notice() + answer, chunks
        assert h.machine.owed == 0 and h.router.outcomes == ["ok", "ok"]


def test_no_reprepare_inside_a_failed_transaction() -> None:
    h, _ = _parsed_on_tenant()
    h.client(q("BEGIN"))
    h.unified(cc("BEGIN"), rfq("T"))
    h.client(q("SELECT 1/0"))
    h.unified(error("22012"), rfq("E"))
    h.take()
    h.client(run_prepared("s1", (b"2",)))
    assert h.take() == [("unified", run_prepared("s1", (b"2",)))]


def test_reprepare_pipelined_behind_an_owed_answer_keeps_the_stream_in_order() -> None:
    """Regression: the proxy's own Close/Parse/Sync batch used to be written at once behind an owed
    answer, and its quiet filter then swallowed that answer (the client got ``31Z2TDCZ``)."""
    first = select_answer(b"A")
    second = extended_rows(b"B", parsed=False)
    rest = CLOSE_COMPLETE + PARSE_COMPLETE + rfq() + second
    for chunks in splits(rest):
        h, _ = _parsed_on_tenant()
        h.client(q("SELECT 1"), run_prepared("s1", (b"2",)))
        h.unified(first)  # unified cannot answer our batch before it was written: a later chunk
        for chunk in chunks:
            h.unified(chunk)
        assert h.unified_bytes() == (
            q("SELECT 1") + close("S", "s1") + parse("s1", SQL) + SYNC + run_prepared("s1", (b"2",))
        )
        assert h.client_bytes() == first + second, chunks
        assert h.machine.owed == 0 and h.router.outcomes == ["ok", "ok", "ok"]


def test_a_unified_decision_is_final_even_when_the_unit_waits_for_a_drain() -> None:
    h, _ = _parsed_on_tenant()
    h.router.asked.clear()
    h.client(q("SELECT 1"), run_prepared("s1", (b"2",)))
    h.unified(select_answer(b"A"))
    h.unified(CLOSE_COMPLETE, PARSE_COMPLETE, rfq(), extended_rows(b"B", parsed=False))
    asked = [sql for sql, _ in h.router.asked]
    assert asked.count(SQL) == 1, asked  # today: 2


def test_a_parse_only_unit_pipelined_behind_an_owed_answer_needs_no_wait() -> None:
    h, _ = _parsed_on_tenant()
    h.client(q("SELECT 1"), parse("s2", "SELECT 2") + SYNC)
    assert h.unified_bytes() == q("SELECT 1") + parse("s2", "SELECT 2") + SYNC
    assert h.machine.owed == 2


# --- the lazy BEGIN replayed on unified --------------------------------------------------------------
def _deferred(begin: str = "BEGIN", tag: str = "BEGIN") -> Harness:
    h = Harness({begin: AnswerBegin(reason="deferred_begin", tag=tag, begin_sql=begin)})
    h.client(q(begin))
    return h


def test_lazy_begin_is_answered_locally_then_sent_with_the_next_unit_and_its_answer_removed() -> None:
    h = _deferred()
    assert h.take() == [("client", cc("BEGIN") + rfq("T"))]
    assert h.tx is TxPlace.DEFERRED and h.facts.deferred_begin == "BEGIN"
    assert h.machine.tx_status == ord("T") and h.facts.tx_status == ord("I")
    h.client(q("SELECT 1"))
    assert h.take() == [("unified", q("BEGIN")), ("unified", q("SELECT 1"))]
    assert h.tx is TxPlace.UNIFIED and h.facts.deferred_begin is None
    assert h.machine.owed == 1
    h.unified(cc("BEGIN"), rfq("T"), select_answer(status="T"))
    assert h.take() == [("client", select_answer(status="T"))]
    assert h.facts.tx_status == ord("T") and h.machine.owed == 0
    assert h.router.outcomes == ["ok"]


def test_lazy_begin_keeps_the_clients_own_begin_text() -> None:
    sql = "START TRANSACTION ISOLATION LEVEL SERIALIZABLE"
    h = _deferred(sql, "START TRANSACTION")
    assert h.take() == [("client", cc("START TRANSACTION") + rfq("T"))]
    h.client(extended("SELECT 1"))
    assert h.take() == [("unified", q(sql)), ("unified", extended("SELECT 1"))]


def test_lazy_begin_filter_passes_notices_and_split_at_every_offset() -> None:
    answer = extended_rows(b"1", status="T")
    stream = notice("begin") + cc("BEGIN") + rfq("T") + answer
    for chunks in splits(stream):
        h = _deferred()
        h.client(extended("SELECT 1"))
        h.take()
        for chunk in chunks:
            h.unified(chunk)
        assert h.client_bytes() == notice("begin") + answer, chunks
        assert h.machine.owed == 0 and h.router.outcomes == ["ok"]
        assert h.facts.tx_status == ord("T")


def test_a_read_inside_a_deferred_transaction_stays_on_unified() -> None:
    h = _deferred()
    h.router.rules["orders"] = ToTenant(1, "read")
    h.take()
    h.client(q("SELECT * FROM orders"))
    assert h.take() == [("unified", q("BEGIN")), ("unified", q("SELECT * FROM orders"))]
    assert h.router.acted_on[-1] == ToUnified(reason="pinned")


def test_a_read_inside_a_unified_transaction_stays_on_unified() -> None:
    h = Harness({"orders": ToTenant(1, "read")})
    h.facts.tx_status = ord("T")
    h.client(q("SELECT * FROM orders"))
    assert h.take() == [("unified", q("SELECT * FROM orders"))]


def test_aside_runs_on_unified_with_the_clients_status_kept_in_a_transaction() -> None:
    h = _deferred()
    h.router.rules["SELECT 9"] = Aside(reason="empty")
    h.take()
    unit = parse("s9", "SELECT 9") + describe("S", "s9") + SYNC
    h.client(unit)
    assert h.take() == [("unified", unit)]
    assert h.tx is TxPlace.DEFERRED and h.machine.owed == 1
    stream = PARSE_COMPLETE + param_description() + NO_DATA + rfq("I")
    for chunks in splits(stream):
        h2 = _deferred()
        h2.router.rules["SELECT 9"] = Aside(reason="empty")
        h2.client(unit)
        h2.take()
        for chunk in chunks:
            h2.unified(chunk)
        assert h2.client_bytes() == PARSE_COMPLETE + param_description() + NO_DATA + rfq("T"), chunks
        assert h2.machine.owed == 0 and h2.tx is TxPlace.DEFERRED
