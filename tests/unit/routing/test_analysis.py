"""The analyser on a broad corpus: kinds, tables, pins per table occurrence, read-only, hints, cache."""

from __future__ import annotations

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.model import Analysis, SetShop, ShopRef, StatementAnalysis, TxControl

A = Analyser("shop_id", 1000)


def label(ref: ShopRef) -> object:
    if ref.value is not None:
        return ref.value
    if ref.param is not None:
        return f"${ref.param}"
    return "?"


def pins(stmt: StatementAnalysis) -> list[tuple[str, set[object]]]:
    return [(o.table, {label(r) for r in o.pins}) for o in stmt.occurrences]


def one(sql: str) -> StatementAnalysis:
    analysis = A.parse(sql)
    assert analysis.error is None, analysis.error
    assert len(analysis.statements) == 1
    stmt = analysis.statements[0]
    assert stmt.understood, stmt.note
    return stmt


# (sql, expected pins per occurrence in order of appearance)
READS: list[tuple[str, list[tuple[str, set[object]]]]] = [
    ("select * from orders where shop_id = 5", [("orders", {5})]),
    ("select * from orders o where o.shop_id = 5", [("orders", {5})]),
    ("select * from orders where 5 = shop_id", [("orders", {5})]),
    ("select * from orders where shop_id in (5)", [("orders", {5})]),
    ("select * from orders where shop_id in (5, 6)", [("orders", {5, 6})]),  # any of them
    ("select * from orders where shop_id in (5, $1)", [("orders", {5, "$1"})]),
    ("select * from orders where shop_id in (5, 6 + 1)", [("orders", set())]),  # all known, or none
    ("select * from orders where shop_id = any('{5}')", [("orders", {5})]),
    ("select * from orders where shop_id = any('{5}'::int[])", [("orders", {5})]),
    ("select * from orders where shop_id = any(array[5])", [("orders", {5})]),
    ("select * from orders where shop_id = any('{5,6}')", [("orders", {5, 6})]),
    ("select * from orders where shop_id = any(array[5, 6])", [("orders", {5, 6})]),
    ("select * from orders where shop_id = any($1)", [("orders", {"$1"})]),  # any element of the array
    ("select * from orders where shop_id = '5'::int", [("orders", {5})]),
    ("select * from orders where shop_id = 5::bigint", [("orders", {5})]),
    ("select * from orders where shop_id = cast('5' as integer)", [("orders", {5})]),
    ("select * from orders where shop_id = '5'", [("orders", {5})]),
    ("select * from orders where shop_id = ' 5 '", [("orders", {5})]),
    ("select * from orders where shop_id = 0", [("orders", {0})]),
    ("select * from orders where shop_id = -3", [("orders", {-3})]),
    ("select * from orders where shop_id = 9999999999", [("orders", {9999999999})]),
    ("select * from orders where shop_id = $1", [("orders", {"$1"})]),
    ("select * from orders where shop_id operator(pg_catalog.=) 5", [("orders", {5})]),
    ("select * from orders where shop_id is not distinct from 5", [("orders", {5})]),
    ("select * from orders where shop_id = 5.0", [("orders", set())]),
    ("select * from orders where shop_id = null", [("orders", set())]),
    ("select * from orders where shop_id = 'abc'", [("orders", set())]),
    ("select * from orders where shop_id = 2 + 3", [("orders", set())]),
    ("select * from orders where shop_id = (select 5)", [("orders", set())]),
    ("select * from orders where shop_id <> 5", [("orders", set())]),
    ("select * from orders where shop_id > 5", [("orders", set())]),
    ("select * from orders where shop_id::text = '5'", [("orders", set())]),
    ("select * from orders where not (shop_id = 5)", [("orders", set())]),
    ("select * from orders where shop_id = 5 or shop_id = 6", [("orders", set())]),
    ("select * from orders where shop_id = 5 or total > 1", [("orders", set())]),
    ("select * from orders where shop_id = 5 and (total > 1 or id = 2)", [("orders", {5})]),
    ("select * from orders where (total > 1 and (shop_id = 5 and id = 2))", [("orders", {5})]),
    ("select * from orders where shop_id = 5 and shop_id = 6", [("orders", {5, 6})]),
    ("select * from orders group by shop_id having shop_id = 5", [("orders", set())]),
    ("select * from public.orders where public.orders.shop_id = 5", [("public.orders", {5})]),
    ("select * from public.orders where orders.shop_id = 5", [("public.orders", {5})]),
    ("select * from public.orders where shop_id = 5", [("public.orders", {5})]),
    ('select * from "Orders" "O" where "O".shop_id = 5', [("Orders", {5})]),
    ('select * from orders where "shop_id" = 5', [("orders", {5})]),
    ('select * from orders where "Shop_Id" = 5', [("orders", set())]),
    ("select * from orders o where orders.shop_id = 5", [("orders", set())]),
    ("select * from orders, customers where shop_id = 5", [("orders", set()), ("customers", set())]),
    # joins
    (
        "select * from orders o join customers c on c.id = o.customer_id where o.shop_id = 5",
        [("orders", {5}), ("customers", set())],
    ),
    (
        "select * from orders o join customers c on c.id = o.cid and c.shop_id = o.shop_id where "
        "o.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o, customers c where o.shop_id = 5 and c.shop_id = o.shop_id",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o, customers c where o.shop_id = 5 and c.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o, customers c where o.shop_id = 5 and c.shop_id = 6",
        [("orders", {5}), ("customers", {6})],
    ),
    (
        "select * from orders o join customers c using (shop_id) where o.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders join customers using (shop_id) where shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders natural join customers where shop_id = 5",
        [("orders", set()), ("customers", set())],
    ),
    (
        "select * from orders o left join customers c on c.shop_id = o.shop_id where o.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o left join customers c on c.id = o.cid and o.shop_id = 5",
        [("orders", set()), ("customers", set())],
    ),
    (
        "select * from orders o left join customers c on c.id = o.cid and c.shop_id = 5",
        [("orders", set()), ("customers", {5})],
    ),
    (
        "select * from orders o left join customers c on c.shop_id = o.shop_id where c.shop_id = 5",
        [("orders", set()), ("customers", {5})],
    ),
    (
        "select * from orders o right join customers c on c.shop_id = o.shop_id where c.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o full join customers c on c.shop_id = o.shop_id where o.shop_id = 5",
        [("orders", {5}), ("customers", set())],
    ),
    (
        "select * from orders o left join customers c using (shop_id) where o.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o cross join customers c where o.shop_id = 5",
        [("orders", {5}), ("customers", set())],
    ),
    (
        "select * from (orders o join customers c using (shop_id)) j where j.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o join (customers c join devices d on d.shop_id = c.shop_id) "
        "on c.shop_id = o.shop_id where o.shop_id = $2",
        [("orders", {"$2"}), ("customers", {"$2"}), ("devices", {"$2"})],
    ),
    # subqueries and correlation
    (
        "select * from orders where shop_id = 5 and customer_id in (select id from customers where "
        "shop_id = 5)",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders where shop_id = 5 and customer_id in (select id from customers)",
        [("orders", {5}), ("customers", set())],
    ),
    (
        "select * from orders o where o.shop_id = 5 and exists "
        "(select 1 from customers c where c.id = o.cid and c.shop_id = o.shop_id)",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o where o.shop_id = 5 and not exists "
        "(select 1 from customers c where c.shop_id = o.shop_id)",
        [("orders", {5}), ("customers", {5})],
    ),
    (  # a subquery's condition never pins the outer query (conservative)
        "select * from orders o where exists (select 1 from customers c where c.shop_id = 5 and "
        "c.shop_id = o.shop_id)",
        [("orders", set()), ("customers", {5})],
    ),
    (
        "select * from orders o where exists (select 1 from customers c where o.shop_id = 5)",
        [("orders", set()), ("customers", set())],
    ),
    (  # an unqualified column in a one-table subquery is that table's
        "select * from orders o where o.shop_id = 5 and exists (select 1 from customers where shop_id = 5)",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select (select count(*) from customers c where c.shop_id = o.shop_id) from orders o where "
        "o.shop_id = 5",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "select * from orders o, lateral (select * from items i where i.order_id = o.id "
        "and i.shop_id = o.shop_id) x where o.shop_id = 5",
        [("orders", {5}), ("items", {5})],
    ),
    ("select * from (select * from orders where shop_id = 5) s", [("orders", {5})]),
    ("select * from (select * from orders) s where s.shop_id = 5", [("orders", set())]),
    # CTEs and set operations
    ("with x as (select * from orders where shop_id = 5) select * from x", [("orders", {5})]),
    ("with x as (select * from orders) select * from x where shop_id = 5", [("orders", set())]),
    ("with orders as (select 1 as shop_id) select * from orders where shop_id = 5", []),
    (
        "with a as (select * from orders where shop_id = 5), b as (select * from a join customers c "
        "on c.shop_id = 5) select * from b",
        [("orders", {5}), ("customers", {5})],
    ),
    (
        "with recursive r as (select id, parent_id from categories where shop_id = 5 union all "
        "select c.id, c.parent_id from categories c join r on c.parent_id = r.id) select * from r",
        [("categories", {5}), ("categories", set())],
    ),
    (
        "select id from orders where shop_id = 5 union select id from invoices where shop_id = 5",
        [("orders", {5}), ("invoices", {5})],
    ),
    (
        "select id from orders where shop_id = 5 union all select id from invoices order by 1 limit 3",
        [("orders", {5}), ("invoices", set())],
    ),
    (
        "(select id from orders where shop_id = $1) except (select id from invoices where shop_id = $1)",
        [("orders", {"$1"}), ("invoices", {"$1"})],
    ),
    # pins flow out of a CTE or subquery whose shop_id column is plainly a table's, never into it
    (
        "with recent as (select * from repairs where shop_id = $1) select r.* from recent r where exists "
        "(select 1 from devices d where d.repair_id = r.id and d.shop_id = r.shop_id)",
        [("repairs", {"$1"}), ("devices", {"$1"})],
    ),
    (
        "select * from (select id, shop_id from orders where shop_id = 5) s join items i on "
        "i.shop_id = s.shop_id",
        [("orders", {5}), ("items", {5})],
    ),
    (
        "with c as (select o.shop_id, count(*) from orders o where o.shop_id = 5 group by o.shop_id) "
        "select * from c join items i using (shop_id)",
        [("orders", {5}), ("items", {5})],
    ),
    (
        "with a as (select * from orders where shop_id = 5), b as (select * from a) "
        "select * from b join items i on i.shop_id = b.shop_id",
        [("orders", {5}), ("items", {5})],
    ),
    (
        "select * from (select * from orders where shop_id = 5) s left join items i on i.shop_id = s.shop_id",
        [("orders", {5}), ("items", {5})],
    ),
    (
        "select * from customers c left join (select * from orders where shop_id = 5) s on "
        "s.shop_id = c.shop_id",
        [("customers", set()), ("orders", {5})],
    ),
    (
        "with c as (select * from orders) select * from c join items i on i.shop_id = c.shop_id "
        "where i.shop_id = 5",
        [("orders", set()), ("items", {5})],
    ),
    (
        "select * from (select min(shop_id) as shop_id from orders where shop_id = 5) s "
        "join items i on i.shop_id = s.shop_id",
        [("orders", {5}), ("items", set())],
    ),
    (
        "select * from (select o.customer_id as shop_id from orders o where o.shop_id = 5) s "
        "join items i on i.shop_id = s.shop_id",
        [("orders", {5}), ("items", set())],
    ),
    (
        "select * from (select * from orders o join items i on i.id = o.id where o.shop_id = 5) s "
        "join customers c on c.shop_id = s.shop_id",
        [("orders", {5}), ("items", set()), ("customers", set())],
    ),
    (
        "select * from (select shop_id from orders where shop_id = 5 union select shop_id from items "
        "where shop_id = 5) s join customers c on c.shop_id = s.shop_id",
        [("orders", {5}), ("items", {5}), ("customers", set())],
    ),
    (
        "with recursive r as (select * from categories where shop_id = 5 union all select c.* from "
        "categories c "
        "join r on c.parent_id = r.id) select * from r join items i on i.shop_id = r.shop_id",
        [("categories", {5}), ("categories", set()), ("items", set())],
    ),
    ("values (1), (2)", []),
    ("select 1", []),
    ("select * from generate_series(1, 3) g(x)", []),
    ("select * from only orders where shop_id = 5", [("orders", {5})]),
    (
        "select lower(name), count(*), now(), coalesce(total, 0), extract(year from created_at), "
        "date_trunc('day', created_at), greatest(1, 2), current_date from orders where shop_id = 5 "
        "group by 1, 3, 4, 5, 6 order by 2 desc limit 10 offset 5",
        [("orders", {5})],
    ),
]


