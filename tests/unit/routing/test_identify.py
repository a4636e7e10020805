"""Shop identification: startup options, Bind values, source order and conflicts."""

from __future__ import annotations

import struct

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import (
    BoundParams,
    Claim,
    Identification,
    comment_claim,
    decode_shop,
    identify,
    query_shops,
    startup_claim,
    startup_settings,
)
from pgtenantproxy.routing.model import ShopRef, StatementAnalysis

A = Analyser()
TENANT = frozenset({"orders", "customers", "public.items"})
ORDER = ("startup", "set", "comment", "query")


def stmt(sql: str) -> StatementAnalysis:
    (s,) = A.analyse(sql).statements
    return s


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("-c pgtenantproxy.shop_id=5", {"pgtenantproxy.shop_id": "5"}),
        ("-cpgtenantproxy.shop_id=5", {"pgtenantproxy.shop_id": "5"}),
        ("--pgtenantproxy.shop_id=5", {"pgtenantproxy.shop_id": "5"}),
        ("--pgtenantproxy.shop-id=5", {"pgtenantproxy.shop_id": "5"}),
        ("-c PgTenantProxy.Shop_Id=5", {"pgtenantproxy.shop_id": "5"}),
        ("  -c  a=1   -c b=2 ", {"a": "1", "b": "2"}),
        ("-c a=1 -c a=2", {"a": "2"}),
        (r"-c search_path=a\ b -c x=c\\d", {"search_path": "a b", "x": "c\\d"}),
        (r"-c x=a\ -c y=2", {"x": "a -c"}),  # "y=2" is a stray word, not an option
        ("-c", {}),
        ("-B 100 -c a", {}),
        ("", {}),
    ],
)
def test_startup_settings(options: str, expected: dict[str, str]) -> None:
    assert startup_settings(options) == expected


@pytest.mark.parametrize(
    ("params", "claim"),
    [
        ({"user": "app", "options": "-c pgtenantproxy.shop_id=5"}, Claim("startup", 5)),
        ({"options": "-c statement_timeout=0 --pgtenantproxy.shop_id=12"}, Claim("startup", 12)),
        ({"pgtenantproxy.shop_id": "7"}, Claim("startup", 7)),
        ({"options": "-c pgtenantproxy.shop_id=5", "pgtenantproxy.shop_id": "7"}, Claim("startup", 7)),
        ({"options": "-c pgtenantproxy.shop_id=abc"}, Claim("startup", None)),
        ({"options": "-c pgtenantproxy.shop_id="}, Claim("startup", None)),
        ({"options": "-c other=5"}, None),
        ({"user": "app"}, None),
    ],
)
def test_startup_claim(params: dict[str, str], claim: Claim | None) -> None:
    assert startup_claim(params) == claim


def test_comment_claim() -> None:
    assert comment_claim(A.analyse("select 1 /* shop_id=5 */")) == Claim("comment", 5)
    assert comment_claim(A.analyse("/* shop_id=5 */ select 1 /* shop_id=6 */")) == Claim("comment", None)
    assert comment_claim(A.analyse("select 1")) is None


@pytest.mark.parametrize(
    ("raw", "fmt", "oid", "cast", "shop"),
    [
        (b"5", 0, 0, None, 5),
        (b" 42 ", 0, 23, None, 42),
        (b"-3", 0, 0, None, -3),
        (b"5.0", 0, 0, None, None),
        (b"abc", 0, 0, None, None),
        (b"\xff\xfe", 0, 0, None, None),
        (struct.pack("!h", 7), 1, 21, None, 7),
        (struct.pack("!i", 70000), 1, 23, None, 70000),
        (struct.pack("!q", 2**40), 1, 20, None, 2**40),
        (struct.pack("!i", -5), 1, 23, None, -5),
        (struct.pack("!i", 5), 1, 20, None, None),  # declared int8 but 4 bytes: the server refuses it
        (struct.pack("!i", 9), 1, 0, None, 9),  # unspecified type: the tenant column's integer type
        (struct.pack("!q", 9), 1, 0, None, 9),
        (struct.pack("!q", 9), 1, 0, "int8", 9),
        (struct.pack("!i", 9), 1, 0, "int8", None),
        (b"123", 1, 0, None, None),  # 3 bytes is no integer
        (b"12", 1, 25, None, 12),  # binary text is the text itself
        (b"1234", 1, 0, "text", 1234),
        (b"1234", 1, 1043, None, 1234),
        (b"\x00\x00\x00\x05", 1, 1700, None, None),  # numeric binary: not read
    ],
)
def test_decode_shop(raw: bytes, fmt: int, oid: int, cast: str | None, shop: int | None) -> None:
    assert decode_shop(raw, fmt, oid, cast) == shop


def test_bound_params_formats_and_types() -> None:
    values = (b"1", struct.pack("!i", 5), None)
    ref = ShopRef(param=2)
    assert BoundParams(values, (0, 1), (0, 23)).shop(ref) == 5
    assert BoundParams(values, (1,), (23, 23)).shop(ref) == 5
    assert BoundParams(values, (), ()).shop(ref) is None  # all text: 4 raw bytes are no integer text
    assert BoundParams(values).shop(ShopRef(param=1)) == 1
    assert BoundParams(values).shop(ShopRef(param=3)) is None  # NULL
    assert BoundParams(values).shop(ShopRef(param=4)) is None  # missing
    assert BoundParams(values).shop(ShopRef(param=0)) is None
    assert BoundParams(values).shop(ShopRef(value=8)) == 8
    assert BoundParams(values).shop(ShopRef()) is None


