"""What a unit touches (write routing of tenant_primary shops) and the readiness tally."""

from __future__ import annotations

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import Claim
from pgtenantproxy.routing.primary import Touch, touch
from pgtenantproxy.routing.readiness import (
    ANY_SHOP,
    CROSS_SHOP,
    GLOBAL,
    UNPLACED,
    ConflictTally,
    TxTrace,
    UnitNote,
)
from pgtenantproxy.routing.router import BatchItem, Router
from pgtenantproxy.routing.strategy import Strategy

TENANT = frozenset({"public.customers", "public.repairs"})
ROUTER = Router(Analyser(), Strategy("unified"))


def summary(*sqls: str, startup: Claim | None = None, shadowed: frozenset[str] = frozenset()) -> Touch:
    routed = ROUTER.route([BatchItem(s) for s in sqls], tx_status=ord("I"), tenant_tables=TENANT,
                          eligible=lambda _s: True, startup=startup, shadowed=shadowed)
    return touch(routed.statements, routed.identifications, TENANT, shadowed)


@pytest.mark.parametrize(
    ("sql", "single"),
    [
        ("INSERT INTO customers (shop_id, name) VALUES (5, 'a')", 5),
        ("UPDATE customers SET name = 'b' WHERE shop_id = 5 AND id = 3", 5),
        ("DELETE FROM repairs WHERE shop_id = 5", 5),
        ("BEGIN; UPDATE repairs SET price = 1 WHERE shop_id = 5; COMMIT", 5),
        ("SELECT id FROM repairs WHERE shop_id = 5 FOR UPDATE", 5),
        ("INSERT INTO customers (shop_id, name) VALUES (5, gen_random_uuid()::text)", 5),
        ("SELECT count(*) FROM repairs WHERE shop_id = 5", 5),
        # not movable, or not one shop
        ("UPDATE customers SET name = 'b' WHERE id = 3", None),
        ("UPDATE customers SET name = 'b' WHERE shop_id IN (5, 6)", None),
        ("INSERT INTO customers (shop_id, name) VALUES (5, 'a'), (6, 'b')", None),
        ("UPDATE repairs r SET price = 1 FROM shops s WHERE s.id = r.shop_id AND r.shop_id = 5", None),
        ("SET pgtenantproxy.shop_id = 5; UPDATE repairs SET price = 1 WHERE shop_id = 5", None),
        ("UPDATE repairs SET price = 1 WHERE shop_id = 5; SHOW work_mem", None),
        ("SELECT pg_advisory_lock(1) FROM repairs WHERE shop_id = 5", None),
        ("SELECT my_function(id) FROM repairs WHERE shop_id = 5", None),
        ("COPY repairs FROM STDIN", None),
        ("TRUNCATE repairs", None),
        ("SELECT 1", None),
        ("PREPARE TRANSACTION 'x'", None),
    ],
)
def test_single_shop_units(sql: str, single: int | None) -> None:
    assert summary(sql).single == single


def test_declared_shop_covers_unpinned_statements() -> None:
    t = summary("UPDATE customers SET name = 'x' WHERE id = 3", startup=Claim("startup", 7))
    assert t.single == 7 and t.writes


def test_neutral_units_fit_any_pinned_shop() -> None:
    for sql in ("COMMIT", "SELECT 1", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "SELECT nextval('s')"):
        t = summary(sql)
        assert t.only(5) and t.only(6) and t.single is None, sql
    assert not summary("SHOW work_mem").only(5)
    assert not summary("SELECT * FROM shops").only(5)
    assert not summary("UPDATE repairs SET price = 1 WHERE shop_id = 6").only(5)


def test_temp_table_shadowing_a_tenant_table_is_not_the_shop() -> None:
    t = summary("UPDATE customers SET name = 'x' WHERE shop_id = 5", shadowed=frozenset({"customers"}))
    assert t.global_tables and t.single is None


def test_quiet_means_a_plain_read() -> None:
    assert summary("SELECT * FROM repairs WHERE shop_id = 5").quiet
    assert not summary("SELECT * FROM repairs WHERE shop_id = 5 FOR SHARE").quiet
    assert not summary("BEGIN").quiet
    assert not summary("DELETE FROM repairs WHERE shop_id = 5").quiet


def _note(*sqls: str) -> UnitNote:
    return UnitNote(summary(*sqls), tuple(f"fp{len(s)}" for s in sqls), sqls)