@pytest.mark.parametrize(("sql", "expected"), READS)
def test_read_pins(sql: str, expected: list[tuple[str, set[object]]]) -> None:
    stmt = one(sql)
    assert stmt.kind == "select"
    assert stmt.read_only, stmt
    assert pins(stmt) == expected


def test_param_cast_is_recorded_for_binary_decoding() -> None:
    (occ,) = one("select * from orders where shop_id = $1::int8").occurrences
    assert occ.pins == frozenset({ShopRef(param=1, cast="int8")})
    (occ,) = one("select * from orders where shop_id = $2::text::int").occurrences
    assert occ.pins == frozenset({ShopRef(param=2, cast="text")})


def test_shop_refs_list_every_pinning_equality() -> None:
    stmt = one("select * from orders o join customers c on c.shop_id = 5 where o.shop_id = $1")
    assert [label(r) for r in stmt.shop_refs] == [5, "$1"]
    assert stmt.tables == ("orders", "customers")


WRITES: list[tuple[str, str, list[tuple[str, set[object]]], list[object]]] = [
    ("insert into orders (id, shop_id) values (1, 5)", "insert", [("orders", {5})], [5]),
    (
        "insert into orders (id, shop_id) values (1, 5), (2, 5), (3, 6)",
        "insert",
        [("orders", {5, 6})],
        [5, 5, 6],
    ),
    ("insert into orders (id, shop_id) values ($1, $2)", "insert", [("orders", {"$2"})], ["$2"]),
    ("insert into orders values (1, 5)", "insert", [("orders", set())], []),
    ("insert into orders (id, shop_id) values (1, 2 + 3)", "insert", [("orders", {"?"})], ["?"]),
    ("insert into orders (id, shop_id) values (1, default)", "insert", [("orders", {"?"})], ["?"]),
    ("insert into orders (id) values (1)", "insert", [("orders", set())], []),
    ("insert into orders default values", "insert", [("orders", set())], []),
    (
        "insert into orders (shop_id, id) select 5, id from staging",
        "insert",
        [("orders", {5}), ("staging", set())],
        [5],
    ),
    (
        "insert into orders (shop_id, id) select s.shop_id, s.id from staging s where s.shop_id = 7",
        "insert",
        [("orders", {7}), ("staging", {7})],
        [7],
    ),
    (
        "insert into orders (id, shop_id) values (1, 5) on conflict (id) do update "
        "set shop_id = excluded.shop_id, total = excluded.total",
        "insert",
        [("orders", {5})],
        [5],
    ),
    (
        "insert into orders (id, shop_id) values (1, 5) on conflict (id) do update set shop_id = 6",
        "insert",
        [("orders", {5, 6})],
        [5, 6],
    ),
    ("update orders set total = 1 where shop_id = 5", "update", [("orders", {5})], [5]),
    (
        "update orders o set total = 1 from customers c where c.id = o.cid and o.shop_id = $1",
        "update",
        [("orders", {"$1"}), ("customers", set())],
        ["$1"],
    ),
    ("update orders set shop_id = 6 where shop_id = 5", "update", [("orders", {5, 6})], [5, 6]),
    ("update orders set shop_id = shop_id where shop_id = 5", "update", [("orders", {5})], [5]),
    ("update orders set total = 0", "update", [("orders", set())], []),
    ("delete from orders where shop_id = 5 returning *", "delete", [("orders", {5})], [5]),
    (
        "delete from orders o using customers c where c.id = o.cid and o.shop_id = 5 and c.shop_id = 5",
        "delete",
        [("orders", {5}), ("customers", {5})],
        [5, 5],
    ),
    (
        "with d as (delete from orders where shop_id = 5 returning *) select * from d",
        "select",
        [("orders", {5})],
        [5],
    ),
    (
        "with u as (update orders set total = 0 where shop_id = 5 returning id) select * from u",
        "select",
        [("orders", {5})],
        [5],
    ),
    (
        "with i as (insert into audit (shop_id) values (5) returning id) select * from orders "
        "where shop_id = 5",
        "select",
        [("audit", {5}), ("orders", {5})],
        [5, 5],
    ),
    (
        "select * into backup from orders where shop_id = 5",
        "select",
        [("orders", {5}), ("backup", set())],
        [5],
    ),
    (
        "with s as (select * from staging where shop_id = 7) insert into orders (shop_id, id) "
        "select s.shop_id, s.id from s",
        "insert",
        [("staging", {7}), ("orders", {7})],
        [7],
    ),
]


