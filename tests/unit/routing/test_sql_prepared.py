"""SQL-level PREPARE / EXECUTE read for routing, and a session's registry of them (pure)."""

from __future__ import annotations

from pgtenantproxy.dispatch.sql_statements import SqlStatements
from pgtenantproxy.routing import BatchItem
from pgtenantproxy.routing.identify import BoundParams
from pgtenantproxy.routing.sql_prepared import Execution, definition, execution

PREPARE = "PREPARE find(int, numeric(10, 2)) AS SELECT id FROM customers WHERE shop_id = $1 AND p = $2;"


def test_definition_reads_the_name_and_the_query_after_as_at_depth_zero() -> None:
    found = definition(PREPARE)
    assert found is not None
    assert (found.name, found.query) == ("find", "SELECT id FROM customers WHERE shop_id = $1 AND p = $2")
    quoted = definition('PREPARE "Ä x" AS SELECT \'AS\'')
    assert quoted is not None and (quoted.name, quoted.query) == ("Ä x", "SELECT 'AS'")
    assert definition("SELECT 1") is None
    assert definition("PREPARE broken AS") is None


def test_execution_reads_constant_arguments_only() -> None:
    assert execution("EXECUTE find(1, 'x', NULL, 2.5, true, '7'::int)") == Execution(
        "find", ("1", "x", None, "2.5", "true", "7"))
    assert execution("EXECUTE find(1 + 1)") == Execution("find", None)
    assert execution("EXECUTE find") == Execution("find", ())
    assert execution("SELECT 1") is None


def test_a_session_routes_execute_as_its_query_and_forgets_on_deallocate() -> None:
    sql = SqlStatements()
    items, needs = sql.substitute([BatchItem(PREPARE)])
    assert items == [BatchItem(PREPARE)] and needs == ()
    items, needs = sql.substitute([BatchItem("EXECUTE find(5, 1.5)")])
    assert items == [BatchItem("SELECT id FROM customers WHERE shop_id = $1 AND p = $2",
                               BoundParams((b"5", b"1.5")))]
    assert needs == (("find", PREPARE.rstrip(";"), 'DEALLOCATE "find"'),)
    sql.substitute([BatchItem("DEALLOCATE find")])
    items, needs = sql.substitute([BatchItem("EXECUTE find(5, 1.5)")])
    assert items == [BatchItem("EXECUTE find(5, 1.5)")] and needs == ()  # unknown: the server answers
