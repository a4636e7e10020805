"""COPY FROM STDIN routed by its first row: held, placed, streamed, failed, on byte vectors.

The scripted router answers :class:`CopyFirstRow` for ``COPY customers`` and, when
the machine asks again with ``facts.copy_first_row``, the shop's database for shops
1 and 3 (``tenant_primary``), a hold for shop 4, unified for any other (as
:mod:`pgtenantproxy.dispatch.copy_routing` does; its own tests check that part).
"""

from __future__ import annotations

import struct

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.copy_answers import copy_fail, copy_in_response
from pgtenantproxy.protocol.copy_rows import CopyFormat
from pgtenantproxy.protocol.errors import error_response
from pgtenantproxy.protocol.local_answers import refusal_sql
from pgtenantproxy.protocol.messages import frame
from pgtenantproxy.session.copy_in import HOLD_LIMIT
from pgtenantproxy.session.decision import (
    AnswerBegin,
    CopyFirstRow,
    Decision,
    Hold,
    Refuse,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.facts import FirstRow, SessionFacts
from pgtenantproxy.session.refusals import copy_row_refusal, hold_timeout_error
from pgtenantproxy.session.state import State, TxPlace

from .harness import FakeLink, Harness, splits
from .wire import (
    BIND_COMPLETE,
    NO_DATA,
    PARSE_COMPLETE,
    SYNC,
    bind,
    cc,
    describe,
    error,
    execute,
    extended,
    notice,
    parse,
    q,
    rfq,
    select_answer,
    sqlstate_of,
)

COPY = "COPY customers (shop_id, name) FROM STDIN"
G2 = copy_in_response(2, binary=False)
DONE = frame(c.COPY_DONE, b"")
BEGIN_HEAD = parse("", "BEGIN") + bind() + execute()
BEGIN_HEAD_ANSWER = PARSE_COMPLETE + BIND_COMPLETE + cc("BEGIN")
PRIMARY = frozenset({1, 3})
TEXT = CopyFormat()


def d(payload: bytes) -> bytes:
    return frame(c.COPY_DATA, payload)


class Rows:
    """The router's COPY rule: CopyFirstRow first, then where the first row's shop runs."""

    def __init__(self, fmt: CopyFormat = TEXT, columns: int = 2, held: list[bool] | None = None) -> None:
        self.fmt = fmt
        self.columns = columns
        self.held = held if held is not None else [False]
        self.asked: list[FirstRow | None] = []

    def __call__(self, unit: Unit, facts: SessionFacts) -> Decision:
        first = facts.copy_first_row
        self.asked.append(first)
        pinned = facts.pinned_shop
        if first is None:
            return CopyFirstRow(pinned, "copy_first_row", table="customers", column=0, columns=self.columns,
                                format=self.fmt)
        shop = first.shop_id
        if pinned is not None:
            if shop in (None, pinned):
                return ToTenant(pinned, "copy_first_row", primary=True)
            error = copy_row_refusal("customers", 1, shop_id=shop, runs_on=pinned, transaction=True)
            return Refuse(pinned, "refused", error=error)
        if shop == 4 and self.held[0]:  # held by its cutover; tenant_primary once it has flipped
            return Hold(4, "held", held=lambda: self.held[0], hold_s=5.0)
        if shop == 4:
            return ToTenant(4, "copy_first_row", primary=True)
        if shop in PRIMARY:
            return ToTenant(shop, "copy_first_row", primary=True)
        return ToUnified(reason="copy_unified")


def world(**kwargs: object) -> tuple[Harness, FakeLink, Rows]:
    link = FakeLink("shop1")
    rows = Rows(**kwargs)  # type: ignore[arg-type]
    h = Harness({"COPY customers": rows, "BEGIN": AnswerBegin(reason="deferred_begin"),
                 "orders": ToTenant(1, "tenant_primary", primary=True)},
                links={1: [link, FakeLink("spare")], 3: [FakeLink("shop3")]})
    return h, link, rows


def foreign(row: int, shop: int | None = None, runs_on: int = 1, problem: str | None = None) -> bytes:
    r = copy_row_refusal("customers", row, shop_id=shop, runs_on=runs_on, problem=problem)
    return error_response(r.sqlstate, r.message, hint=r.hint)


# --- on the shop's database -----------------------------------------------------------------------------
def test_the_proxy_starts_the_copy_and_holds_it_until_the_first_row() -> None:
    h, _link, rows = world()
    h.client(q(COPY))
    assert h.take() == [("client", G2)]
    assert h.state is State.COPY_WAITING and not h.machine.idle
    h.client(d(b"1\tpartial"))  # no complete row yet
    assert h.take() == [] and rows.asked == [None]


def test_a_tenant_primary_shops_copy_streams_to_its_database() -> None:
    h, link, rows = world()
    h.client(q(COPY))
    h.client(d(b"1\tAnn\n1\tBo"))
    assert rows.asked == [None, FirstRow(1)]
    assert h.fx.of("borrow") == [("borrow", 1)]
    assert h.fx.tenant_writes(link) == [q(COPY), d(b"1\tAnn\n1\tBo")]
    h.client(d(b"b\n1\tCy\n"), DONE)
    assert h.fx.tenant_writes(link)[2:] == [d(b"b\n1\tCy\n") + DONE]
    assert h.unified_bytes() == b""
    h.take()
    h.tenant(copy_in_response(2, binary=False), notice("hi"), cc("COPY 3"), rfq())
    assert h.client_bytes() == notice("hi") + cc("COPY 3") + rfq()  # the server's CopyInResponse removed
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.machine.idle and h.router.outcomes == ["ok"]
    assert [type(dec).__name__ for dec in h.router.acted_on] == ["CopyFirstRow", "ToTenant"]


def test_the_tenants_answer_is_edited_however_it_is_cut() -> None:
    answer = G2 + cc("COPY 1") + rfq()
    for chunks in splits(answer):
        h, _link, _rows = world()
        h.client(q(COPY), d(b"1\tA\n"), DONE)
        h.take()
        for chunk in chunks:
            h.tenant(chunk)
        assert h.client_bytes() == cc("COPY 1") + rfq(), chunks


def test_the_first_row_may_come_in_pieces_and_the_client_stream_however_cut() -> None:
    stream = q(COPY) + d(b"3\tA") + d(b"nn\n3\t") + d(b"Bo\n") + DONE
    for chunks in splits(stream):
        h, _link, _rows = world()
        for chunk in chunks:
            h.client(chunk)
        shop3 = h.fx.pool[3]
        assert h.fx.of("borrow") == [("borrow", 3)] and not shop3
        written = b"".join(h.fx.tenant_writes())
        assert written == q(COPY) + d(b"3\tA") + d(b"nn\n3\t") + d(b"Bo\n") + DONE, chunks


def test_the_data_waits_for_a_connection_and_the_client_pauses_past_the_limit() -> None:
    h, _link, _rows = world()
    h.fx.pool[3].clear()  # no idle connection: the pool answers later
    h.client(q(COPY), d(b"3\tA\n"))
    big = d(b"3\t" + b"x" * HOLD_LIMIT + b"\n")
    h.client(big)
    assert ("pause",) in h.log and h.fx.tenant_writes() == []
    link = FakeLink("late")
    h.take()
    h.machine.tenant_ready(link)
    log = h.take()
    assert ("tenant", link, q(COPY)) in log and ("tenant", link, d(b"3\tA\n") + big) in log
    assert ("resume",) in log


# --- a row of another shop ---------------------------------------------------------------------------------
def test_a_row_of_another_shop_fails_the_copy_on_the_tenant() -> None:
    h, link, _rows = world()
    h.client(q(COPY), d(b"1\tA\n1\tB\n"))
    h.take()
    h.client(d(b"1\tC\n2\tD\n1\tE\n"))
    message = ("pgtenantproxy: COPY into customers: row 4 belongs to shop 2, but this COPY runs on shop 1's "
               "database; nothing was copied")
    assert h.take() == [("tenant", link, copy_fail(message))]
    h.client(d(b"1\tF\n"), DONE)  # the rest of the client's data: dropped, as PostgreSQL ignores it
    assert h.take() == []
    h.tenant(G2, error("57014", "COPY from stdin failed: " + message), rfq())
    assert h.client_bytes() == foreign(4, 2) + rfq()
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.machine.idle and h.router.outcomes == ["error"]
    h.client(q("SELECT 1"))  # the session carries on
    assert h.unified_bytes() == q("SELECT 1")


def test_a_bad_row_in_the_held_data_fails_the_copy_before_its_unit_is_sent() -> None:
    h, link, _rows = world()
    h.client(q(COPY), d(b"1\tA\n\\N\tB\n"))
    message = ("pgtenantproxy: COPY into customers: row 2 has no shop (its tenant column is NULL); "
               "nothing was copied")
    assert h.fx.tenant_writes(link) == [q(COPY), copy_fail(message)]
    h.client(DONE)
    h.tenant(G2, error("57014"), rfq())
    assert sqlstate_of(h.client_bytes()) == "0A000"
    assert h.client_bytes().endswith(rfq()) and h.machine.idle


def test_the_last_line_without_its_newline_is_checked_at_copy_done() -> None:
    h, link, _rows = world()
    h.client(q(COPY), d(b"1\tA\n2\tB"), DONE)
    message = "pgtenantproxy: COPY into customers: row 2 belongs to shop 2, but this COPY runs on shop 1's " \
              "database; nothing was copied"
    # the data went as it came; CopyFail instead of CopyDone
    assert b"".join(h.fx.tenant_writes(link)) == q(COPY) + d(b"1\tA\n2\tB") + copy_fail(message)


def test_an_error_of_the_server_mid_copy_ends_it_and_the_rest_is_dropped() -> None:
    h, link, _rows = world()
    h.client(q(COPY), d(b"1\tA\n"))
    h.take()
    h.tenant(G2, error("23505", "duplicate"), rfq())
    assert h.client_bytes() == error("23505", "duplicate") + rfq()
    assert h.fx.of("give_back") == [("give_back", 1, link, True, False)]
    assert h.state is State.IDLE and not h.machine.idle  # the client's data is not over yet
    h.take()
    h.client(d(b"1\tB\n"), DONE, q("SELECT 1"))
    assert h.take() == [("unified", q("SELECT 1"))]


# --- a first row that decides otherwise --------------------------------------------------------------------
def test_another_shops_copy_runs_on_unified_with_the_held_data_in_order() -> None:
    h, _link, _rows = world()
    h.client(q(COPY), d(b"2\tA\n2\tB\n"))
    assert h.unified_bytes() == q(COPY) + d(b"2\tA\n2\tB\n") and h.fx.of("borrow") == []
    h.client(d(b"1\tC\n"), DONE)  # unread: unified's own fence judges
    assert h.unified_bytes().endswith(d(b"1\tC\n") + DONE)
    h.take()
    h.unified(G2, cc("COPY 3"), rfq())
    assert h.client_bytes() == cc("COPY 3") + rfq()
    assert h.machine.owed == 0 and h.machine.idle and h.router.outcomes == ["ok"]


def test_a_copy_without_rows_runs_on_unified() -> None:
    h, _link, rows = world()
    h.client(q(COPY), DONE)
    assert rows.asked == [None, FirstRow(None)]
    assert h.unified_bytes() == q(COPY) + DONE
    h.unified(G2, cc("COPY 0"), rfq())
    assert h.client_bytes() == G2 + cc("COPY 0") + rfq() and h.machine.idle


def test_a_first_row_without_a_shop_is_refused_where_the_session_is() -> None:
    h, _link, rows = world()
    h.client(q(COPY), d(b"x\tA\n1\tB\n"))
    problem = "has no shop (its tenant column is not a shop id)"
    refusal = copy_row_refusal("customers", 1, shop_id=None, runs_on=None, problem=problem)
    assert h.unified_bytes() == q(refusal_sql(*refusal)) and rows.asked == [None]
    h.client(d(b"1\tC\n"), DONE)
    h.unified(error("0A000", refusal.message), rfq())
    assert h.client_bytes() == G2 + error("0A000", refusal.message) + rfq()
    assert h.machine.idle and h.fx.of("borrow") == []


def test_a_copy_that_a_hold_delays_runs_where_the_shop_is_after_it() -> None:
    h, _link, rows = world()
    h.fx.pool[4].append(FakeLink("shop4"))
    rows.held[0] = True
    h.client(q(COPY), d(b"4\tA\n"))
    assert h.state is State.HELD
    h.client(d(b"4\tB\n"), DONE)
    assert h.fx.tenant_writes() == [] and h.unified_bytes() == b""
    rows.held[0] = False  # the cutover flipped shop 4
    h.fire()
    assert b"".join(h.fx.tenant_writes()) == q(COPY) + d(b"4\tA\n") + d(b"4\tB\n") + DONE
    assert rows.asked == [None, FirstRow(4), FirstRow(4)]


def test_a_copy_whose_hold_lasts_too_long_is_refused() -> None:
    h, _link, rows = world()
    rows.held[0] = True
    h.client(q(COPY), d(b"4\tA\n"))
    h.clock.advance(10)
    h.fire()
    assert h.unified_bytes() == q(refusal_sql(*hold_timeout_error(4)))
    h.client(DONE)
    h.unified(error("55P03"), rfq())
    assert h.client_bytes().endswith(error("55P03") + rfq()) and h.machine.idle


# --- transactions ------------------------------------------------------------------------------------------
def test_a_copy_after_a_lazy_begin_takes_the_begin_along_and_pins_the_transaction() -> None:
    h, link, _rows = world()
    h.client(q("BEGIN"))
    h.client(q(COPY), d(b"1\tA\n"))
    # our Sync waits for the data's end (a server in copy-in mode would ignore it)
    assert h.fx.tenant_writes(link) == [BEGIN_HEAD + q(COPY), d(b"1\tA\n")]
    h.client(DONE)
    assert h.fx.tenant_writes(link)[-1] == DONE + SYNC
    h.take()
    h.tenant(BEGIN_HEAD_ANSWER, G2, cc("COPY 1"), rfq("T"), rfq("T"))
    assert h.client_bytes() == cc("COPY 1") + rfq("T")
    assert h.tx is TxPlace.PINNED and h.facts.pinned_shop == 1


def test_a_copy_in_a_pinned_transaction_runs_there_and_another_shop_is_refused() -> None:
    h, link, _rows = world()
    h.client(q("BEGIN"), q(COPY), d(b"1\tA\n"), DONE)
    h.tenant(BEGIN_HEAD_ANSWER, G2, cc("COPY 1"), rfq("T"), rfq("T"))
    h.take()
    h.client(q(COPY), d(b"1\tB\n"), DONE)
    assert h.fx.tenant_writes() == [q(COPY), d(b"1\tB\n") + DONE]  # the same link, no head, no borrow
    assert h.fx.of("borrow") == []
    h.tenant(G2, cc("COPY 1"), rfq("T"))
    h.take()
    h.client(q(COPY), d(b"3\tC\n"), DONE)
    refusal = copy_row_refusal("customers", 1, shop_id=3, runs_on=1, transaction=True)
    assert "this transaction runs on shop 1's database" in refusal.message
    assert h.fx.tenant_writes(link) == [q(refusal_sql(*refusal))]  # raised in the transaction: it fails
    h.tenant(error("0A000", refusal.message), rfq("E"))
    assert h.client_bytes() == G2 + error("0A000", refusal.message) + rfq("E")
    assert h.tx is TxPlace.PINNED and h.machine.tx_status == ord("E")


# --- extended protocol -------------------------------------------------------------------------------------
def test_an_extended_copy_is_answered_message_for_message_and_its_sync_goes_along() -> None:
    h, link, _rows = world()
    unit = parse("", COPY) + bind() + describe("P") + execute() + SYNC
    h.client(unit)
    assert h.take() == [("client", PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + G2)]
    h.client(d(b"1\tA\n"), DONE, SYNC)
    assert b"".join(h.fx.tenant_writes(link)) == unit + d(b"1\tA\n") + DONE + SYNC
    h.tenant(PARSE_COMPLETE, BIND_COMPLETE, NO_DATA, G2, cc("COPY 1"), rfq())
    assert h.client_bytes() == cc("COPY 1") + rfq()  # the acknowledgements came from the proxy
    assert h.machine.idle


def test_an_extended_copy_that_fails_before_copying_gets_one_ready_for_query() -> None:
    h, _link, _rows = world()
    h.client(parse("", COPY) + bind() + describe("P") + execute() + SYNC, d(b"1\tA\n"))
    h.take()
    h.tenant(PARSE_COMPLETE, error("42501", "permission denied"), rfq())  # the unit's own Sync
    assert h.client_bytes() == error("42501", "permission denied")
    h.client(DONE, SYNC)
    h.tenant(rfq())  # the client's Sync
    assert h.client_bytes() == error("42501", "permission denied") + rfq() and h.machine.idle


def test_an_extended_copy_failed_by_the_proxy_waits_for_the_clients_sync() -> None:
    h, link, _rows = world()
    h.client(extended(COPY), d(b"1\tA\n2\tB\n"))
    assert h.fx.tenant_writes(link)[-1].startswith(b"f")
    h.client(d(b"1\tC\n"), DONE)
    assert h.fx.tenant_writes(link)[-1].startswith(b"f")  # dropped
    h.client(SYNC)
    assert h.fx.tenant_writes(link)[-1] == SYNC
    h.tenant(PARSE_COMPLETE, BIND_COMPLETE, NO_DATA, G2, error("57014"), rfq())
    assert h.client_bytes().endswith(foreign(2, 2) + rfq()) and h.machine.idle


def test_an_extended_copy_on_unified_owes_one_answer() -> None:
    h, _link, _rows = world()
    h.client(extended(COPY), d(b"2\tA\n"), DONE, SYNC)
    assert h.unified_bytes() == extended(COPY) + d(b"2\tA\n") + DONE + SYNC
    assert h.machine.owed == 1
    h.unified(PARSE_COMPLETE, BIND_COMPLETE, NO_DATA, G2, cc("COPY 1"), rfq())
    assert h.machine.owed == 0 and h.machine.idle


def test_an_extended_copy_unified_runs_unrouted_owes_one_answer_too() -> None:
    h = Harness()  # no router rule: every unit is unified's
    h.client(extended("COPY t FROM STDIN"))
    h.unified(PARSE_COMPLETE, BIND_COMPLETE, NO_DATA, copy_in_response(1, binary=False))
    h.client(d(b"1\n"), DONE, SYNC)
    assert h.machine.owed == 1
    h.unified(cc("COPY 1"), rfq())
    assert h.machine.owed == 0 and h.machine.idle and h.state is State.IDLE
    h.client(q("SELECT 1"))
    h.unified(select_answer())
    assert h.machine.idle


# --- other formats, broken clients --------------------------------------------------------------------------
def test_binary_copy_reads_the_int4_tenant_column() -> None:
    h, link, _rows = world(fmt=CopyFormat.of("binary"))
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)

    def tup(shop: int, name: bytes) -> bytes:
        return struct.pack("!hi", 2, 4) + struct.pack("!i", shop) + struct.pack("!i", len(name)) + name

    h.client(q(COPY))
    assert h.take() == [("client", copy_in_response(2, binary=True))]
    h.client(d(header + tup(1, b"A")), d(tup(1, b"B") + tup(3, b"C")))
    message = "pgtenantproxy: COPY into customers: row 3 belongs to shop 3, but this COPY runs on shop 1's " \
              "database; nothing was copied"
    assert h.fx.tenant_writes(link) == [q(COPY), d(header + tup(1, b"A")) + copy_fail(message)]


