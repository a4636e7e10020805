"""The safety rule: only a single-shop read of tenant tables, outside a block, may go to a tenant.

Every case runs with strategy ``tenant`` and every shop eligible, so nothing
but the rule itself can keep a unit on unified.
"""

from __future__ import annotations

import struct

import pytest

from pgtenantproxy.config import parse_config
from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.decision import Route, decide, statement_obstacle, written_shops
from pgtenantproxy.routing.identify import BoundParams, Claim, Identification
from pgtenantproxy.routing.router import BatchItem, Router
from pgtenantproxy.routing.session_shop import SessionShop
from pgtenantproxy.routing.strategy import Strategy, Verdict

TENANT = frozenset({"orders", "customers", "items", "public.repairs"})
ALL = frozenset(range(0, 100))
IDLE, IN_BLOCK, FAILED = ord("I"), ord("T"), ord("E")
ROUTER = Router(Analyser(), Strategy("tenant"))


def route(
    *sqls: str,
    params: tuple[BoundParams | None, ...] = (),
    tx_status: int = IDLE,
    startup: Claim | None = None,
    session: SessionShop | None = None,
    router: Router = ROUTER,
    shadowed: frozenset[str] = frozenset(),
) -> Route:
    items = [BatchItem(sql, params[i] if i < len(params) else None) for i, sql in enumerate(sqls)]
    return router.route(
        items,
        tx_status=tx_status,
        tenant_tables=TENANT,
        eligible=ALL,
        startup=startup,
        session=session,
        shadowed=shadowed,
    ).route


TO_TENANT: list[tuple[str, int]] = [
    ("select * from orders where shop_id = 5", 5),
    ("select * from public.orders where shop_id = 5", 5),
    ("select * from repairs where shop_id = 5", 5),
    (
        "select count(*) from orders o join customers c on c.id = o.cid and c.shop_id = o.shop_id "
        "where o.shop_id = 7",
        7,
    ),
    (
        "select * from orders where shop_id = 5 and customer_id in (select id from customers where "
        "shop_id = 5)",
        5,
    ),
    ("with x as (select * from orders where shop_id = 3) select * from x", 3),
    ("select id from orders where shop_id = 5 union select id from items where shop_id = 5", 5),
    ("select * from orders where shop_id = 5; select * from items where shop_id = 5", 5),
    ("select * from orders where shop_id in ('5')", 5),
    ("/* shop_id=5 */ select * from orders where shop_id = 5", 5),
]


@pytest.mark.parametrize(("sql", "shop"), TO_TENANT)
def test_single_shop_reads_go_to_tenant(sql: str, shop: int) -> None:
    assert route(sql) == Route("tenant", shop, "tenant", "comment" if "/*" in sql else "query")


# The list, and more: (sql, reason). None of these may ever reach a tenant.
TO_UNIFIED: list[tuple[str, str]] = [
    ("insert into orders (id, shop_id) values (1, 5)", "write"),
    ("update orders set total = 1 where shop_id = 5", "write"),
    ("delete from orders where shop_id = 5", "write"),
    ("merge into orders o using items i on i.id = o.id when matched then delete", "write"),
    ("select * from orders where shop_id = 5 for update", "locking"),
    ("select * from orders where shop_id = 5 for share", "locking"),
    ("select * from orders where shop_id = 5 for no key update", "locking"),
    ("select nextval('orders_id_seq') from orders where shop_id = 5", "volatile_function"),
    ("select *, random() from orders where shop_id = 5", "volatile_function"),
    ("select pg_advisory_lock(5) from orders where shop_id = 5", "volatile_function"),
    ("select current_user, * from orders where shop_id = 5", "volatile_function"),
    ("select ctid from orders where shop_id = 5", "system_column"),
    ("with d as (delete from orders where shop_id = 5 returning *) select * from d", "write"),
    ("with d as (insert into items (shop_id) values (5) returning *) select * from d", "write"),
    ("select * into copy_of_orders from orders where shop_id = 5", "write"),
    ("begin", "transaction_block"),
    ("begin; select * from orders where shop_id = 5; commit", "transaction_block"),
    ("select * from orders where shop_id = 5; commit", "transaction_block"),
    ("select * from orders o join devices d on d.id = o.device_id where o.shop_id = 5", "global_table"),
    ("select * from orders where shop_id = 5 and device_id in (select id from devices)", "global_table"),
    ("select * from pg_class, orders where shop_id = 5", "global_table"),
    ("select * from orders o, customers c where o.shop_id = 5 and c.shop_id = 6", "multiple_shops"),
    ("select * from orders where shop_id = 5 and shop_id = 6", "multiple_shops"),
    ("select * from orders where shop_id = 5; select * from orders where shop_id = 6", "multiple_shops"),
    ("select * from orders where shop_id = 5 or shop_id = 6", "no_shop"),
    ("select * from orders where shop_id in (5, 6)", "multiple_shops"),
    ("select * from orders", "no_shop"),
    ("select * from orders o, customers c where o.shop_id = 5", "unpinned_table"),
    (
        "select * from orders where shop_id = 5 and customer_id in (select id from customers)",
        "unpinned_table",
    ),
    ("select * from orders where shop_id = $1", "unresolved"),
    ("/* shop_id=6 */ select * from orders where shop_id = 5", "conflict"),
    ("select 1", "no_tenant_table"),
    ("select * from orders where shop_id = 5 and false; select 1", "no_tenant_table"),
    ("values (5)", "no_tenant_table"),
    ("create table x (id int)", "ddl"),
    ("truncate orders", "ddl"),
    ("set pgtenantproxy.shop_id = 5", "not_a_read"),
    ("set search_path = x; select * from orders where shop_id = 5", "not_a_read"),
    ("show search_path", "not_a_read"),
    ("explain select * from orders where shop_id = 5", "not_a_read"),
    ("copy (select * from orders where shop_id = 5) to stdout", "not_a_read"),
    ("declare c cursor with hold for select * from orders where shop_id = 5", "not_a_read"),
    ("selec * from orders where shop_id = 5", "not_understood"),
    ("select * from orders tablesample system (50) where shop_id = 5", "not_understood"),
    ("", "empty"),
]