@pytest.mark.parametrize(("sql", "kind", "expected", "refs"), WRITES)
def test_writes(sql: str, kind: str, expected: list[tuple[str, set[object]]], refs: list[object]) -> None:
    stmt = one(sql)
    assert stmt.kind == kind
    assert stmt.has_write and not stmt.read_only
    assert pins(stmt) == expected
    assert [label(r) for r in stmt.shop_refs] == refs


def test_written_occurrences_are_flagged() -> None:
    stmt = one("update orders o set total = 1 from customers c where c.id = o.cid")
    assert [(o.table, o.written) for o in stmt.occurrences] == [("orders", True), ("customers", False)]


@pytest.mark.parametrize(
    "sql",
    [
        "select * from orders where shop_id = 5 for update",
        "select * from orders where shop_id = 5 for share",
        "select * from orders where shop_id = 5 for no key update",
        "select * from orders where shop_id = 5 for key share",
        "select * from orders o where o.shop_id = 5 for update of o skip locked",
        "select * from (select * from orders where shop_id = 5 for update) s",
        "select * from orders where shop_id = 5 and id in (select id from items for share)",
    ],
)
def test_locking_is_not_read_only(sql: str) -> None:
    stmt = one(sql)
    assert stmt.has_locking and not stmt.read_only
    assert stmt.occurrences[0].pins  # still analysed


