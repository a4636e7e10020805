"""The read shapes HandyShop runs across shops, as the acceptance test of federated reads replays them.

Each :class:`Shape` is one or more statements (``$n`` placeholders, bound by
the driver: psycopg gets them as ``%s``), run in autocommit or, with
``isolation`` set, in one transaction (``BEGIN [ISOLATION LEVEL ...]``;
COMMIT). A statement's rows are compared as a list when its ORDER BY is total
(``ordered``), as a sorted multiset otherwise.

The data is the sample's (``pgtenantproxy/sample/handyshop.sql``, 8 shops x
10 customers x 4 repairs), which makes some facts easy to lean on:

* shop ``s`` has customers ``c`` with ``c % 8 == s - 1``; every repair of a
  shop has the same status (``received``, ``diagnosed``, ``repaired``,
  ``returned`` for shops 1..4, again for 5..8);
* device model ``m`` is used by exactly one shop (``1 + 7 (m - 1) mod 8``):
  model 1 only by shop 1;
* cities: Lyon = shops 1, 6; Porto = 2, 7; Gdańsk = 3, 8; Malmö = 4; Berlin = 5.

After the migration shops 1, 3, 6 are ``retired`` (:data:`RETIRED`), the
others ``tenant_primary``: shape names and params pick retired, primary and
mixed sets of shops on purpose.

``allowed_refusal`` marks the cases the issue lets the proxy refuse (a read
needing other databases inside REPEATABLE READ / SERIALIZABLE, a write
touching several shops): after the migration such a shape MUST be refused
with SQLSTATE 0A000 (and ``verify``, run after it in autocommit, must still
answer what it answered before: nothing changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

RETIRED = (1, 3, 6)
REFUSED = "0A000"


@dataclass(frozen=True)
class Stmt:
    sql: str
    params: tuple[Any, ...] = ()
    #: The ORDER BY is total: compare the rows as a list (else as a sorted multiset).
    ordered: bool = True
    #: A write: its answer is the row count of its command tag.
    write: bool = False


@dataclass(frozen=True)
class Shape:
    name: str
    stmts: tuple[Stmt, ...]
    #: None: each statement on its own (autocommit); else the transaction's isolation level
    #: ("read committed" -- also what a plain BEGIN gets --, "repeatable read", "serializable").
    isolation: str | None = None
    #: Why the proxy may refuse it after the migration (it then MUST refuse it, with 0A000).
    allowed_refusal: str | None = None
    #: Run after the shape (autocommit, each on its own): their answers must not change either.
    verify: tuple[Stmt, ...] = ()


def q(sql: str, *params: Any, ordered: bool = True) -> Stmt:
    return Stmt(" ".join(sql.split()), tuple(params), ordered)


def one(name: str, sql: str, *params: Any, ordered: bool = True) -> Shape:
    return Shape(name, (q(sql, *params, ordered=ordered),))


_BY_SHOP = "SELECT id, customer_id, status, price FROM repairs WHERE shop_id = $1 ORDER BY id"

SHAPES: tuple[Shape, ...] = (
    # --- joins with each global table ----------------------------------------------------------------
    one("join_shops_by_status (shops 3 retired + 7 primary)",
        """SELECT r.id, s.name, s.city, r.price FROM repairs r JOIN shops s ON s.id = r.shop_id
           WHERE r.status = $1 ORDER BY r.id""", "repaired"),
    one("join_shops_group_by_city",
        """SELECT s.city, count(*) AS repairs, sum(r.price) AS total FROM repairs r
           JOIN shops s ON s.id = r.shop_id GROUP BY s.city ORDER BY s.city"""),
    one("join_customers_shops_group_by_name",
        """SELECT s.name, count(*) FROM customers c JOIN shops s ON s.id = c.shop_id
           GROUP BY s.name ORDER BY s.name"""),
    one("join_device_models_by_brand (sum, avg)",
        """SELECT d.brand, count(*), sum(r.price), avg(r.price) FROM repairs r
           JOIN device_models d ON d.id = r.device_model_id GROUP BY d.brand ORDER BY d.brand"""),
    one("join_users_owner_customer_counts",
        """SELECT u.email, count(c.id) FROM users u JOIN customers c ON c.shop_id = u.shop_id
           WHERE u.role = $1 GROUP BY u.email ORDER BY u.email""", "owner"),
    one("join_three_way_shops_device_models",
        """SELECT s.name, d.brand, count(*) FROM repairs r JOIN shops s ON s.id = r.shop_id
           JOIN device_models d ON d.id = r.device_model_id WHERE d.brand = $1
           GROUP BY s.name, d.brand ORDER BY s.name""", "Galaxo"),
    one("exists_shops_city_retired_only (Lyon: 1, 6)",
        """SELECT c.id, c.name FROM customers c
           WHERE EXISTS (SELECT 1 FROM shops s WHERE s.id = c.shop_id AND s.city = $1) ORDER BY c.id""",
        "Lyon"),
    one("exists_shops_city_mixed (Gdańsk: 3 retired, 8 primary)",
        """SELECT c.id, c.name, c.phone FROM customers c
           WHERE EXISTS (SELECT 1 FROM shops s WHERE s.id = c.shop_id AND s.city = $1) ORDER BY c.id""",
        "Gdańsk"),
    one("in_subquery_device_models_like",
        """SELECT id, shop_id, price FROM repairs
           WHERE device_model_id IN (SELECT id FROM device_models WHERE brand = $1 AND model LIKE '% 1%')
           ORDER BY id""", "Pixelo"),
    one("correlated_count_per_device_model",
        """SELECT d.model, (SELECT count(*) FROM repairs r WHERE r.device_model_id = d.id) AS n
           FROM device_models d ORDER BY d.id"""),
    one("not_exists_models_unused_by_shops_1_2",
        """SELECT d.id, d.model FROM device_models d
           WHERE NOT EXISTS (SELECT 1 FROM repairs r WHERE r.device_model_id = d.id AND r.shop_id IN (1, 2))
           ORDER BY d.id"""),
    one("left_join_shops_with_zero_repairs (model 1: only shop 1)",
        """SELECT s.id, s.name, count(r.id) AS n FROM shops s
           LEFT JOIN repairs r ON r.shop_id = s.id AND r.device_model_id = $1
           GROUP BY s.id, s.name ORDER BY s.id""", 1),
    one("lateral_top2_repairs_per_shop",
        """SELECT s.id, t.id, t.price FROM shops s CROSS JOIN LATERAL
           (SELECT r.id, r.price FROM repairs r WHERE r.shop_id = s.id ORDER BY r.price DESC, r.id LIMIT 2) t
           ORDER BY s.id, t.price DESC, t.id"""),
    one("string_agg_models_per_shop",
        """SELECT r.shop_id, string_agg(DISTINCT d.model, ', ' ORDER BY d.model) FROM repairs r
           JOIN device_models d ON d.id = r.device_model_id GROUP BY r.shop_id ORDER BY r.shop_id"""),
    # --- cross-shop aggregates ------------------------------------------------------------------------
    one("count_all_repairs", "SELECT count(*) FROM repairs"),
    one("sum_price_group_by_shop",
        "SELECT shop_id, sum(price) FROM repairs GROUP BY shop_id ORDER BY shop_id"),
    one("avg_min_max_by_status",
        """SELECT status, avg(price), min(price), max(price), count(*) FROM repairs
           GROUP BY status ORDER BY status"""),
    one("count_distinct",
        """SELECT count(DISTINCT customer_id), count(DISTINCT device_model_id), count(DISTINCT status)
           FROM repairs"""),
    one("having_sum_over_param",
        """SELECT customer_id, count(*), sum(price) FROM repairs GROUP BY customer_id
           HAVING sum(price) > $1 ORDER BY customer_id""", Decimal("1000")),
    one("rollup_shop_status",
        "SELECT shop_id, status, count(*) FROM repairs GROUP BY ROLLUP (shop_id, status)", ordered=False),
    one("jsonb_filter_count_by_shop",
        """SELECT shop_id, count(*) FROM repairs WHERE notes->>'screen' = $1
           GROUP BY shop_id ORDER BY shop_id""", "true"),
    one("string_agg_customer_names_ordered",
        """SELECT shop_id, string_agg(name, '; ' ORDER BY id) FROM customers WHERE shop_id IN (1, 2, 3)
           GROUP BY shop_id ORDER BY shop_id"""),
    one("two_tenant_tables_join_cross_shop",
        """SELECT c.shop_id, count(DISTINCT c.id), count(r.id), sum(r.price) FROM customers c
           JOIN repairs r ON r.customer_id = c.id GROUP BY c.shop_id ORDER BY c.shop_id"""),
    # --- sets of shops ----------------------------------------------------------------------------------
    one("in_literal_retired (1, 3)",
        "SELECT id, customer_id, price FROM repairs WHERE shop_id IN (1, 3) ORDER BY id"),
    one("in_literal_primary (2, 4)",
        "SELECT id, customer_id, price FROM repairs WHERE shop_id IN (2, 4) ORDER BY id"),
    one("in_literal_mixed (1, 2)",
        "SELECT id, shop_id, customer_id, status, price FROM repairs WHERE shop_id IN (1, 2) ORDER BY id"),
    one("any_param_mixed [3, 5, 6]",
        "SELECT id, shop_id, price FROM repairs WHERE shop_id = ANY($1) ORDER BY id", [3, 5, 6]),
    one("any_param_retired [1, 6]",
        "SELECT id, shop_id, name, phone FROM customers WHERE shop_id = ANY($1) ORDER BY id", [1, 6]),
    one("any_param_primary [2, 7]",
        "SELECT shop_id, count(*) FROM customers WHERE shop_id = ANY($1) GROUP BY shop_id ORDER BY shop_id",
        [2, 7]),
    one("between_params (2..6)",
        """SELECT shop_id, count(*), sum(price) FROM repairs WHERE shop_id BETWEEN $1 AND $2
           GROUP BY shop_id ORDER BY shop_id""", 2, 6),
    # --- pages ------------------------------------------------------------------------------------------
    one("page_order_by_price_limit_offset",
        "SELECT id, shop_id, price FROM repairs ORDER BY price DESC, id LIMIT $1 OFFSET $2", 10, 20),
    one("keyset_page_repairs",
        "SELECT id, shop_id, status FROM repairs WHERE id > $1 ORDER BY id LIMIT 15", 150),
    one("keyset_page_customers_in_shops (3, 4)",
        """SELECT id, shop_id, name FROM customers WHERE shop_id IN (3, 4) AND id > $1
           ORDER BY id LIMIT 5""", 20),
    # --- windows, DISTINCT ON, CTEs, subqueries, UNION ---------------------------------------------------
    one("window_row_number_top3_per_shop",
        """SELECT shop_id, id, price, rn FROM (
             SELECT shop_id, id, price, row_number() OVER (PARTITION BY shop_id ORDER BY price DESC, id) AS rn
             FROM repairs) t
           WHERE rn <= 3 ORDER BY shop_id, rn"""),
    one("window_running_total (2, 3)",
        """SELECT id, shop_id, sum(price) OVER (PARTITION BY shop_id ORDER BY id) FROM repairs
           WHERE shop_id IN (2, 3) ORDER BY id"""),
    one("distinct_on_priciest_per_shop",
        "SELECT DISTINCT ON (shop_id) shop_id, id, price FROM repairs ORDER BY shop_id, price DESC, id"),
    one("cte_customer_totals_join_customers",
        """WITH per_customer AS (SELECT customer_id, sum(price) AS total FROM repairs GROUP BY customer_id)
           SELECT c.shop_id, c.name, p.total FROM per_customer p JOIN customers c ON c.id = p.customer_id
           WHERE p.total > $1 ORDER BY c.id""", Decimal("800")),
    one("subquery_in_from",
        """SELECT t.shop_id, t.n FROM (SELECT shop_id, count(*) AS n FROM customers GROUP BY shop_id) t
           WHERE t.n >= $1 ORDER BY t.shop_id""", 10),
    one("union_customers_repairs (1, 2)",
        """SELECT shop_id, name AS label FROM customers WHERE shop_id IN (1, 2)
           UNION SELECT shop_id, status FROM repairs WHERE shop_id IN (1, 2)""", ordered=False),
    one("union_all_counts_two_tables",
        "SELECT 'customers' AS t, count(*) FROM customers UNION ALL SELECT 'repairs', count(*) FROM repairs",
        ordered=False),
    # --- one shop with a global table ----------------------------------------------------------------------
    one("single_retired_shop_join_device_models (3)",
        """SELECT r.id, d.brand, d.model, r.price FROM repairs r
           JOIN device_models d ON d.id = r.device_model_id WHERE r.shop_id = $1 ORDER BY r.id""", 3),
    one("single_primary_shop_join_device_models (4)",
        """SELECT r.id, d.brand, d.model, r.price FROM repairs r
           JOIN device_models d ON d.id = r.device_model_id WHERE r.shop_id = $1 ORDER BY r.id""", 4),
    one("single_retired_shop_join_shops (6)",
        """SELECT s.name, s.city, count(*) FROM customers c JOIN shops s ON s.id = c.shop_id
           WHERE c.shop_id = $1 GROUP BY s.name, s.city""", 6),
    one("single_retired_shop_tenant_tables_only (1, control)",
        """SELECT c.name, count(r.id), sum(r.price) FROM customers c JOIN repairs r ON r.customer_id = c.id
           WHERE c.shop_id = $1 AND r.shop_id = $2 GROUP BY c.name ORDER BY c.name""", 1, 1),
    # --- transactions -----------------------------------------------------------------------------------
    Shape("tx_begin_several_cross_shop_reads_commit (read committed)", (
        q("SELECT count(*) FROM repairs"),
        q("SELECT shop_id, sum(price) FROM repairs GROUP BY shop_id ORDER BY shop_id"),
        q("""SELECT r.id, s.name FROM repairs r JOIN shops s ON s.id = r.shop_id WHERE r.status = $1
             ORDER BY r.id""", "received"),
        q("SELECT id, shop_id, name FROM customers WHERE shop_id = ANY($1) ORDER BY id", [1, 2]),
    ), isolation="read committed"),
    Shape("tx_global_read_first_then_cross_shop_join (read committed)", (
        q("SELECT count(*) FROM shops"),
        q("""SELECT d.brand, count(*) FROM repairs r JOIN device_models d ON d.id = r.device_model_id
             GROUP BY d.brand ORDER BY d.brand"""),
    ), isolation="read committed"),
    Shape("tx_repeatable_read_single_retired_shop (3, control)", (
        q(_BY_SHOP, 3),
        q("SELECT count(*) FROM customers WHERE shop_id = $1", 3),
    ), isolation="repeatable read"),
    Shape("tx_repeatable_read_cross_shop_read", (
        q("SELECT shop_id, count(*) FROM repairs WHERE shop_id IN (1, 2) GROUP BY shop_id ORDER BY shop_id"),
    ), isolation="repeatable read",
        allowed_refusal="a read needing other databases inside REPEATABLE READ"),
    # device_models is a reference table in this bed: the shop's database answers from its copy, so even
    # REPEATABLE READ needs one database only
    Shape("tx_repeatable_read_single_primary_shop_join_device_models", (
        q("""SELECT r.id, d.model FROM repairs r JOIN device_models d ON d.id = r.device_model_id
             WHERE r.shop_id = $1 ORDER BY r.id""", 4),
    ), isolation="repeatable read"),
    Shape("tx_repeatable_read_single_primary_shop_join_shops", (
        q("""SELECT r.id, s.name FROM repairs r JOIN shops s ON s.id = r.shop_id
             WHERE r.shop_id = $1 ORDER BY r.id""", 4),
    ), isolation="repeatable read",
        allowed_refusal="a read needing other databases (shop 4's and unified's) inside REPEATABLE READ"),
    Shape("tx_serializable_count_all", (q("SELECT count(*) FROM repairs"),), isolation="serializable",
          allowed_refusal="a read needing other databases inside SERIALIZABLE"),
    # --- a write touching several shops -------------------------------------------------------------------
    Shape("multi_shop_update (1, 2)", (
        Stmt("UPDATE repairs SET status = status WHERE shop_id IN (1, 2)", write=True),
    ), allowed_refusal="a write touching several shops", verify=(q(_BY_SHOP, 1), q(_BY_SHOP, 2))),
)

#: ``[federation] max_shops_per_query`` of the second proxy the fan-out shapes run through.
NARROW_MAX_SHOPS = 2

#: Run (after the migration) through a second proxy whose ``max_shops_per_query`` is
#: :data:`NARROW_MAX_SHOPS`; before the migration through the bed's proxy, as every shape.
FANOUT_SHAPES: tuple[Shape, ...] = (
    Shape("fanout_count_all_repairs (8 moved shops)", (q("SELECT count(*) FROM repairs"),),
          allowed_refusal=f"fan-out beyond [federation] max_shops_per_query = {NARROW_MAX_SHOPS}"),
    Shape("fanout_any_param_three_shops [2, 3, 4]", (
        q("SELECT id, shop_id, price FROM repairs WHERE shop_id = ANY($1) ORDER BY id", [2, 3, 4]),),
          allowed_refusal=f"fan-out beyond [federation] max_shops_per_query = {NARROW_MAX_SHOPS}"),
    one("fanout_within_limit_join_shops (1, 2)",
        """SELECT r.id, s.name, r.price FROM repairs r JOIN shops s ON s.id = r.shop_id
           WHERE r.shop_id IN (1, 2) ORDER BY r.id"""),
    one("fanout_within_limit_any_param [1, 2]",
        "SELECT id, shop_id, price FROM repairs WHERE shop_id = ANY($1) ORDER BY id", [1, 2]),
    one("fanout_within_limit_any_array_literal (3, 4)",
        """SELECT shop_id, count(*) FROM customers WHERE shop_id = ANY(ARRAY[3, 4])
           GROUP BY shop_id ORDER BY 1"""),
    one("fanout_within_limit_single_retired_shop_join_device_models (6)",
        """SELECT r.id, d.model FROM repairs r JOIN device_models d ON d.id = r.device_model_id
           WHERE r.shop_id = $1 ORDER BY r.id""", 6),
)

#: A cheap read that needs federation (every shop's rows): polled until the proxy's catalog settles.
PROBE = "SELECT count(*) FROM repairs"
