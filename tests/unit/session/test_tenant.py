"""Units on a tenant link: one write (settings, head, unit), head answers removed, reads held back."""

from __future__ import annotations

import pytest

from pgtenantproxy.protocol.local_answers import refusal_sql
from pgtenantproxy.session.decision import ToTenant, ToUnified
from pgtenantproxy.session.refusals import primary_unavailable, tenant_unavailable
from pgtenantproxy.session.state import State, TxPlace
from pgtenantproxy.session.tenant_unit import HOLD_LIMIT

from .harness import FakeLink, Harness, splits
from .wire import (
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    SYNC,
    bind,
    cc,
    close,
    data_row,
    error,
    execute,
    extended,
    extended_rows,
    messages,
    notice,
    notification,
    parameter_status,
    parse,
    q,
    rfq,
    row_description,
    rows,
    run_prepared,
    select_answer,
    sqlstate_of,
    types,
)

SQL = "SELECT v FROM orders WHERE shop_id = $1"
READ = ToTenant(1, "read", kind="select", table="orders")
PRIMARY = ToTenant(1, "tenant_primary", primary=True)
SETTINGS = {"TimeZone": "UTC", "application_name": "app", "DateStyle": "ISO, MDY"}
PRELUDE = q("SET TimeZone = 'UTC';SET DateStyle = 'ISO, MDY';")
PRELUDE_ANSWER = (
    cc("SET") + parameter_status("TimeZone", "UTC") + cc("SET") + parameter_status("DateStyle", "ISO, MDY")
    + rfq()
)
UNIT = run_prepared("s1", (b"1",))
BODY = extended_rows(b"x", b"y", parsed=False)


def _prepared_on_unified(h: Harness, name: str = "s1", sql: str = SQL) -> None:
    h.client(parse(name, sql) + SYNC)
    h.unified(PARSE_COMPLETE, rfq())
    h.take()
    h.router.done.clear()
    h.router.acted_on.clear()


def _cold_read(decision: ToTenant = READ, **kwargs: object) -> tuple[Harness, FakeLink]:
    """s1 known to the session (prepared on unified), the link has nothing; settings differ."""
    link = FakeLink()
    h = Harness(links={1: [link]}, settings=SETTINGS, **kwargs)  # type: ignore[arg-type]
    _prepared_on_unified(h)
    h.router.rules["orders"] = decision
    h.client(UNIT)
    return h, link


def test_read_request_is_settings_prelude_then_head_then_unit_in_one_write() -> None:
    h, link = _cold_read()
    assert h.take() == [
        ("borrow", 1),
        ("attach", link),
        ("tenant", link, PRELUDE + close("S", "s1") + parse("s1", SQL) + UNIT),
        ("timer", 2.0),
    ]
    assert h.state is State.TENANT_RUNNING
    assert link.settings == {"TimeZone": "UTC", "DateStyle": "ISO, MDY"}
    assert link.prepared == {"s1": SQL}


def test_read_answer_is_held_back_and_released_at_ready_for_query() -> None:
    h, link = _cold_read()
    h.take()
    h.tenant(PRELUDE_ANSWER, CLOSE_COMPLETE, PARSE_COMPLETE)
    h.tenant(BODY[:-6])
    assert h.fx.of("client") == []
    h.tenant(BODY[-6:])
    assert h.take() == [
        ("clear_timer",),
        ("detach", link),
        ("client", BODY),
        ("give_back", 1, link, True, False),
    ]
    assert h.state is State.IDLE and h.machine.running_link is None
    assert h.router.done == [(SQL, READ, "ok", 0.0)]


def test_read_answer_split_at_every_offset() -> None:
    stream = PRELUDE_ANSWER + CLOSE_COMPLETE + notice("head") + PARSE_COMPLETE + BODY
    for chunks in splits(stream):
        h, link = _cold_read()
        for chunk in chunks:
            h.tenant(chunk)
        assert h.client_bytes() == BODY, chunks
        assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
        assert h.router.outcomes == ["ok"]