@pytest.mark.parametrize(
    ("sql", "unsafe"),
    [
        ("select nextval('orders_id_seq')", ("nextval",)),
        ("select *, random() from orders where shop_id = 5", ("random",)),
        ("select pg_advisory_lock(1)", ("pg_advisory_lock",)),
        ("select pg_sleep(1)", ("pg_sleep",)),
        ("select my_func(id) from orders where shop_id = 5", ("my_func",)),
        ("select public.lower(name) from orders where shop_id = 5", ("public.lower",)),
        ("select * from orders where shop_id = 5 and total > my_threshold()", ("my_threshold",)),
        ("select txid_current()", ("txid_current",)),
        ("select set_config('app.x', '1', false)", ("set_config",)),
        ("select current_setting('app.x')", ("current_setting",)),
        ("select lo_import('/etc/passwd')", ("lo_import",)),
        ("select * from dblink('x', 'select 1') as t(a int)", ("dblink",)),
        ("select current_user, session_user", ("current_user", "session_user")),
        ("select ctid, xmin from orders where shop_id = 5", ("ctid", "xmin")),
        ("select 'orders'::regclass", ("::regclass",)),
        ("select gen_random_uuid()", ("gen_random_uuid",)),
        ("select clock_timestamp()", ("clock_timestamp",)),
        ("select * from orders where shop_id = 5 and id = (select max(id) from f(1))", ("f",)),
    ],
)
def test_functions_outside_the_allow_list(sql: str, unsafe: tuple[str, ...]) -> None:
    stmt = one(sql)
    assert stmt.unsafe == unsafe
    assert not stmt.read_only


