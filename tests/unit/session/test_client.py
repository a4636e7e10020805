"""The client side: ordering across servers, Terminate, violations, backpressure, dispose."""

from __future__ import annotations

import pytest

from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.messages import frame
from pgtenantproxy.session.decision import ToTenant
from pgtenantproxy.session.machine import MAX_QUEUED_UNITS
from pgtenantproxy.session.state import State

from .harness import FakeLink, Harness
from .wire import (
    FLUSH,
    PARSE_COMPLETE,
    SYNC,
    X,
    bind,
    cc,
    describe,
    execute,
    extended,
    extended_rows,
    param_description,
    parse,
    q,
    rfq,
    row_description,
    rows,
    select_answer,
)

READ = ToTenant(1, "read")


def test_a_tenant_unit_waits_behind_a_busy_unified_and_answers_arrive_in_order() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT 1"), extended("SELECT 2"), q("SELECT * FROM orders"), q("SELECT 4"))
    assert h.take() == [("unified", q("SELECT 1")), ("unified", extended("SELECT 2"))]
    assert h.machine.owed == 2
    h.unified(select_answer(b"1"))
    assert h.fx.of("borrow") == []  # unified still owes one
    h.unified(extended_rows(b"2"))
    log = h.take()
    assert [e[0] for e in log] == ["client", "client", "borrow", "attach", "tenant", "timer"]
    assert log[4] == ("tenant", link, q("SELECT * FROM orders"))
    h.client(q("SELECT 5"))  # arrives while the tenant runs: waits
    assert h.take() == []
    h.tenant(rows(b"3"))
    assert [e[0] for e in h.log] == ["clear_timer", "detach", "client", "give_back", "unified", "unified"]
    assert h.unified_bytes() == q("SELECT 4") + q("SELECT 5")
    h.unified(select_answer(b"4"), select_answer(b"5"))
    assert h.client_bytes() == rows(b"3") + select_answer(b"4") + select_answer(b"5")
    assert [d[0] for d in h.router.done] == [
        "SELECT 1", "SELECT 2", "SELECT * FROM orders", "SELECT 4", "SELECT 5",
    ]


def test_the_router_may_be_asked_again_about_a_waiting_unit_but_acts_once() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT 1"), q("SELECT * FROM orders"))
    h.unified(select_answer())
    assert [sql for sql, _ in h.router.asked].count("SELECT * FROM orders") >= 1
    assert h.router.acted_on.count(READ) == 1  # "counted once per unit, however often it was asked"


def test_units_split_across_chunks_are_assembled() -> None:
    h = Harness()
    data = extended("SELECT 1") + q("SELECT 2")
    for i in range(len(data)):
        h.client(data[i : i + 1])
    assert h.unified_bytes() == data
    assert h.machine.owed == 2


def test_terminate_is_forwarded_and_ends_the_session() -> None:
    h = Harness()
    h.client(q("SELECT 1"), X, q("SELECT 2"))
    assert h.take() == [("unified", q("SELECT 1")), ("unified", X), ("end", "terminate")]
    assert h.state is State.CLOSED
    h.unified(select_answer())
    h.client(q("SELECT 3"))
    assert h.take() == []


def test_terminate_waits_behind_a_running_tenant_unit() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"), X)
    assert h.fx.of("end") == []
    h.tenant(select_answer())
    assert h.log[-2:] == [("unified", X), ("end", "terminate")]


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x00\x00\x04",  # unknown message type
        frame(ord("Q"), b"SELECT 1\x00")[:1] + b"\x00\x00\x00\x02",  # length < 4
        frame(ord("S"), b"x" * 10_001),  # a Sync longer than PostgreSQL accepts
        frame(ord("P"), b"s1\x00SELECT 1"),  # a Parse with no NUL after its SQL
        frame(ord("Q"), b"SELECT 1"),  # a Query with no NUL
    ],
    ids=["type", "short-length", "long-sync", "bad-parse", "bad-query"],
)
def test_malformed_client_bytes_are_a_violation(data: bytes) -> None:
    h = Harness()
    h.client(data)
    log = h.take()
    assert [e[0] for e in log] == ["violation"]
    assert isinstance(log[0][1], ProtocolViolation)
    assert h.unified_bytes() == b""


def test_a_malformed_bind_is_not_a_violation_it_goes_to_unified() -> None:
    h = Harness()
    unit = parse("", "SELECT 1") + frame(ord("B"), b"\x00\x00\x00") + execute() + SYNC
    h.client(unit)
    assert h.take() == [("unified", unit)]


def test_backpressure_pauses_the_client_behind_a_tenant_unit_and_resumes_after() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    many = b"".join(q(f"SELECT {i}") for i in range(MAX_QUEUED_UNITS + 1))
    h.client(q("SELECT * FROM orders"), many)
    assert h.fx.of("pause") == [("pause",)]
    h.tenant(select_answer())
    assert h.fx.of("resume") == [("resume",)]
    assert h.machine.owed == MAX_QUEUED_UNITS + 1


def test_no_pause_at_exactly_the_limit() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"), b"".join(q(f"SELECT {i}") for i in range(MAX_QUEUED_UNITS)))
    assert h.fx.of("pause") == []


def test_backpressure_also_counts_units_that_arrive_while_the_tenant_unit_runs() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(q("SELECT * FROM orders"))
    for i in range(MAX_QUEUED_UNITS + 5):
        h.client(q(f"SELECT {i}"))
    assert h.fx.of("pause") == [("pause",)]  # today: [] with 261 units queued


def test_a_unit_after_an_unsynced_flush_part_does_not_overtake_its_answer() -> None:
    h = Harness({"orders": READ}, links={1: [FakeLink()]})
    h.client(parse("s1", "SELECT 1") + describe("S", "s1") + FLUSH)
    h.client(q("SELECT * FROM orders"))  # a pipelining client need not wait for the describe
    if h.state is State.TENANT_RUNNING:
        h.tenant(rows(b"t"))
    h.unified(PARSE_COMPLETE, param_description(), row_description("v"))
    if h.machine.owed:
        h.unified(rows(b"t"))
    assert h.client_bytes().startswith(PARSE_COMPLETE + param_description() + row_description("v"))


def test_idle_reflects_owed_queue_partial_batch_and_transaction() -> None:
    h = Harness()
    assert h.machine.idle
    h.client(parse("", "SELECT 1"))
    assert not h.machine.idle  # a batch without its Sync yet
    h.client(bind() + execute() + SYNC)
    assert not h.machine.idle  # owed
    h.unified(extended_rows(b"1"))
    assert h.machine.idle
    h.client(q("BEGIN"))
    h.unified(cc("BEGIN"), rfq("T"))
    assert not h.machine.idle


def test_dispose_while_running_gives_the_link_back_closed() -> None:
    link = FakeLink()
    h = Harness({"orders": READ}, links={1: [link]})
    h.client(q("SELECT * FROM orders"))
    h.take()
    h.machine.dispose()
    assert h.take() == [("clear_timer",), ("detach", link), ("give_back", 1, link, False, False)]
    assert h.state is State.CLOSED
    h.machine.dispose()
    assert h.take() == []


def test_dispose_while_borrowing_then_a_late_link_goes_back() -> None:
    h = Harness({"orders": READ})
    h.client(q("SELECT * FROM orders"))
    h.machine.dispose()
    assert h.state is State.CLOSED
    h.take()
    late = FakeLink()
    h.machine.tenant_ready(late)
    assert [e[0] for e in h.take()] == ["give_back"]