def test_query_shops_only_look_at_tenant_tables() -> None:
    s = stmt("select * from orders o join devices d on d.shop_id = 9 where o.shop_id = $1")
    assert query_shops(s, BoundParams((b"5",)), TENANT).shops == {5}
    assert query_shops(s, None, TENANT).unresolved
    s = stmt("select * from orders o, customers c where o.shop_id = 5")
    shops = query_shops(s, None, TENANT)
    assert shops.shops == {5} and shops.unpinned and not shops.unresolved


def ident(
    sql: str,
    *,
    claims: tuple[Claim | None, ...] = (),
    params: BoundParams | None = None,
    order: tuple[str, ...] = ORDER,
) -> Identification:
    return identify(stmt(sql), order=order, claims=claims, params=params, tenant_tables=TENANT)


def test_query_identifies_a_fully_pinned_statement() -> None:
    assert ident("select * from orders where shop_id = 5") == Identification(5, "query", "identified")
    params = BoundParams((b"6",))
    assert ident("select * from orders where shop_id = $1", params=params) == Identification(
        6, "query", "identified"
    )
    joined = "select * from orders o join customers c on c.shop_id = o.shop_id where o.shop_id = 5"
    assert ident(joined).shop_id == 5


@pytest.mark.parametrize(
    ("sql", "claims", "params", "reason"),
    [
        ("select * from orders", (), None, "no_shop"),
        ("select 1", (), None, "no_shop"),
        ("select * from orders o, customers c where o.shop_id = 5", (), None, "unpinned_table"),
        (
            "select * from orders o, customers c where o.shop_id = 5 and c.shop_id = 6",
            (),
            None,
            "multiple_shops",
        ),
        ("select * from orders where shop_id = 5 and shop_id = 6", (), None, "multiple_shops"),
        ("select * from orders where shop_id = $1", (), None, "unresolved"),
        ("select * from orders where shop_id = $1", (), BoundParams((None,)), "unresolved"),
        ("select * from orders where shop_id = $1", (), BoundParams((b"x",)), "unresolved"),
        ("select * from orders where shop_id = 6", (Claim("set", 5),), None, "conflict"),
        ("select * from orders where shop_id = 6", (Claim("startup", 5),), None, "conflict"),
        ("select * from orders where shop_id = 6", (Claim("comment", 5),), None, "conflict"),
        ("select * from orders", (Claim("startup", 5), Claim("set", 6)), None, "conflict"),
        ("select * from orders", (Claim("set", None),), None, "invalid_claim"),
        ("select * from orders where shop_id = 5", (Claim("comment", None),), None, "invalid_claim"),
    ],
)
def test_no_shop(sql: str, claims: tuple[Claim, ...], params: BoundParams | None, reason: str) -> None:
    assert ident(sql, claims=claims, params=params) == Identification(None, None, reason)


def test_declaration_covers_unpinned_occurrences() -> None:
    result = ident("select * from orders o, customers c where o.shop_id = 5", claims=(Claim("set", 5),))
    assert result == Identification(5, "set", "identified")
    assert ident("select * from orders", claims=(Claim("startup", 3),)) == Identification(
        3, "startup", "identified"
    )


def test_source_is_the_first_listed_source_naming_the_shop() -> None:
    claims = (Claim("startup", 5), Claim("set", 5), Claim("comment", 5))
    sql = "select * from orders where shop_id = 5"
    assert ident(sql, claims=claims).source == "startup"
    assert ident(sql, claims=claims, order=("query", "comment", "set", "startup")).source == "query"
    assert ident(sql, claims=claims, order=("comment", "startup")).source == "comment"
    assert ident(sql, claims=(None, Claim("set", 5), None), order=ORDER).source == "set"


def test_unlisted_sources_are_ignored_but_pins_are_always_checked() -> None:
    sql = "select * from orders where shop_id = 6"
    # startup not listed: its claim of 5 does not matter
    assert ident(sql, claims=(Claim("startup", 5),), order=("set", "query")).shop_id == 6
    # query not listed: the pins are no source...
    assert ident(sql, order=("startup", "set")).reason == "no_shop"
    # ...but they still contradict a declaration
    assert ident(sql, claims=(Claim("set", 5),), order=("set",)).reason == "conflict"
    assert ident(sql, claims=(Claim("set", 6),), order=("set",)) == Identification(6, "set", "identified")


def test_an_array_parameter_pins_any_of_its_shops() -> None:
    stmt = A.parse("select * from orders where shop_id = any($1::int4[])").statements[0]
    (ref,) = stmt.occurrences[0].pins
    assert ref.array and ref.param == 1
    text = BoundParams((b"{3,16}",))
    assert query_shops(stmt, text, TENANT).shops == {3, 16}
    binary = struct.pack("!iiiii", 1, 0, 23, 2, 1) + struct.pack("!ii", 4, 3) + struct.pack("!ii", 4, 16)
    assert query_shops(stmt, BoundParams((binary,), (1,), (1007,)), TENANT).shops == {3, 16}
    unreadable = query_shops(stmt, BoundParams((b"{3,x}",)), TENANT)
    assert unreadable.unresolved and unreadable.covered is None  # never a subset
    assert query_shops(stmt, BoundParams((None,)), TENANT).covered == frozenset()  # = ANY(NULL): no row
