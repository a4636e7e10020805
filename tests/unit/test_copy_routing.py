"""dispatch/copy_routing.py: where a COPY runs while shops are tenant_primary, on the real analyser."""

from __future__ import annotations

from pgtenantproxy.dispatch.copy_columns import CopyColumns
from pgtenantproxy.dispatch.copy_routing import UNIFIED_AS_USUAL, copy_decision
from pgtenantproxy.dispatch.write_routing import Lanes, UnitView, write_decision
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit
from pgtenantproxy.protocol.copy_rows import CopyFormat
from pgtenantproxy.protocol.records import ClientReader
from pgtenantproxy.routing import Analyser, BatchItem, Router, Strategy
from pgtenantproxy.routing.primary import touch
from pgtenantproxy.session.decision import CopyFirstRow, Decision, Hold, Refuse, ToTenant
from pgtenantproxy.session.facts import FirstRow, SessionFacts
from tests.unit.session.wire import q

ROUTER = Router(Analyser("shop_id"), Strategy("tenant"))
TABLES = frozenset({"public.customers", "public.orders"})
LANES = Lanes(1, primary=frozenset({1, 3}), holding=frozenset({4}), watched=frozenset(),
              copy_columns=CopyColumns({"public.customers": (1, 4)}))
COPY = "COPY customers (shop_id, name) FROM STDIN"


def unit_of(data: bytes) -> Unit:
    assembler = BatchAssembler()
    (unit,) = [u for rec in ClientReader().feed(data) for u in assembler.feed(rec)]
    return unit


def facts(**kwargs: object) -> SessionFacts:
    f = SessionFacts(startup={})
    for name, value in kwargs.items():
        setattr(f, name, value)
    return f


def view(sql: str, f: SessionFacts, shadowed: frozenset[str] = frozenset()) -> UnitView:
    items = [BatchItem(sql)]
    if f.deferred_begin is not None:
        items.insert(0, BatchItem(f.deferred_begin))
    routed = ROUTER.route(items, tx_status=f.tx_status, tenant_tables=TABLES, eligible=lambda _s: True,
                          shadowed=shadowed)
    summary = touch(routed.statements, routed.identifications, TABLES, shadowed)
    return UnitView(unit_of(q(sql)), routed, items, summary, ("other", "customers"))


def decide(sql: str, f: SessionFacts | None = None, lanes: Lanes = LANES, **kw: object) -> Decision | None:
    f = f or facts()
    return copy_decision(view(sql, f, **kw), f, lanes, TABLES, held=lambda _s: lambda: True, hold_s=2.0)  # type: ignore[arg-type]


def test_copy_from_stdin_with_a_column_list_is_decided_by_its_first_row() -> None:
    assert decide(COPY) == CopyFirstRow(None, "copy_first_row", table="customers", kind="other", column=0,
                                        columns=2, format=CopyFormat())


def test_without_a_column_list_the_catalog_says_where_the_tenant_column_is() -> None:
    found = decide("COPY public.customers FROM STDIN (FORMAT csv, HEADER true)")
    assert isinstance(found, CopyFirstRow)
    assert (found.column, found.columns, found.format) == (1, 4, CopyFormat.of("csv", header=True))
    binary = decide("COPY customers FROM STDIN (FORMAT binary)")
    assert isinstance(binary, CopyFirstRow) and binary.format.binary


def test_copies_the_proxy_cannot_read_run_on_unified_as_before() -> None:
    for sql in (
        "COPY orders FROM STDIN",  # no column list, no layout known
        "COPY customers (name) FROM STDIN",  # no tenant column in the list
        "COPY customers (shop_id, name) FROM STDIN WHERE shop_id = 1",
        "COPY customers (shop_id, name) FROM STDIN (DELIMITER 'ab')",
        "COPY customers (shop_id, name) FROM STDIN (ENCODING 'SJIS')",
    ):
        assert decide(sql) is UNIFIED_AS_USUAL, sql
    assert decide(COPY, facts(settings={"client_encoding": "BIG5"})) is UNIFIED_AS_USUAL
    assert decide(COPY, facts(tx_status=c.TX_IN_BLOCK)) is UNIFIED_AS_USUAL  # a transaction on unified
    f = facts()
    routed = write_decision(view(COPY, f), f, LANES, TABLES, held=lambda _s: lambda: True, hold_s=1.0)
    assert isinstance(routed, CopyFirstRow)
    unreadable = "COPY orders FROM STDIN"
    assert write_decision(view(unreadable, f), f, LANES, TABLES, held=lambda _s: lambda: True,
                          hold_s=1.0) is None  # the caller goes on as for any unified unit


