"""The analyser's view of COPY statements (:class:`CopyTarget`): table, columns, direction, options."""

from __future__ import annotations

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.model import CopyTarget

ANALYSER = Analyser("shop_id")


def target(sql: str) -> CopyTarget | None:
    (stmt,) = ANALYSER.parse(sql).statements
    return stmt.copy


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("COPY customers (shop_id, name) FROM STDIN",
         CopyTarget("customers", ("shop_id", "name"), 0, is_from=True)),
        ("copy public.customers (name, shop_id) from stdin with (format csv, header match, delimiter ';')",
         CopyTarget("public.customers", ("name", "shop_id"), 1, is_from=True, format="csv", delimiter=";",
                    header=True)),
        ("COPY customers (name) FROM STDIN", CopyTarget("customers", ("name",), None, is_from=True)),
        ("COPY customers FROM STDIN CSV HEADER QUOTE AS '''' ESCAPE '\\' NULL AS 'x'",
         CopyTarget("customers", is_from=True, format="csv", header=True, quote="'", escape="\\", null="x")),
        ("COPY customers FROM STDIN (FORMAT binary)", CopyTarget("customers", is_from=True, format="binary")),
        ("COPY customers FROM STDIN BINARY", CopyTarget("customers", is_from=True, format="binary")),
        ("COPY customers FROM STDIN (HEADER false, FORMAT CSV)",
         CopyTarget("customers", is_from=True, format="csv")),
        ("COPY customers FROM STDIN (FREEZE, ENCODING 'SJIS', FORCE_NULL (name))",
         CopyTarget("customers", is_from=True, encoding="SJIS", other=("freeze", "force_null"))),
        ("COPY customers FROM STDIN WHERE shop_id = 1",
         CopyTarget("customers", is_from=True, other=("where",))),
        ("COPY customers FROM '/tmp/x.csv'", CopyTarget("customers", is_from=True, stdio=False)),
        ("COPY customers TO PROGRAM 'cat'", CopyTarget("customers", stdio=False)),
        ("COPY customers TO STDOUT", CopyTarget("customers")),
        ("COPY (SELECT * FROM customers WHERE shop_id = 1) TO STDOUT (FORMAT csv)",
         CopyTarget(None, format="csv")),
    ],
)
def test_copy_targets(sql: str, expected: CopyTarget) -> None:
    assert target(sql) == expected


def test_only_copy_statements_have_a_target() -> None:
    assert target("SELECT 1") is None
    assert target("INSERT INTO customers (shop_id) VALUES (1)") is None


def test_a_copy_query_is_still_walked_for_its_shop() -> None:
    (stmt,) = ANALYSER.parse("COPY (SELECT * FROM customers WHERE shop_id = 4) TO STDOUT").statements
    assert [o.table for o in stmt.occurrences] == ["customers"]
    assert {p.value for o in stmt.occurrences for p in o.pins} == {4}
    assert not stmt.has_write