def test_allow_listed_functions_keep_read_only() -> None:
    stmt = one(
        "select pg_catalog.lower(name), upper(name), string_agg(name, ','), row_number() over "
        "(partition by customer_id order by id), json_build_object('a', 1), to_char(created_at, 'YYYY') "
        "from orders where shop_id = 5 and created_at > now() - interval '1 day' and current_date "
        "> '2020-01-01'"
    )
    assert stmt.unsafe == () and stmt.read_only


def test_set_config_of_the_shop_setting_is_a_set() -> None:
    stmt = one("select set_config('pgtenantproxy.shop_id', '5', false)")
    assert stmt.set_shop == SetShop("set", 5, False)
    assert not stmt.read_only
    assert one("select set_config('pgtenantproxy.shop_id', '5', true)").set_shop == SetShop("set", 5, True)
    assert one("select set_config($1, $2, false)").set_shop == SetShop("unknown")
    assert one("select set_config('pgtenantproxy.shop_id', $1, false)").set_shop == SetShop("unknown")
    assert one("select set_config('search_path', 'x', false)").set_shop is None


@pytest.mark.parametrize(
    ("sql", "change"),
    [
        ("set pgtenantproxy.shop_id = 5", SetShop("set", 5, False)),
        ("set session pgtenantproxy.shop_id to '5'", SetShop("set", 5, False)),
        ("set local pgtenantproxy.shop_id to 7", SetShop("set", 7, True)),
        ("SET PgTenantProxy.Shop_Id = 5", SetShop("set", 5, False)),
        ("set pgtenantproxy.shop_id = 'abc'", SetShop("set", None, False)),
        ("set pgtenantproxy.shop_id = ''", SetShop("set", None, False)),
        ("set pgtenantproxy.shop_id = 5, 6", SetShop("set", None, False)),
        ("reset pgtenantproxy.shop_id", SetShop("reset")),
        ("set pgtenantproxy.shop_id to default", SetShop("reset")),
        ("set local pgtenantproxy.shop_id to default", SetShop("reset", local=True)),
        ("reset all", SetShop("reset")),
        ("discard all", SetShop("reset")),
        ("set search_path = app", None),
        ("set other.shop_id = 5", None),
        ("discard plans", None),
    ],
)
def test_set_shop(sql: str, change: SetShop | None) -> None:
    stmt = one(sql)
    assert stmt.set_shop == change
    assert not stmt.read_only