def test_csv_quoted_newlines_and_a_header() -> None:
    h, link, _rows = world(fmt=CopyFormat.of("csv", header=True))
    h.client(q(COPY), d(b'shop_id,name\n1,"two\nlines"\n'), d(b'1,"x,y"\n'), DONE)
    assert b"".join(h.fx.tenant_writes(link)).endswith(DONE)
    assert not any(w.startswith(b"f") for w in h.fx.tenant_writes(link))


def test_another_message_before_the_first_row_is_postgresqls_08P01() -> None:
    h, _link, _rows = world()
    h.client(q(COPY), d(b"1\tA"), q("SELECT 1"))
    assert b"unexpected message type 0x51 during COPY from stdin" in h.unified_bytes()
    h.unified(error("08P01"), rfq())
    assert h.unified_bytes().endswith(q("SELECT 1"))  # then the Query runs
    assert h.state is State.UNIFIED_BUSY


def test_another_message_mid_copy_fails_it_on_the_tenant() -> None:
    h, link, _rows = world()
    h.client(q(COPY), d(b"1\tA\n"), q("SELECT 1"))
    interrupted = copy_fail("unexpected message type 0x51 during COPY from stdin")
    assert h.fx.tenant_writes(link)[-1].endswith(interrupted)
    h.tenant(G2, error("57014"), rfq())
    assert sqlstate_of(h.client_bytes()) == "08P01"
    assert h.unified_bytes() == q("SELECT 1")  # after the COPY


def test_dispose_in_the_middle_of_a_copy() -> None:
    h, _link, _rows = world()
    h.client(q(COPY))
    h.machine.dispose()
    assert h.state is State.CLOSED and not h.machine._copies.active