@pytest.mark.parametrize(("sql", "reason"), TO_UNIFIED)
def test_everything_else_goes_to_unified(sql: str, reason: str) -> None:
    result = route(sql)
    assert not result.tenant
    assert result.reason == reason


@pytest.mark.parametrize("status", [IN_BLOCK, FAILED])
def test_transaction_block_status(status: int) -> None:
    assert route("select * from orders where shop_id = 5", tx_status=status) == Route(
        "unified", 5, "transaction_block", "query"
    )


def test_unified_route_keeps_the_identified_shop() -> None:
    assert route("update orders set total = 1 where shop_id = 5") == Route("unified", 5, "write", "query")
    assert route("select * from orders o join devices d on true where o.shop_id = 5").shop_id == 5


def test_extended_batch_with_bound_parameters() -> None:
    sql = "select * from orders where shop_id = $1"
    five = BoundParams((b"5",))
    binary_five = BoundParams((struct.pack("!i", 5),), (1,))
    six = BoundParams((b"6",))
    assert route(sql, params=(five,)) == Route("tenant", 5, "tenant", "query")
    assert route(sql, sql, params=(five, binary_five)) == Route("tenant", 5, "tenant", "query")
    assert route(sql, sql, params=(five, six)).reason == "multiple_shops"
    assert route(sql, "insert into items (shop_id) values ($1)", params=(five, five)).reason == "write"
    assert route(sql, params=(BoundParams((None,)),)).reason == "unresolved"


def test_set_then_a_query_of_another_shop_is_a_conflict() -> None:
    """The issue's case: SET shop 5, then a predicate on shop 6 -> unified, never 5 nor 6."""
    session = SessionShop()
    session.before_batch(ROUTER.analyser.analyse("set pgtenantproxy.shop_id = 5").statements)
    session.on_ready(IDLE, error=False)
    result = route("select * from orders where shop_id = 6", session=session)
    assert result == Route("unified", None, "conflict", None)
    assert route("select * from orders where shop_id = 5", session=session) == Route(
        "tenant", 5, "tenant", "set"
    )
    assert route("select * from orders", session=session) == Route("tenant", 5, "tenant", "set")


def test_startup_claim() -> None:
    assert route("select * from orders", startup=Claim("startup", 4)) == Route(
        "tenant", 4, "tenant", "startup"
    )
    assert route("select * from orders where shop_id = 3", startup=Claim("startup", 4)).reason == "conflict"
    assert route("select * from orders", startup=Claim("startup", None)).reason == "invalid_claim"
    # a declaration never makes a global table or a write safe
    assert route("select * from devices", startup=Claim("startup", 4)).reason == "global_table"
    assert route("delete from orders", startup=Claim("startup", 4)).reason == "write"


def test_temporary_tables_shadowing_tenant_tables() -> None:
    result = route("select * from orders where shop_id = 5", shadowed=frozenset({"orders"}))
    assert result.reason == "temp_table"
    assert route("select * from public.orders where shop_id = 5", shadowed=frozenset({"orders"})).tenant


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        (Strategy(), "strategy:strategy_unified"),
        (Strategy("tenant", enable_tenant_reads=False), "strategy:tenant_reads_disabled"),
        (Strategy("shop-list", shop_ids=frozenset({6})), "strategy:not_selected"),
        (Strategy("tenant", deactivated=frozenset({5})), "strategy:deactivated"),
    ],
)
def test_strategy_says_no(strategy: Strategy, reason: str) -> None:
    router = Router(ROUTER.analyser, strategy)
    assert route("select * from orders where shop_id = 5", router=router) == Route(
        "unified", 5, reason, "query"
    )