@pytest.mark.parametrize(
    ("sql", "setting"),
    [
        ("set search_path = app, public", "search_path"),
        ("SET Search_Path TO app", "search_path"),
        ("set local statement_timeout = 0", "statement_timeout"),
        ("reset all", "all"),
        ("set transaction isolation level serializable", "transaction"),
        ("set time zone 'UTC'", "timezone"),
    ],
)
def test_set_names_the_setting(sql: str, setting: str) -> None:
    assert one(sql).setting == setting


@pytest.mark.parametrize(
    ("sql", "tx"),
    [
        ("begin", TxControl("begin")),
        ("start transaction isolation level serializable", TxControl("begin")),
        ("commit", TxControl("commit")),
        ("end", TxControl("commit")),
        ("commit and chain", TxControl("commit", chain=True)),
        ("rollback", TxControl("rollback")),
        ("abort", TxControl("rollback")),
        ("savepoint a", TxControl("savepoint", "a")),
        ("release savepoint a", TxControl("release", "a")),
        ("rollback to savepoint a", TxControl("rollback_to", "a")),
        ("prepare transaction 'x'", TxControl("prepare")),
        ("commit prepared 'x'", TxControl("other")),
    ],
)
def test_transaction_control(sql: str, tx: TxControl) -> None:
    stmt = one(sql)
    assert stmt.kind == "transaction" and stmt.tx == tx


