"""Verification's pure parts: key ranges, checksum SQL, key verdicts, shop selection, the report."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration import checksums as cs
from pgtenantproxy.migration.keydiff import (
    CHANGED,
    EXTRA,
    IN_FLIGHT,
    MISSING,
    SETTLED,
    classify,
    classify_key,
    differing_ranges,
)
from pgtenantproxy.migration.keyranges import KeyRange, range_condition, ranges
from pgtenantproxy.migration.verify import select_shops
from pgtenantproxy.migration.verify_report import (
    MAX_LISTED,
    ShopVerification,
    TableVerification,
    VerificationReport,
)
from pgtenantproxy.sqltext import QualifiedName

TAGS = TableInfo(
    label="public.account_tags", name=QualifiedName("public", "account_tags"), tenant_column="shop_id",
    columns=(ColumnInfo("shop_id", "integer"), ColumnInfo("account_id", "integer"), ColumnInfo("tag", "text"),
             ColumnInfo("added_at", "timestamp with time zone")),
    pk=(ColumnInfo("account_id", "integer"), ColumnInfo("tag", "text")),
)


# --- key ranges ------------------------------------------------------------------------
def test_ranges_cover_the_whole_key_space_half_open() -> None:
    assert ranges([]) == [KeyRange(None, None)]
    assert ranges(["[3]", "[6]"]) == [KeyRange(None, "[3]"), KeyRange("[3]", "[6]"), KeyRange("[6]", None)]
    assert str(KeyRange("[3]", None)) == "([3], +inf]"


def test_range_condition_compares_composite_keys_in_their_own_types() -> None:
    sql, values = range_condition(TAGS, KeyRange('[1, "a"]', '[9, "z"]'), params=True, first=2)
    assert sql == (
        'ROW("account_id", "tag") > ROW((($2::jsonb) ->> 0)::integer, (($2::jsonb) ->> 1)::text)'
        ' AND ROW("account_id", "tag") <= ROW((($3::jsonb) ->> 0)::integer, (($3::jsonb) ->> 1)::text)'
    )
    assert values == ['[1, "a"]', '[9, "z"]']
    assert range_condition(TAGS, KeyRange(), params=True) == ("TRUE", [])
    literal_sql, none = range_condition(TAGS, KeyRange(None, "[5, \"it's\"]"), params=False)
    assert none == [] and "'[5, \"it''s\"]'::jsonb" in literal_sql
    assert literal_sql.startswith('ROW("account_id", "tag") <= ')


# --- checksum SQL --------------------------------------------------------------------------
def test_row_hash_lists_every_column_by_name() -> None:
    assert cs.row_hash(TAGS, "x") == (
        'hashtextextended(ROW(x."shop_id", x."account_id", x."tag", x."added_at")::text, 0)')


def test_unified_pass_groups_rows_in_key_order_for_one_shop() -> None:
    sql = cs.unified_pass_sql(TAGS)
    assert 'ORDER BY "account_id", "tag"' in sql and '"shop_id" = $1::bigint::text::integer' in sql
    assert "(n - 1) / $2" in sql and "FILTER (WHERE n % $2 = 0)" in sql


def test_range_sql_filters_by_shop_on_unified_only() -> None:
    unified, args = cs.range_sums_sql(TAGS, KeyRange("[1, \"a\"]", None), shop=True)
    tenant, targs = cs.range_sums_sql(TAGS, KeyRange("[1, \"a\"]", None), shop=False)
    assert "$1::bigint" in unified and "$2::jsonb" in unified and args == ['[1, "a"]']
    assert "shop_id\" =" not in tenant and "$1::jsonb" in tenant and targs == ['[1, "a"]']
    hashes, _ = cs.range_hashes_sql(TAGS, KeyRange(), shop=False)
    assert hashes.endswith("WHERE TRUE") and "jsonb_build_array" in hashes


def test_key_probes_match_each_key_column_typed() -> None:
    sql = cs.key_hashes_sql(TAGS, shop=True)
    assert 'x."account_id" = (k.key ->> 0)::integer AND x."tag" = (k.key ->> 1)::text' in sql
    assert 'x."shop_id" = $2::bigint::text::integer' in sql
    assert "$2" not in cs.key_hashes_sql(TAGS, shop=False)


def test_both_sides_read_under_the_same_text_settings() -> None:
    sql = cs.set_local_sql()
    for setting in ("TimeZone = 'UTC'", "DateStyle = 'ISO, MDY'", "extra_float_digits = '3'",
                    "IntervalStyle = 'postgres'"):
        assert f"SET LOCAL {setting}" in sql


# --- verdicts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "t", "b", "verdict"),
    [
        (1, 1, 1, SETTLED),
        (1, 2, 2, SETTLED),  # the tenant already has the newer version
        (1, 1, 2, SETTLED),  # the newer version is on its way
        (None, None, None, SETTLED),
        (1, None, 1, MISSING),
        (None, 1, None, EXTRA),
        (1, 2, 1, CHANGED),
        (1, 3, 2, IN_FLIGHT),  # unified changed between the reads: judged again later
        (None, None, 1, SETTLED),  # inserted after the first read, not mirrored yet
        (1, None, None, SETTLED),  # deleted, and the tenant already has it deleted
    ],
)
def test_classify_key(a: int | None, t: int | None, b: int | None, verdict: str) -> None:
    assert classify_key(a, t, b) == verdict


def test_classify_keeps_only_unsettled_keys_of_every_side() -> None:
    a = {"[1]": 10, "[2]": 20, "[3]": 30}
    t = {"[1]": 10, "[2]": 21, "[4]": 40}
    b = {"[1]": 10, "[2]": 20, "[3]": 30}
    assert classify(a, t, b) == {"[2]": CHANGED, "[3]": MISSING, "[4]": EXTRA}


def test_differing_ranges_compare_count_and_sum() -> None:
    u = [(3, Decimal(7)), (3, Decimal(9)), (0, Decimal(0))]
    t = [(3, Decimal(7)), (3, Decimal(8)), (1, Decimal(0))]
    assert differing_ranges(u, t) == [1, 2]
    with pytest.raises(ValueError):
        differing_ranges(u, t[:2])


# --- which shops -------------------------------------------------------------------------------
PHASES = {
    1: ph.ShopPhase(1, ph.MIRRORING, 3),
    2: ph.ShopPhase(2, ph.PROVISIONED, 1),
    3: ph.ShopPhase(3, ph.DEGRADED, 5, resume_phase=ph.READS_ON_TENANT),
    4: ph.ShopPhase(4, ph.RETIRED, 9),
    5: ph.ShopPhase(5, ph.BACKFILLED, 2),
}


def test_all_means_backfilled_to_tenant_primary_including_degraded_ones() -> None:
    assert [p.shop_id for p in select_shops(PHASES, None)] == [1, 3, 5]


def test_named_shops_may_be_provisioned_but_not_unified_or_retired() -> None:
    assert [p.shop_id for p in select_shops(PHASES, [2, 1, 2])] == [1, 2]
    with pytest.raises(MigrationError, match="shop 4 is in phase retired, shop 7 is in phase unified"):
        select_shops(PHASES, [1, 4, 7])


# --- the report ------------------------------------------------------------------------------------
def test_report_caps_listed_keys_but_counts_all_and_serialises() -> None:
    table = TableVerification("public.accounts", rows_unified=100, rows_tenant=99, ranges=10)
    table.record({f"[{i}]": MISSING for i in range(MAX_LISTED + 5)} | {"[500]": IN_FLIGHT})
    assert table.count(MISSING) == MAX_LISTED + 5 and len(table.keys[MISSING].keys) == MAX_LISTED
    assert table.count("unsettled") == 1 and table.status == "different"
    quiet = TableVerification("public.tellers", rows_unified=5, rows_tenant=5, ranges=1)
    quiet.record({"[7]": IN_FLIGHT})
    assert quiet.identical  # a key that kept changing is listed, not a difference
    shop = ShopVerification(3, ph.MIRRORING, [table, quiet], degraded=True, dead_letters=2)
    report = VerificationReport([shop, ShopVerification(4, ph.MIRRORING, [])], seconds=1.5)
    data = json.loads(report.to_json())
    assert data["status"] == "different" and data["different_shops"] == [3] and data["rows"] == 105
    first = data["shops"][0]
    assert first["totals"] == {"missing": MAX_LISTED + 5, "extra": 0, "changed": 0, "unsettled": 2}
    assert first["tables"][0]["missing"]["count"] == MAX_LISTED + 5
    assert "mirror degraded (2 dead letters)" in shop.summary()


def test_an_error_anywhere_makes_the_report_an_error() -> None:
    broken = TableVerification("public.history", error="UndefinedColumnError: column delta does not exist")
    shop = ShopVerification(8, ph.MIRRORING, [TableVerification("public.accounts"), broken])
    assert shop.status == "error" and not shop.identical
    assert VerificationReport([shop]).status == "error"
    assert ShopVerification(9, ph.MIRRORING, error="shop 9: unreachable").summary() == "shop 9: unreachable"
