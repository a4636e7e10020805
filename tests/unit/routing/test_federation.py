"""The federated rewrite of a read's text (pure): where it splices, what each arm reads, what it refuses."""

from __future__ import annotations

import json

import pglast.parser as pg
import pytest

from pgtenantproxy.routing.federation import (
    CannotFederate,
    FederationFacts,
    Sources,
    federate,
    needs_federation,
)

TABLES = frozenset({"public.repairs", "public.customers"})
FACTS = FederationFacts({"public.repairs": ("id", "shop_id", "price"),
                         "public.customers": ("id", "shop_id", "name")}, frozenset({16, 17}))
GUARD = "g()"


def remote(shop: int, label: str) -> str:
    return f'"fdw_{shop}"."{label}"'


def sources(shops: frozenset[int] | None = None, moved: frozenset[int] = frozenset({16, 17})) -> Sources:
    return Sources(moved, shops, "shop_id", remote, GUARD)


def arms(sql: str) -> list[str]:
    """The FROM items of every arm of every union in ``sql`` (as relation names)."""
    tree = json.loads(pg.parse_sql_json(sql))
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            rv = node.get("RangeVar")
            if isinstance(rv, dict):
                found.append(".".join(p for p in (rv.get("schemaname"), rv["relname"]) if p))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


def test_every_reference_reads_unified_and_each_moved_shop() -> None:
    sql = "SELECT r.id, s.name FROM repairs r JOIN shops s ON s.id = r.shop_id"
    out = federate(sql, {0: sources()}, FACTS, TABLES)
    assert arms(out) == ["repairs", "fdw_16.public.repairs", "fdw_17.public.repairs", "shops"]
    assert '"shop_id" IS NULL OR "shop_id" NOT IN (16, 17)' in out  # unified's copies never counted
    assert out.endswith(") r JOIN shops s ON s.id = r.shop_id")
    assert f"WHERE {GUARD})" in out


def test_only_the_shops_the_statement_may_touch() -> None:
    out = federate("SELECT count(*) FROM repairs WHERE shop_id IN (3, 16)", {0: sources(frozenset({3, 16}))},
                   FACTS, TABLES)
    assert arms(out) == ["repairs", "fdw_16.public.repairs"]
    assert 'WHERE "shop_id" IN (3) UNION ALL' in out
    assert out.endswith(' AS "repairs" WHERE shop_id IN (3, 16)')  # no alias: the table's name


def test_no_unified_rows_when_every_shop_is_moved() -> None:
    out = federate("SELECT * FROM repairs WHERE shop_id = 16", {0: sources(frozenset({16}))}, FACTS, TABLES)
    assert "WHERE false UNION ALL" in out


def test_names_as_written_keep_their_resolution() -> None:
    sql = 'SELECT 1 FROM ONLY public."repairs" AS x, "customers"'
    out = federate(sql, {0: sources()}, FACTS, TABLES)
    assert 'FROM ONLY public."repairs" WHERE' in out
    assert 'FROM "customers" WHERE' in out
    assert out.count("UNION ALL") == 4


def test_byte_offsets_with_non_ascii_text() -> None:
    out = federate("SELECT 'héllo ✓', id FROM repairs", {0: sources()}, FACTS, TABLES)
    assert out.startswith("SELECT 'héllo ✓', id FROM (SELECT * FROM (")


def test_only_the_planned_statements_of_a_text() -> None:
    sql = "SELECT 1 FROM repairs; SELECT 2 FROM repairs"
    out = federate(sql, {1: sources()}, FACTS, TABLES)
    assert out.startswith("SELECT 1 FROM repairs; SELECT 2 FROM (SELECT")


def test_subqueries_ctes_and_exists_are_rewritten() -> None:
    sql = ("WITH big AS (SELECT * FROM repairs WHERE price > 10) SELECT c.name FROM customers c "
           "WHERE EXISTS (SELECT 1 FROM big WHERE big.id = c.id)")
    out = federate(sql, {0: sources()}, FACTS, TABLES)
    assert arms(out).count("repairs") == 1 and arms(out).count("customers") == 1
    assert "fdw_16.public.customers" in arms(out) and "fdw_17.public.repairs" in arms(out)


def test_global_and_shadowed_tables_are_left_alone() -> None:
    shadowed = frozenset({"repairs"})
    out = federate("SELECT * FROM shops, repairs", {0: sources()}, FACTS, TABLES, shadowed=shadowed)
    assert out == "SELECT * FROM shops, repairs"


def test_refusals() -> None:
    with pytest.raises(CannotFederate, match="WITH query"):
        federate("WITH repairs AS (SELECT 1) SELECT * FROM repairs", {0: sources()}, FACTS, TABLES)
    with pytest.raises(CannotFederate, match="columns"):
        federate("SELECT 1 FROM repairs", {0: sources()}, FederationFacts({}, frozenset()), TABLES)
    with pytest.raises(CannotFederate, match="parenthesized"):
        federate("SELECT 1 FROM ONLY (repairs)", {0: sources()}, FACTS, TABLES)
    with pytest.raises(CannotFederate, match="does not parse"):
        federate("TABLE repairs", {0: sources()}, FACTS, TABLES)


def test_needs_federation() -> None:
    assert needs_federation({16}, None)
    assert needs_federation({16}, frozenset({3, 16}))
    assert not needs_federation({16}, frozenset({3}))
    assert not needs_federation(set(), None)
    assert not needs_federation({16}, frozenset())