@pytest.mark.parametrize(
    ("sql", "kind", "has_write", "tables"),
    [
        ("show pgtenantproxy.shop_id", "show", False, ()),
        ("create table x (id int references orders (id))", "ddl", True, ("x", "orders")),
        ("alter table orders add column y int", "ddl", True, ("orders",)),
        ("truncate orders, items", "ddl", True, ("orders", "items")),
        ("create index on orders (shop_id)", "ddl", True, ("orders",)),
        ("create table x as select * from orders where shop_id = 5", "ddl", True, ("orders", "x")),
        ("explain select * from orders where shop_id = 5", "other", False, ("orders",)),
        ("explain analyze delete from orders", "other", True, ("orders",)),
        ("copy orders from stdin", "other", True, ("orders",)),
        ("copy orders to stdout", "other", False, ("orders",)),
        ("copy (select * from orders where shop_id = 5) to stdout", "other", False, ("orders",)),
        ("call refresh_totals(5)", "other", True, ()),
        ("do $$ begin perform 1; end $$", "other", True, ()),
        ("execute my_plan(5)", "other", True, ()),
        ("prepare p as delete from orders where shop_id = $1", "other", False, ("orders",)),
        ("declare c cursor for select * from orders where shop_id = 5", "other", False, ("orders",)),
        ("lock table orders", "other", False, ("orders",)),
        ("listen x", "other", False, ()),
        ("notify x", "other", False, ()),
        ("vacuum orders", "other", False, ("orders",)),
        (
            "merge into orders o using staging s on s.id = o.id when matched then update set total = s.total",
            "other",
            True,
            ("orders", "staging"),
        ),
    ],
)
def test_other_statements(sql: str, kind: str, has_write: bool, tables: tuple[str, ...]) -> None:
    stmt = one(sql)
    assert (stmt.kind, stmt.has_write, stmt.tables) == (kind, has_write, tables)
    assert not stmt.read_only


def test_lock_statement_locks() -> None:
    assert one("lock table orders in exclusive mode").has_locking


@pytest.mark.parametrize(
    ("sql", "temp"),
    [
        ("create temp table orders (id int)", ("orders",)),
        ("create temporary table t2 as select 1", ("t2",)),
        ("select * into temp t3 from orders", ("t3",)),
        ("create temp view v as select 1", ("v",)),
        ("create table t4 (id int)", ()),
    ],
)
def test_temp_tables_are_reported(sql: str, temp: tuple[str, ...]) -> None:
    assert one(sql).temp_tables == temp


@pytest.mark.parametrize(
    "sql",
    [
        "select * from orders tablesample system (10) where shop_id = 5",
        "select * from orders where shop_id = 5 and x in (select * from pg_catalog.pg_class "
        "tablesample bernoulli(1))",
    ],
)
def test_unmodelled_constructs_are_not_understood(sql: str) -> None:
    analysis = A.parse(sql)
    assert not analysis.understood
    assert not analysis.statements[0].read_only


def test_parse_error_is_not_understood() -> None:
    analysis = A.parse("selec * from orders")
    assert not analysis.understood
    assert analysis.error is not None and "syntax error" in analysis.error
    assert [s.understood for s in analysis.statements] == [False]
    assert analysis.fingerprint is None


