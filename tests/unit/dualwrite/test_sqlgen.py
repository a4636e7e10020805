"""The SQL the mirror runs per table, and the order tables are written in."""

from __future__ import annotations

from pgtenantproxy.dualwrite.sqlgen import (
    ColumnInfo,
    TableInfo,
    delete_sql,
    dependency_order,
    json_array,
    select_rows_sql,
    upsert_sql,
)
from pgtenantproxy.sqltext import QualifiedName

ID = ColumnInfo("id", "bigint", identity_always=True)
TAG = ColumnInfo("tag", "text")
SHOP = ColumnInfo("shop_id", "integer")
DOUBLED = ColumnInfo("doubled", "integer", generated=True)
NOTE = ColumnInfo("note", 'public."Note Type"')


def table(name: str, columns: tuple[ColumnInfo, ...], pk: tuple[ColumnInfo, ...],
          references: frozenset[str] = frozenset()) -> TableInfo:
    return TableInfo(f"public.{name}", QualifiedName("public", name), "shop_id", columns, pk, references)


HISTORY = table("history", (ID, SHOP, DOUBLED, NOTE), (ID,))
TAGS = table("account tags", (SHOP, ID, TAG), (ID, TAG))


def test_rows_are_read_by_key_and_shop_with_one_key_probe_each() -> None:
    sql = select_rows_sql(TAGS)
    assert '(SELECT to_jsonb(x)::text FROM "public"."account tags" AS x WHERE' in sql
    assert "x.\"id\" = (k.key ->> 0)::bigint AND x.\"tag\" = (k.key ->> 1)::text" in sql
    assert 'x."shop_id" = $1::text::integer' in sql  # compared as the column's type, not as text
    assert "FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS k(key, ord)" in sql


def test_upsert_skips_generated_columns_and_overrides_identity() -> None:
    sql = upsert_sql(HISTORY)
    assert sql.startswith('INSERT INTO "public"."history" AS x ("id", "shop_id", "note")'
                          " OVERRIDING SYSTEM VALUE")
    assert "jsonb_populate_recordset(NULL::\"public\".\"history\", $1::jsonb)" in sql
    assert 'ON CONFLICT ("id") DO UPDATE SET "shop_id" = excluded."shop_id", "note" = excluded."note"' in sql
    assert "doubled" not in sql


def test_a_table_that_is_all_key_does_nothing_on_conflict() -> None:
    pairs = table("pairs", (SHOP, TAG), (SHOP, TAG))
    assert upsert_sql(pairs).endswith('ON CONFLICT ("shop_id", "tag") DO NOTHING')
    assert "OVERRIDING" not in upsert_sql(pairs)


def test_delete_matches_the_key_and_the_shop() -> None:
    sql = delete_sql(TAGS)
    assert sql.startswith('DELETE FROM "public"."account tags" AS t WHERE t.ctid = ANY (ARRAY(SELECT')
    assert 'x."shop_id" = $2::text::integer' in sql
    assert "FROM jsonb_array_elements($1::jsonb) AS k(key)" in sql


def test_json_array_joins_encoded_texts_untouched() -> None:
    assert json_array(['{"a": 1}', "[2]"]) == '[{"a": 1},[2]]'
    assert json_array([]) == "[]"


def test_referenced_tables_come_first_self_references_and_cycles_do_not_block() -> None:
    tables = {
        "public.history": table("history", (ID,), (ID,), frozenset({"public.accounts", "public.tellers"})),
        "public.accounts": table("accounts", (ID,), (ID,), frozenset({"public.branches"})),
        "public.tellers": table("tellers", (ID,), (ID,), frozenset({"public.branches"})),
        "public.branches": table("branches", (ID,), (ID,)),
        "public.categories": table("categories", (ID,), (ID,), frozenset({"public.categories"})),
        "public.a": table("a", (ID,), (ID,), frozenset({"public.b"})),
        "public.b": table("b", (ID,), (ID,), frozenset({"public.a"})),
    }
    order = dependency_order(tables)
    assert sorted(order) == sorted(tables)
    assert order.index("public.branches") < order.index("public.accounts") < order.index("public.history")
    assert order.index("public.tellers") < order.index("public.history")