def test_not_eligible() -> None:
    unit = ROUTER.route(
        [BatchItem("select * from orders where shop_id = 5")],
        tx_status=IDLE,
        tenant_tables=TENANT,
        eligible={6},
    )
    assert unit.route == Route("unified", 5, "strategy:not_eligible", "query")


def test_decide_directly() -> None:
    analysis = ROUTER.analyser.analyse("select * from orders where shop_id = 5")
    ident = Identification(5, "query", "identified")
    verdicts: list[int] = []

    def verdict(shop: int) -> Verdict:
        verdicts.append(shop)
        return Verdict(True, "tenant")

    kwargs = {"tx_status": IDLE, "tenant_tables": TENANT, "verdict": verdict}
    assert decide(analysis.statements, [ident], **kwargs) == Route("tenant", 5, "tenant", "query")  # type: ignore[arg-type]
    assert verdicts == [5]
    assert decide([], [], **kwargs) == Route("unified", reason="empty")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decide(analysis.statements, [], **kwargs)  # type: ignore[arg-type]
    # the strategy is only asked when everything else allows a tenant
    decide(analysis.statements, [ident], **{**kwargs, "tx_status": IN_BLOCK})  # type: ignore[arg-type]
    assert verdicts == [5]


def test_statement_obstacle_needs_every_table_to_be_a_tenant_table() -> None:
    (stmt,) = ROUTER.analyser.analyse(
        "select * from orders o, items i where o.shop_id = 1 and i.shop_id = 1"
    ).statements
    assert statement_obstacle(stmt, TENANT) is None
    assert statement_obstacle(stmt, frozenset({"orders"})) == "global_table"
    assert statement_obstacle(stmt, frozenset({"public.orders", "public.items"})) is None
    assert statement_obstacle(stmt, frozenset()) == "global_table"


def test_router_from_config_shares_the_analyser() -> None:
    config = parse_config({"routing": {"strategy": "canary", "canary_shop_ids": [5], "identify": ["query"]}})
    router = Router.from_config(config)
    assert router.order == ("query",) and router.strategy.name == "canary"
    assert Router.from_config(config, analyser=router.analyser).analyser is router.analyser
    other = parse_config({"tenancy": {"tenant_column": "tenant_id"}})
    assert Router.from_config(other, analyser=router.analyser).analyser.tenant_column == "tenant_id"
    assert route("select * from orders where shop_id = 5", router=router).tenant
    assert route("select * from orders where shop_id = 6", router=router).reason == "strategy:not_selected"
    assert route("/* shop_id=5 */ select * from orders", router=router).reason == "no_shop"


def written(sql: str, params: BoundParams | None = None) -> tuple[set[int], bool]:
    analysis = ROUTER.analyser.analyse(sql)
    writes = written_shops([(s, params) for s in analysis.statements], TENANT)
    return set(writes.shops), writes.unknown


@pytest.mark.parametrize(
    ("sql", "shops", "unknown"),
    [
        ("select * from orders where shop_id = 5", set(), False),
        ("insert into orders (id, shop_id) values (1, 5), (2, 6)", {5, 6}, False),
        ("insert into orders (id, shop_id) values (nextval('s'), 5)", {5}, False),
        ("insert into orders (id, shop_id) values (1, $1)", set(), True),
        ("insert into orders values (1, 5)", set(), True),
        ("update orders set total = 1 where shop_id = 5", {5}, False),
        ("update orders set total = 1", set(), True),
        ("update devices set name = 'x'", set(), False),
        ("delete from orders where shop_id = 5; delete from items where shop_id = 7", {5, 7}, False),
        ("with d as (delete from orders where shop_id = 5 returning *) select * from d", {5}, False),
        ("select my_function(5)", set(), True),
        ("select nextval('s')", set(), False),
        ("call archive(5)", set(), True),
        ("truncate orders", set(), True),
        ("create index on devices (name)", set(), False),
        ("selec 1", set(), True),
    ],
)
def test_written_shops(sql: str, shops: set[int], unknown: bool) -> None:
    assert written(sql) == (shops, unknown)


def test_written_shops_resolve_parameters() -> None:
    assert written("insert into orders (id, shop_id) values (1, $1)", BoundParams((b"8",))) == ({8}, False)
    unit = ROUTER.route(
        [BatchItem("update orders set total = 0 where shop_id = $1", BoundParams((b"3",)))],
        tx_status=IDLE,
        tenant_tables=TENANT,
        eligible=ALL,
    )
    writes = unit.writes(
        [BatchItem("update orders set total = 0 where shop_id = $1", BoundParams((b"3",)))], TENANT
    )
    assert (set(writes.shops), writes.unknown) == ({3}, False)