def test_warm_link_gets_the_unit_alone() -> None:
    link = FakeLink(prepared={"s1": SQL}, settings={"TimeZone": "UTC", "DateStyle": "ISO, MDY"})
    h = Harness(links={1: [link]}, settings=SETTINGS)
    _prepared_on_unified(h)
    h.router.rules["orders"] = READ
    h.client(UNIT)
    assert h.fx.tenant_writes() == [UNIT]
    h.tenant(BODY)
    assert h.client_bytes() == BODY


def test_only_settings_that_differ_are_sent() -> None:
    link = FakeLink(prepared={"s1": SQL}, settings={"TimeZone": "UTC", "DateStyle": "SQL"})
    h = Harness(links={1: [link]}, settings=SETTINGS)
    _prepared_on_unified(h)
    h.router.rules["orders"] = READ
    h.client(UNIT)
    assert h.fx.tenant_writes() == [q("SET DateStyle = 'ISO, MDY';") + UNIT]
    h.tenant(cc("SET"), rfq(), BODY)
    assert h.client_bytes() == BODY


def test_a_statement_prepared_with_another_text_is_closed_and_reparsed() -> None:
    link = FakeLink(prepared={"s1": "SELECT 'old'"})
    h = Harness(links={1: [link]})
    _prepared_on_unified(h)
    h.router.rules["orders"] = READ
    h.client(UNIT)
    assert h.fx.tenant_writes() == [close("S", "s1") + parse("s1", SQL) + UNIT]
    assert link.prepared == {"s1": SQL}


def test_a_unit_parsing_a_name_the_link_has_closes_it_first() -> None:
    link = FakeLink(prepared={"s1": SQL})
    h = Harness({"orders": READ}, links={1: [link]})
    unit = extended(SQL, "s1", (b"1",))
    h.client(unit)
    assert h.fx.tenant_writes() == [close("S", "s1") + unit]
    h.tenant(CLOSE_COMPLETE, extended_rows(b"x"))
    assert h.client_bytes() == extended_rows(b"x")
    assert link.prepared == {"s1": SQL}


def test_the_unnamed_statement_is_always_reprepared() -> None:
    link = FakeLink()
    h = Harness(links={1: [link]})
    _prepared_on_unified(h, "", SQL)
    h.router.rules["orders"] = READ
    unit = bind("", "", (b"1",)) + execute() + SYNC
    h.client(unit)
    assert h.fx.tenant_writes() == [close("S", "") + parse("", SQL) + unit]
    assert link.prepared == {}
    h.tenant(CLOSE_COMPLETE, PARSE_COMPLETE, BIND_COMPLETE, data_row(b"x"), cc("SELECT 1"), rfq())
    assert h.client_bytes() == BIND_COMPLETE + data_row(b"x") + cc("SELECT 1") + rfq()


def test_a_successful_unit_records_its_parses_on_the_link() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(extended(SQL, "s2", (b"1",)))
    assert h.fx.tenant_writes() == [extended(SQL, "s2", (b"1",))]
    h.tenant(extended_rows(b"x"))
    assert link.prepared == {"s2": SQL}
    h.fx.pool[1].append(link)
    h.client(run_prepared("s2", (b"2",)))
    assert h.fx.tenant_writes()[-1] == run_prepared("s2", (b"2",))  # warm now


def test_simple_query_read_has_no_head() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    assert h.fx.tenant_writes() == [q("SELECT * FROM orders")]
    h.tenant(rows(b"a", b"b"))
    assert h.client_bytes() == rows(b"a", b"b")


def test_primary_answer_is_forwarded_as_it_comes_with_no_timer() -> None:
    link = FakeLink()
    h = Harness({"orders": PRIMARY}, links={1: [link]})
    h.client(q("UPDATE orders SET x = 1 RETURNING x"))
    request = q("UPDATE orders SET x = 1 RETURNING x")
    assert h.take() == [("borrow", 1), ("attach", link), ("tenant", link, request)]
    h.tenant(row_description("x"), data_row(b"1"))
    assert h.take() == [("client", row_description("x") + data_row(b"1"))]
    h.tenant(cc("UPDATE 1"), rfq())
    assert h.take() == [
        ("client", cc("UPDATE 1") + rfq()),
        ("clear_timer",),
        ("detach", link),
        ("give_back", 1, link, True, False),
    ]
    assert h.tx is TxPlace.UNIFIED and h.router.outcomes == ["ok"]


