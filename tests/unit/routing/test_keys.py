"""Routing by key and along foreign keys: what the analyser records, and how shops are found (pure)."""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import BoundParams
from pgtenantproxy.routing.keys import PENDING, KeyShop, canonical, key_texts, occurrence_shops
from pgtenantproxy.routing.model import KeyValue
from pgtenantproxy.routing.primary import touch
from pgtenantproxy.routing.router import BatchItem, Router
from pgtenantproxy.routing.strategy import Strategy

TENANT = frozenset({"public.customers", "public.repairs", "public.devices"})
FK = ("public.repairs", "customer_id", "public.customers", "id")


@dataclass
class Keys:
    """A KeyView over a dict: keys of ``public.<table>`` by id; ``missing`` keys are PENDING."""

    owners: dict[tuple[str, str], int | None] = field(default_factory=dict)
    fks: frozenset[tuple[str, str, str, str]] = frozenset({FK})
    asked: list[tuple[str, str]] = field(default_factory=list)

    def is_key(self, table: str, column: str) -> bool:
        return column == "id" and table in TENANT

    def consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        return (a, a_col, b, b_col) in self.fks or (b, b_col, a, a_col) in self.fks

    def shop_of(self, table: str, column: str, key: str) -> KeyShop:
        self.asked.append((table, key))
        return self.owners.get((table, key), PENDING)


ANALYSER = Analyser()


def shops(sql: str, view: Keys, params: BoundParams | None = None) -> tuple[frozenset[int] | None, ...]:
    stmt = ANALYSER.analyse(sql).statements[0]
    return occurrence_shops(stmt, params, TENANT, view).shops


R = "public.repairs"
C = "public.customers"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM repairs WHERE id = 10", (frozenset({5}),)),
        ("UPDATE repairs SET status = 'x' WHERE id = 10", (frozenset({5}),)),
        ("DELETE FROM repairs WHERE 10 = id", (frozenset({5}),)),
        ("SELECT * FROM repairs WHERE id IN (10, 11)", (frozenset({5, 6}),)),
        ("SELECT * FROM repairs WHERE id = ANY('{10,11}')", (frozenset({5, 6}),)),
        ("SELECT * FROM repairs WHERE id = ANY(ARRAY[10, 11]::bigint[])", (frozenset({5, 6}),)),
        ("SELECT * FROM repairs WHERE id = 99", (frozenset(),)),  # exists nowhere: touches nothing
        # conditions that do not restrict the rows to the key: no shop
        ("SELECT * FROM repairs WHERE id = 10 OR price > 1", (None,)),
        ("SELECT * FROM repairs WHERE NOT id = 10", (None,)),
        ("SELECT * FROM repairs WHERE id > 10", (None,)),
        ("SELECT * FROM repairs WHERE customer_id = 10", (None,)),  # not the key column
        # a foreign key join: both ways, the pins of either side reach the other
        ("SELECT * FROM repairs r JOIN customers c ON c.id = r.customer_id WHERE r.shop_id = 5",
         (frozenset({5}), frozenset({5}))),
        ("SELECT * FROM repairs r JOIN customers c ON c.id = r.customer_id WHERE c.shop_id = 5",
         (frozenset({5}), frozenset({5}))),
        ("SELECT * FROM repairs r, customers c WHERE r.customer_id = c.id AND r.id = 10",
         (frozenset({5}), frozenset({5}))),
        # outer joins: only towards the nullable side
        ("SELECT * FROM repairs r LEFT JOIN customers c ON c.id = r.customer_id WHERE r.shop_id = 5",
         (frozenset({5}), frozenset({5}))),
        ("SELECT * FROM repairs r LEFT JOIN customers c ON c.id = r.customer_id AND c.shop_id = 5",
         (None, frozenset({5}))),  # the preserved side stays unrestricted
        ("SELECT * FROM repairs r FULL JOIN customers c ON c.id = r.customer_id WHERE r.shop_id = 5",
         (frozenset({5}), None)),
        # semi-joins: from the subquery out, and correlation in
        ("SELECT * FROM customers WHERE id IN (SELECT customer_id FROM repairs WHERE shop_id = 5)",
         (frozenset({5}), frozenset({5}))),
        ("SELECT * FROM customers WHERE NOT id IN (SELECT customer_id FROM repairs WHERE shop_id = 5)",
         (None, frozenset({5}))),
        ("SELECT * FROM customers c WHERE c.shop_id = 5 AND EXISTS "
         "(SELECT 1 FROM repairs r WHERE r.customer_id = c.id)", (frozenset({5}), frozenset({5}))),
        # not a foreign key: nothing flows
        ("SELECT * FROM repairs r JOIN customers c ON c.id = r.id WHERE r.shop_id = 5",
         (frozenset({5}), None)),
        ("SELECT * FROM repairs r JOIN devices d ON d.id = r.customer_id WHERE r.shop_id = 5",
         (frozenset({5}), None)),
        # tenant-column links carry shops found by key
        ("SELECT * FROM repairs r JOIN devices d ON d.shop_id = r.shop_id WHERE r.id = 10",
         (frozenset({5}), frozenset({5}))),
    ],
)
def test_occurrence_shops(sql: str, expected: tuple[frozenset[int] | None, ...]) -> None:
    view = Keys({(R, "10"): 5, (R, "11"): 6, (R, "99"): None, (C, "10"): 5})
    assert shops(sql, view) == expected