def test_not_a_copy_decided_here() -> None:
    assert decide("COPY shops FROM STDIN") is None  # a global table
    assert decide("COPY customers FROM '/tmp/customers.txt'") is None
    assert decide("SELECT 1") is None
    assert decide(COPY, shadowed=frozenset({"customers"})) is None  # a temporary table of that name
    no_primary = Lanes(1, frozenset(), frozenset(), frozenset())
    assert decide(COPY, lanes=no_primary) is None


def test_the_first_row_decides() -> None:
    assert decide(COPY, facts(copy_first_row=FirstRow(3))) == ToTenant(3, "copy_first_row", kind="other",
                                                                        table="customers", primary=True)
    assert decide(COPY, facts(copy_first_row=FirstRow(2))) is UNIFIED_AS_USUAL
    assert decide(COPY, facts(copy_first_row=FirstRow(None))) is UNIFIED_AS_USUAL
    held = decide(COPY, facts(copy_first_row=FirstRow(4)))
    assert isinstance(held, Hold) and held.shop_id == 4 and held.hold_s == 2.0


def test_after_a_lazy_begin() -> None:
    assert isinstance(decide(COPY, facts(deferred_begin="BEGIN")), CopyFirstRow)


def test_in_a_transaction_pinned_to_a_shop() -> None:
    pinned = facts(pinned_shop=1, tx_status=c.TX_IN_BLOCK)
    found = decide(COPY, pinned)
    assert isinstance(found, CopyFirstRow) and found.shop_id == 1
    pinned.copy_first_row = FirstRow(1)
    assert decide(COPY, pinned) == ToTenant(1, "copy_first_row", kind="other", table="customers",
                                            primary=True)
    pinned.copy_first_row = FirstRow(None)
    assert isinstance(decide(COPY, pinned), ToTenant)
    pinned.copy_first_row = FirstRow(3)
    refused = decide(COPY, pinned)
    assert isinstance(refused, Refuse) and refused.error.sqlstate == "0A000"
    assert refused.error.message == ("pgtenantproxy: COPY into customers: row 1 belongs to shop 3, but this "
                                     "transaction runs on shop 1's database; nothing was copied")
    pinned.copy_first_row = None
    assert decide("COPY orders FROM STDIN", pinned) is None  # the pinned rule refuses it


def test_copy_to_stdout_of_one_cut_over_shops_query_reads_its_database() -> None:
    sql = "COPY (SELECT name FROM customers WHERE shop_id = 3 ORDER BY name) TO STDOUT (FORMAT csv)"
    assert decide(sql) == ToTenant(3, "copy_out", kind="other", table="customers", primary=True)
    assert decide(sql.replace("= 3", "= 2")) is None  # not cut over: as usual
    assert decide(sql, facts(tx_status=c.TX_IN_BLOCK)) is None
    assert decide(sql, facts(pinned_shop=3)) == ToTenant(3, "copy_out", kind="other", table="customers",
                                                          primary=True)
    assert decide(sql, facts(pinned_shop=1)) is None
    assert decide("COPY (SELECT name FROM customers) TO STDOUT") is None  # no shop named
    assert decide("COPY (SELECT c.name FROM customers c JOIN shops s ON s.id = c.shop_id "
                  "WHERE c.shop_id = 3) TO STDOUT") is None  # a global table too
    # the shop's rows live there: a RETURNING query of them is the shop's too
    returning = "COPY (DELETE FROM customers WHERE shop_id = 3 RETURNING id) TO STDOUT"
    assert isinstance(decide(returning), ToTenant)
    assert decide("COPY (SELECT name, pg_backend_pid() FROM customers WHERE shop_id = 3) TO STDOUT") is None
    assert decide("COPY customers TO STDOUT") is UNIFIED_AS_USUAL  # every shop's rows: unified