def test_a_read_error_that_is_not_broken_reaches_the_client() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT 1/0 FROM orders"))
    h.tenant(error("22012", "division by zero"), rfq())
    assert h.client_bytes() == error("22012", "division by zero") + rfq()
    assert h.unified_bytes() == b""
    assert h.router.outcomes == ["error"]


# --- fallback before the first byte -------------------------------------------------------------------
FALLBACK = ToUnified(1, "fallback", None, "select", "orders")


def _assert_fell_back(h: Harness, unit: bytes) -> None:
    assert h.client_bytes() == b""
    assert h.unified_bytes() == unit
    assert h.state is State.UNIFIED_BUSY and h.machine.owed == 1
    answer = select_answer(b"from unified")
    h.unified(answer)
    assert h.client_bytes() == answer
    assert h.router.done == [(unit_sql_of(unit), FALLBACK, "fallback", 0.0)]


def unit_sql_of(unit: bytes) -> str:
    (_, body), *_ = messages(unit)
    return body[:-1].decode()


@pytest.mark.parametrize("sqlstate", ["42P01", "42703", "42883", "3D000", "08006", "57P01", "53300", "XX000"])
def test_a_broken_tenant_error_falls_back_to_unified(sqlstate: str) -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    h.take()
    h.tenant(row_description("v"), error(sqlstate, "relation does not exist"), rfq())
    assert h.log[:3] == [("clear_timer",), ("detach", link), ("give_back", 1, link, True, True)]
    _assert_fell_back(h, q("SELECT * FROM orders"))


def test_a_read_the_client_cancelled_is_answered_not_rerun() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    h.machine.cancel_requested()
    h.tenant(error("57014", "canceling statement due to user request"), rfq())
    assert h.client_bytes() == error("57014", "canceling statement due to user request") + rfq()
    assert h.unified_bytes() == b""
    assert h.router.outcomes == ["error"]


def test_a_cancel_by_someone_else_still_falls_back() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    h.tenant(error("57014", "canceling statement due to statement timeout"), rfq())
    assert h.client_bytes() == b""
    assert h.unified_bytes() == q("SELECT * FROM orders")


def test_pool_pending_then_ready() -> None:
    h = Harness({"orders": READ})
    h.client(q("SELECT * FROM orders"))
    assert h.take() == [("borrow", 1)]
    assert h.state is State.TENANT_BORROWING and h.machine.running_link is None
    h.client(q("SELECT 2"))  # waits behind
    assert h.take() == []
    link = FakeLink()
    h.machine.tenant_ready(link)
    assert h.take() == [("attach", link), ("tenant", link, q("SELECT * FROM orders")), ("timer", 2.0)]
    h.tenant(select_answer())
    assert h.unified_bytes() == q("SELECT 2")
    assert h.client_bytes() == select_answer()


def test_pool_unavailable_falls_back() -> None:
    h = Harness({"orders": READ})
    h.client(q("SELECT * FROM orders"))
    h.take()
    h.machine.tenant_unavailable("connect: connection refused")
    assert h.fx.kinds() == ["clear_timer", "unified"]
    _assert_fell_back(h, q("SELECT * FROM orders"))


def test_tenant_lost_before_any_byte_falls_back() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    h.take()
    h.tenant(row_description("v"), data_row(b"partial"))  # held: nothing reached the client
    h.machine.tenant_lost()
    assert link.broken
    assert h.log[:3] == [("clear_timer",), ("detach", link), ("give_back", 1, link, False, True)]
    _assert_fell_back(h, q("SELECT * FROM orders"))


def test_timeout_before_any_byte_cancels_and_falls_back() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]}, tenant_timeout=0.5)
    h.client(q("SELECT * FROM orders"))
    assert h.take()[-1] == ("timer", 0.5)
    h.fire()
    assert h.log[:4] == [
        ("cancel", link), ("clear_timer",), ("detach", link), ("give_back", 1, link, False, True),
    ]
    _assert_fell_back(h, q("SELECT * FROM orders"))
    h.tenant(error("57014", "canceling statement"), rfq())  # the cancelled link's late answer: ignored
    assert h.router.outcomes == ["fallback"]