def test_a_key_being_looked_up_is_pending_and_asked_once_per_statement() -> None:
    view = Keys()
    stmt = ANALYSER.analyse("UPDATE repairs SET price = 1 WHERE id = $1").statements[0]
    found = occurrence_shops(stmt, BoundParams((b"42",)), TENANT, view)
    assert found.pending and found.shops == (None,)
    assert view.asked == [(R, "42")]


def test_pinned_occurrences_are_not_looked_up() -> None:
    view = Keys()
    assert shops("UPDATE repairs SET price = 1 WHERE shop_id = 3 AND id = 7", view) == (frozenset({3}),)
    assert view.asked == []


def test_without_foreign_key_proofs_nothing_flows() -> None:
    view = Keys(fks=frozenset())
    sql = "SELECT * FROM repairs r JOIN customers c ON c.id = r.customer_id WHERE r.shop_id = 5"
    assert shops(sql, view) == (frozenset({5}), None)


@pytest.mark.parametrize(
    ("values", "params", "expected"),
    [
        ((KeyValue(text="7"),), None, ["7"]),
        ((KeyValue(param=1),), BoundParams((b"12",)), ["12"]),
        ((KeyValue(param=1),), BoundParams((struct.pack(">q", 12),), (1,), (20,)), ["12"]),
        ((KeyValue(param=1),), BoundParams((struct.pack(">i", 12),), (1,)), ["12"]),  # no type: by length
        ((KeyValue(param=1, cast="int8"),), BoundParams((struct.pack(">q", -3),), (1,)), ["-3"]),
        ((KeyValue(param=1),), BoundParams((None,)), []),  # = NULL matches nothing
        ((KeyValue(param=1, array=True),), BoundParams((b"{1,2,3}",)), ["1", "2", "3"]),
        ((KeyValue(param=2),), BoundParams((b"1",)), None),  # no such parameter
    ],
)
def test_key_texts(
    values: tuple[KeyValue, ...], params: BoundParams | None, expected: list[str] | None
) -> None:
    assert key_texts(values, params) == expected


def _binary_array(oid: int, elements: list[bytes | None]) -> bytes:
    out = struct.pack(">iiIii", 1, int(None in elements), oid, len(elements), 1)
    for e in elements:
        out += struct.pack(">i", -1) if e is None else struct.pack(">i", len(e)) + e
    return out


def test_binary_array_parameters_of_integers_and_uuids() -> None:
    ints = _binary_array(20, [struct.pack(">q", 5), None, struct.pack(">q", 9)])
    assert key_texts((KeyValue(param=1, array=True),), BoundParams((ints,), (1,), (1016,))) == ["5", "9"]
    u = uuid.uuid4()
    uuids = _binary_array(2950, [u.bytes])
    assert key_texts((KeyValue(param=1, array=True),), BoundParams((uuids,), (1,), (2951,))) == [str(u)]
    single = key_texts((KeyValue(param=1),), BoundParams((u.bytes,), (1,), (2950,)))
    assert single == [str(u)]


def test_canonical_forms() -> None:
    assert canonical(" 0042 ", "int") == "42"
    assert canonical("x", "int") is None
    assert canonical("6C1F3A4E-0000-0000-0000-000000000001", "uuid") == "6c1f3a4e-0000-0000-0000-000000000001"
    assert canonical("not-a-uuid", "uuid") is None
    assert canonical("SKU-1", "text") == "SKU-1"


ROUTER = Router(Analyser(), Strategy("unified"))


def _touch(sql: str, view: Keys) -> tuple[object, ...]:
    routed = ROUTER.route([BatchItem(sql)], tx_status=ord("I"), tenant_tables=TENANT,
                          eligible=lambda _s: True, keys=view)
    t = touch(routed.statements, routed.identifications, TENANT)
    return routed.identifications[0].reason, t.single, t.unknown


def test_identification_by_key_feeds_write_routing() -> None:
    view = Keys({(R, "10"): 5, (R, "11"): 6, (R, "99"): None})
    assert _touch("UPDATE repairs SET price = 1 WHERE id = 10", view) == ("identified", 5, False)
    assert _touch("UPDATE repairs SET price = 1 WHERE id IN (10, 11)", view) == ("multiple_shops", None, True)
    # a key that exists nowhere touches no row: neutral, never "unknown shop"
    assert _touch("UPDATE repairs SET price = 1 WHERE id = 99", view) == ("nowhere", None, False)
    assert _touch("UPDATE repairs SET price = 1 WHERE id = 12", view)[0] == "key_pending"