def test_deeply_nested_sql_does_not_raise() -> None:
    analysis = A.parse("select " + "(" * 3000 + "1" + ")" * 3000)
    assert isinstance(analysis, Analysis)
    nested = A.parse("select * from orders where shop_id = 5 and total = " + "1 + " * 3000 + "1")
    assert not nested.understood and nested.error is not None
    deep = A.parse("select * from orders where shop_id = 5 and " + " and ".join(["x = 1"] * 2000))
    assert deep.understood  # AND lists are flat: long ones are fine


def test_multi_statement_text() -> None:
    analysis = A.parse(
        "select 1; select * from orders where shop_id = 5; update orders set x = 1 where shop_id = 6"
    )
    assert analysis.kinds == ("select", "select", "update")
    assert analysis.tables == ("orders",)
    assert [label(r) for r in analysis.shop_refs] == [5, 6]
    assert not analysis.read_only and analysis.has_write


def test_empty_text_has_no_statements() -> None:
    for sql in ("", ";", "  ; ;", "/* nothing */"):
        analysis = A.parse(sql)
        assert analysis.statements == () and analysis.understood and not analysis.read_only


@pytest.mark.parametrize(
    ("sql", "shops"),
    [
        ("select 1 /* shop_id=5 */", {5}),
        ("/* shop_id = 5 */ select 1", {5}),
        ("-- shop_id=7\nselect 1", {7}),
        ("/* app=x, pgtenantproxy.shop_id=8 */ select 1", {8}),
        ("/* SHOP_ID='9' */ select 1", {9}),
        ("/* shop_id=5 */ select 1 /* shop_id=6 */", {5, 6}),
        ("select '/* shop_id=5 */'", set()),
        ("select 1 where 'a' = '-- shop_id=5'", set()),
        ("/* myshop_id=5 */ select 1", set()),
        ("/* shop_id=5x */ select 1", set()),
        ("/* shop_id=abc */ select 1", set()),
        ("select 1", set()),
    ],
)
def test_comment_hints(sql: str, shops: set[int]) -> None:
    assert A.parse(sql).comment_shops == frozenset(shops)


def test_comment_hint_with_a_custom_tenant_column() -> None:
    analyser = Analyser("tenant_id", 10)
    assert analyser.parse("/* tenant_id=4 */ select 1").comment_shops == {4}
    assert analyser.parse("/* shop_id=4 */ select 1").comment_shops == {4}
    stmt = analyser.parse("select * from orders where tenant_id = 3 and shop_id = 4").statements[0]
    assert pins(stmt) == [("orders", {3})]


def test_fingerprint_ignores_values() -> None:
    a = A.parse("select * from orders where shop_id = 5")
    b = A.parse("select * from orders where shop_id = 6")
    c = A.parse("select * from orders where shop_id = 5 and total = 1")
    assert a.fingerprint and a.fingerprint == b.fingerprint != c.fingerprint


def test_cache_hits_and_lru_eviction() -> None:
    analyser = Analyser(cache_size=2)
    first = analyser.analyse("select 1")
    assert analyser.analyse("select 1") is first
    assert (analyser.stats.hits, analyser.stats.misses) == (1, 1)
    analyser.analyse("select 2")
    analyser.analyse("select 1")  # most recently used now
    analyser.analyse("select 3")  # evicts "select 2"
    assert analyser.stats.size == 2
    misses = analyser.stats.misses
    assert analyser.analyse("select 1") is first
    analyser.analyse("select 2")
    assert analyser.stats.misses == misses + 1


def test_overlong_sql_is_not_parsed_or_cached() -> None:
    analyser = Analyser(max_sql_length=100)
    sql = "select * from orders where shop_id = 5 and note = '" + "x" * 200 + "'"
    analysis = analyser.analyse(sql)
    assert not analysis.understood and analysis.error is not None
    analyser.analyse(sql)
    assert analyser.stats.size == 0 and analyser.stats.misses == 2


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Analyser(cache_size=0)