def test_a_timer_with_nothing_running_is_ignored() -> None:
    h = Harness()
    h.fire()
    h.client(q("SELECT 1"))
    h.fire()
    assert h.take() == [("unified", q("SELECT 1"))]


def test_fallback_disabled_answers_08006_and_ready() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]}, fallback_enabled=False)
    h.client(q("SELECT * FROM orders"))
    h.tenant(error("42P01"), rfq())
    assert h.client_bytes() == tenant_unavailable(1) + rfq()
    assert sqlstate_of(h.client_bytes()) == "08006"
    assert h.unified_bytes() == b""
    assert h.router.done == [("SELECT * FROM orders", READ, "error", 0.0)]
    assert h.state is State.IDLE


def test_a_failed_head_falls_back_for_a_read() -> None:
    h, link = _cold_read()
    h.take()
    h.tenant(PRELUDE_ANSWER, CLOSE_COMPLETE, error("42P01", "relation \"orders\" does not exist"), rfq())
    assert link.settings == {} and link.prepared.get("s1") != SQL  # no longer trusted
    assert h.log[:3] == [("clear_timer",), ("detach", link), ("give_back", 1, link, True, True)]
    assert h.unified_bytes() == UNIT  # unified has s1 already: no re-prepare there
    h.unified(BODY)
    assert h.client_bytes() == BODY
    assert h.router.done == [(SQL, FALLBACK, "fallback", 0.0)]
    h.fx.pool[1].append(link)
    h.client(UNIT)  # the same link again: settings and s1 are sent again
    assert h.fx.tenant_writes()[-1] == PRELUDE + close("S", "s1") + parse("s1", SQL) + UNIT


def test_a_failed_head_for_a_primary_unit_is_refused_with_08006_on_unified() -> None:
    h, _ = _cold_read(PRIMARY)
    h.take()
    h.tenant(PRELUDE_ANSWER, CLOSE_COMPLETE, error("42P01"), rfq())
    assert h.client_bytes() == b""
    refusal = q(refusal_sql(*primary_unavailable(1)))
    assert h.unified_bytes() == refusal
    answer = error("08006", "pgtenantproxy: the database of shop 1 is unavailable") + rfq()
    h.unified(answer)
    assert h.client_bytes() == answer
    assert h.router.outcomes == ["error"]
    assert h.tx is TxPlace.UNIFIED


def test_primary_pool_unavailable_is_refused_not_fallen_back() -> None:
    h = Harness({"orders": PRIMARY})
    h.client(q("UPDATE orders SET x = 1"))
    h.machine.tenant_unavailable("connect: refused")
    assert h.unified_bytes() == q(refusal_sql(*primary_unavailable(1)))
    assert q("UPDATE orders SET x = 1") not in h.unified_bytes()


# --- after the first byte ------------------------------------------------------------------------------
def test_primary_lost_after_bytes_ends_the_session() -> None:
    link = FakeLink()
    h = Harness({"orders": PRIMARY}, links={1: [link]})
    h.client(q("SELECT * FROM orders"), q("SELECT 2"))
    h.take()
    h.tenant(row_description("v"), data_row(b"1"))
    h.machine.tenant_lost()
    assert h.take() == [
        ("client", row_description("v") + data_row(b"1")),
        ("clear_timer",),
        ("detach", link),
        ("give_back", 1, link, False, True),
        ("end", "tenant_failed"),
    ]
    assert h.state is State.CLOSED
    h.unified(select_answer())
    assert h.take() == []