def test_trace_conflicts_of_writers_and_unplaced_reads() -> None:
    trace = TxTrace()
    trace.add(_note("UPDATE repairs SET price = 2 WHERE shop_id = 5"))
    trace.add(_note("UPDATE shops SET name = 'n' WHERE id = 5"))
    trace.add(_note("UPDATE repairs SET price = 3 WHERE shop_id = 6"))
    assert trace.conflicts(lambda s: True) == [(5, CROSS_SHOP), (5, GLOBAL), (6, CROSS_SHOP), (6, GLOBAL)]
    assert trace.conflicts(lambda s: s == 6) == [(6, CROSS_SHOP), (6, GLOBAL)]
    reads = TxTrace()
    reads.add(_note("SELECT * FROM repairs WHERE shop_id = 5"))
    reads.add(_note("SELECT * FROM shops"))
    reads.add(_note("SELECT * FROM repairs WHERE shop_id = 6"))
    # after either shop's cutover this read transaction could not be placed on one database
    assert reads.conflicts(lambda s: True) == [(5, UNPLACED), (6, UNPLACED)]
    alone = TxTrace()
    alone.add(_note("UPDATE repairs SET price = 2 WHERE shop_id = 5"))
    alone.add(_note("SELECT * FROM repairs WHERE shop_id = 5"))
    assert alone.conflicts(lambda s: True) == []
    unnamed = TxTrace()
    unnamed.add(UnitNote(Touch(unknown=True), ("f",), ("SELECT count(*) FROM repairs",), unknown=True))
    assert unnamed.conflicts(lambda s: True) == [(ANY_SHOP, UNPLACED)]
    function = TxTrace()
    function.add(_note("SELECT my_report(id) FROM repairs WHERE shop_id = 5"))
    assert function.conflicts(lambda s: True) == [(5, UNPLACED)]


def test_tally_counts_per_fingerprint_with_a_stripped_sample() -> None:
    tally = ConflictTally()
    for price in (2, 3, 4):
        trace = TxTrace()
        trace.add(UnitNote(summary(f"UPDATE repairs SET price = {price} WHERE shop_id = 5"), ("a",),
                           (f"UPDATE repairs SET price = {price} WHERE shop_id = 5",)))
        trace.add(UnitNote(summary("UPDATE shops SET name = 'secret' WHERE id = 5"), ("b",),
                           ("UPDATE shops SET name = 'secret' WHERE id = 5",)))
        tally.add(trace, trace.conflicts(lambda s: True))
    rows = tally.take()
    assert len(rows) == 1
    shop, kind, fingerprint, sample, count = rows[0]
    assert (shop, kind, fingerprint, count) == (5, GLOBAL, "a b", 3)
    assert "secret" not in sample and "$1" in sample
    assert tally.take() == []
    tally.give_back(rows)
    assert tally.take()[0][4] == 3


def _read(*sqls: str) -> UnitNote:
    """A unit every statement of which may be federated (plain reads)."""
    touched = summary(*sqls)
    return UnitNote(touched, tuple(f"fp{len(s)}" for s in sqls), sqls, touched.unknown, federatable=True)


def test_reads_that_federation_serves_are_placeable() -> None:
    report = TxTrace()  # a cross-shop report with a global table, autocommit
    report.add(_read("SELECT s.name, count(*) FROM repairs r JOIN shops s ON s.id = r.shop_id GROUP BY 1"))
    assert report.conflicts(lambda s: True) == []
    first = TxTrace()  # a report first (run aside, the transaction still waits), then one shop
    first.add(_read("SELECT count(*) FROM repairs WHERE shop_id IN (5, 6)"))
    first.add(_read("SELECT * FROM repairs WHERE shop_id = 5"))
    assert first.conflicts(lambda s: True) == []
    late = TxTrace()  # one shop first: the transaction is on its database, the report is refused there
    late.add(_read("SELECT * FROM repairs WHERE shop_id = 5"))
    late.add(_read("SELECT count(*) FROM repairs WHERE shop_id IN (5, 6)"))
    assert late.conflicts(lambda s: True) == [(ANY_SHOP, UNPLACED)]  # (several shops: counted as unnamed)
    writer = TxTrace()  # writes are never federated
    writer.add(_read("SELECT count(*) FROM repairs WHERE shop_id IN (5, 6)"))
    writer.add(_note("UPDATE repairs SET price = 2 WHERE shop_id = 5"))
    assert writer.conflicts(lambda s: True) == [(ANY_SHOP, UNPLACED)]