def _big_read() -> tuple[Harness, FakeLink, bytes]:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    h.take()
    big = row_description("v") + data_row(b"x" * 1000) * (HOLD_LIMIT // 1000 + 2)
    h.tenant(big)
    return h, link, big


def test_a_big_read_is_released_past_the_hold_limit_and_the_timer_then_waits() -> None:
    h, _, big = _big_read()
    assert h.take() == [("client", big)]
    h.fire()  # an answer already reaching the client is waited for
    assert h.take() == []
    h.tenant(cc("SELECT 264"), rfq())
    assert h.client_bytes() == cc("SELECT 264") + rfq()
    assert h.router.outcomes == ["ok"]


def test_a_read_lost_after_release_ends_the_session() -> None:
    h, link, _ = _big_read()
    h.machine.tenant_lost()
    assert h.fx.of("end") == [("end", "tenant_failed")]
    assert h.fx.of("give_back") == [("give_back", 1, link, False, True)]
    assert h.unified_bytes() == b""


# --- cancel, stale events -----------------------------------------------------------------------------
def test_running_link_is_the_link_only_while_running() -> None:
    h = Harness({"orders": READ})
    assert h.machine.running_link is None
    h.client(q("SELECT * FROM orders"))
    assert h.machine.running_link is None  # borrowing
    link = FakeLink()
    h.machine.tenant_ready(link)
    assert h.machine.running_link is link
    h.tenant(select_answer())
    assert h.machine.running_link is None
    h.client(q("SELECT 1"))
    assert h.machine.running_link is None  # unified busy


def test_a_stale_tenant_ready_gives_the_link_back() -> None:
    h = Harness()
    stale = FakeLink()
    h.machine.tenant_ready(stale)
    assert h.take() == [("give_back", 0, stale, True, False)]


def test_tenant_events_when_nothing_runs_are_ignored() -> None:
    h = Harness()
    h.tenant(select_answer())
    h.machine.tenant_lost()
    h.machine.tenant_unavailable("x")
    assert h.take() == [] and h.state is State.IDLE


# --- regressions (found by these tests, fixed in the working tree meanwhile) ---------------
def test_a_statement_parsed_before_an_error_is_closed_before_it_is_parsed_again() -> None:
    """A Parse that succeeded before a later error still exists on the pooled link: a later Parse of
    the name there must Close it first (else 42P05)."""
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(extended("SELECT 1/$1 FROM orders", "s1", (b"0",)))
    h.tenant(PARSE_COMPLETE, BIND_COMPLETE, error("22012", "division by zero"), rfq())
    assert h.router.outcomes == ["error"]
    assert h.fx.of("give_back")[-1][3] is True  # the link goes back to the pool, s1 still on it
    h.fx.pool[1].append(link)
    h.client(extended("SELECT 1/$1 FROM orders", "s1", (b"1",)))
    request = h.fx.tenant_writes()[-1]
    assert request.startswith(close("S", "s1")), request[:20]


def test_a_failed_head_does_not_forget_statements_that_still_exist() -> None:
    """A failed head must not make the link forget names that still exist on it (else 42P05)."""
    link = FakeLink(prepared={"s2": "SELECT 2 FROM orders"})
    h = Harness(links={1: [link]})
    _prepared_on_unified(h, "s3", "SELECT 3 FROM orders")
    h.router.rules["orders"] = READ
    h.client(run_prepared("s3"))
    h.tenant(CLOSE_COMPLETE, error("42P01"), rfq())  # the re-Parse of s3 failed; s2 is untouched
    assert h.fx.of("give_back")[-1][3] is True
    h.unified(extended_rows(b"3", parsed=False))
    h.fx.pool[1].append(link)
    h.client(extended("SELECT 2 FROM orders", "s2"))
    request = h.fx.tenant_writes()[-1]
    assert request.startswith(close("S", "s2")), request[:20]


def test_unified_async_messages_never_split_a_forwarded_tenant_message() -> None:
    """Unified's notifications/notices must not land inside a tenant message forwarded chunk by chunk."""
    h = Harness({"orders": PRIMARY}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    answer = rows(b"x" * 50)
    h.tenant(answer[:40])  # the middle of the DataRow
    h.unified(notification())
    h.tenant(answer[40:])
    out = h.client_bytes()
    assert types(out).replace("A", "") == "TDCZ"
    assert out.replace(notification(), b"", 1) == answer


def test_unified_async_messages_during_a_pending_borrow_are_not_lost_on_fallback() -> None:
    h = Harness({"orders": READ})
    h.client(q("SELECT * FROM orders"))
    h.unified(notice("from unified"))
    h.machine.tenant_unavailable("connect: refused")
    h.unified(select_answer())
    assert h.client_bytes() == notice("from unified") + select_answer()
