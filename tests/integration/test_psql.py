"""psql through the proxy prints exactly what it prints direct.

Every scenario runs psql twice (direct, then via the proxy) and compares
return code, stdout and stderr with port numbers masked. Scripts use temporary
tables only, so the two runs (and other test modules) cannot see each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clients import ToolRun, run_tool
from tests.fixtures.proxy import ProxyThread

PSQL = ("-X", "-d", "app", "--no-psqlrc")

SCRIPT = r"""
\set ON_ERROR_STOP off
SELECT 1 AS one; SELECT 2 AS two;
CREATE TEMP TABLE items(id int PRIMARY KEY, name text, price numeric(16,4), tags text[]);
INSERT INTO items VALUES (1, 'screen', 89.5, '{a,b}'), (2, NULL, 0.0001, '{}'), (3, 'ünïcödé', 1e10, NULL);
SELECT * FROM items ORDER BY id;
SELECT 1/0;
SELECT 'still running after an error' AS next;
INSERT INTO items VALUES (1, 'duplicate', 0, NULL);
BEGIN;
SELECT nonexistent_column FROM items;
SELECT 'inside aborted transaction';
ROLLBACK;
DO $$ BEGIN RAISE NOTICE 'a notice from plpgsql: %', 42; RAISE WARNING 'a warning'; END $$;
-- session semantics: SET persists, temp tables, SQL prepared statements, cursors
SET search_path = pg_temp, public;
SET statement_timeout = '7s';
SHOW statement_timeout;
SELECT count(*) FROM items;
PREPARE by_id(int) AS SELECT name FROM items WHERE id = $1;
EXECUTE by_id(1);
EXECUTE by_id(3);
BEGIN;
DECLARE cur CURSOR FOR SELECT g FROM generate_series(1, 10) g;
FETCH 3 FROM cur;
FETCH NEXT FROM cur;
MOVE 2 IN cur;
FETCH ALL FROM cur;
CLOSE cur;
COMMIT;
SELECT current_setting('statement_timeout');
DEALLOCATE by_id;
EXECUTE by_id(1);
\echo done
"""


def _both(unified: PgCluster, proxy: ProxyThread, *args: str) -> tuple[ToolRun, ToolRun]:
    direct = run_tool(unified, "psql", *PSQL, *args)
    through = run_tool(unified, "psql", *PSQL, *args, port=proxy.port)
    return direct, through


def _assert_same(direct: ToolRun, through: ToolRun, unified: PgCluster, proxy: ProxyThread) -> None:
    assert through.normalized(proxy.port) == direct.normalized(unified.port)


def test_multi_statement_command(unified: PgCluster, proxy: ProxyThread) -> None:
    direct, through = _both(unified, proxy, "-c", "select 1; select 2")
    _assert_same(direct, through, unified, proxy)
    assert through.returncode == 0
    one_row = ["?column?", "----------", "{}", "(1", "row)"]
    assert through.stdout.split() == [w.format(1) for w in one_row] + [w.format(2) for w in one_row]


def test_multi_statement_with_error(unified: PgCluster, proxy: ProxyThread) -> None:
    direct, through = _both(unified, proxy, "-At", "-c", "select 1; select 1/0; select 3")
    _assert_same(direct, through, unified, proxy)
    assert "division by zero" in through.stderr


def test_script_with_errors_and_session_state(unified: PgCluster, proxy: ProxyThread, tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(SCRIPT, encoding="utf-8")
    direct, through = _both(unified, proxy, "-f", str(script))
    _assert_same(direct, through, unified, proxy)
    out, err = through.stdout, through.stderr
    assert through.returncode == 0
    assert "still running after an error" in out
    assert "division by zero" in err
    assert "duplicate key value violates unique constraint" in err
    assert "current transaction is aborted" in err
    assert "a notice from plpgsql: 42" in err
    assert "ünïcödé" in out
    assert out.count("7s") == 2  # SHOW and current_setting: SET persisted
    assert 'prepared statement "by_id" does not exist' in err
    assert out.rstrip().endswith("done")


def test_script_stops_on_error(unified: PgCluster, proxy: ProxyThread, tmp_path: Path) -> None:
    script = tmp_path / "stop.sql"
    script.write_text("SELECT 'first';\nSELECT 1/0;\nSELECT 'never';\n")
    direct, through = _both(unified, proxy, "-v", "ON_ERROR_STOP=1", "-f", str(script))
    _assert_same(direct, through, unified, proxy)
    assert through.returncode == 3
    assert "never" not in through.stdout


@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_copy_both_ways(unified: PgCluster, proxy: ProxyThread, tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "source.csv"
    rows = [f"{i},name {i} ü,{i * 1.5},{'' if i % 7 == 0 else i}" for i in range(5000)]
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    opts = "" if fmt == "text" else f" WITH (FORMAT {fmt})"
    outputs = {}
    for label, port in (("direct", None), ("proxy", proxy.port)):
        out = tmp_path / f"out-{label}.{fmt}"
        back = tmp_path / f"back-{label}.csv"
        script = tmp_path / f"copy-{label}.sql"
        script.write_text(
            "CREATE TEMP TABLE t(id int, name text, x numeric, y int);\n"
            f"\\copy t FROM '{source}' WITH (FORMAT csv)\n"
            f"\\copy t TO '{out}'{opts}\n"
            "CREATE TEMP TABLE t2 (LIKE t);\n"
            f"\\copy t2 FROM '{out}'{opts}\n"
            f"\\copy (SELECT * FROM t2 ORDER BY id) TO '{back}' WITH (FORMAT csv)\n"
            "SELECT count(*), count(y), sum(x) FROM t2;\n"
        )
        run = run_tool(unified, "psql", *PSQL, "-v", "ON_ERROR_STOP=1", "-f", str(script), port=port)
        assert run.returncode == 0, run.stderr
        outputs[label] = (run.stdout, out.read_bytes(), back.read_text(encoding="utf-8"))
    assert outputs["proxy"] == outputs["direct"]
    assert outputs["proxy"][2] == source.read_text(encoding="utf-8")
    assert "5000" in outputs["proxy"][0]


def test_copy_from_stdin_error_midway(unified: PgCluster, proxy: ProxyThread, tmp_path: Path) -> None:
    script = tmp_path / "bad_copy.sql"
    script.write_text(
        "CREATE TEMP TABLE t(id int);\n"
        "COPY t FROM STDIN;\n1\n2\nnot a number\n3\n\\.\n"
        "SELECT count(*) FROM t;\n"
        "COPY t FROM STDIN;\n4\n5\n\\.\n"
        "SELECT count(*) FROM t;\n"
    )
    direct, through = _both(unified, proxy, "-f", str(script))
    _assert_same(direct, through, unified, proxy)
    assert 'invalid input syntax for type integer: "not a number"' in through.stderr
    assert through.stdout.split().count("2") >= 1


def test_psql_meta_commands(unified: PgCluster, proxy: ProxyThread) -> None:
    """psql's describe commands run catalogue queries: same output either way."""
    for meta in (r"\dt pg_catalog.pg_class", r"\du app", r"\l app", r"\df pg_catalog.now", r"\conninfo"):
        direct, through = _both(unified, proxy, "-c", meta)
        _assert_same(direct, through, unified, proxy)
        assert through.returncode == 0


def test_large_objects_use_function_call(unified: PgCluster, proxy: ProxyThread, tmp_path: Path) -> None:
    """``\\lo_import``/``\\lo_export`` go through libpq's fast-path FunctionCall ('F') messages."""
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(300_000))
    for label, port in (("direct", None), ("proxy", proxy.port)):
        exported = tmp_path / f"exported-{label}.bin"
        script = tmp_path / f"lo-{label}.sql"
        script.write_text(
            "BEGIN;\n"
            f"\\lo_import '{source}'\n"
            "SELECT length(lo_get(:LASTOID)) AS size;\n"
            f"\\lo_export :LASTOID '{exported}'\n"
            "\\lo_unlink :LASTOID\n"
            "COMMIT;\n"
        )
        run = run_tool(unified, "psql", *PSQL, "-v", "ON_ERROR_STOP=1", "-f", str(script), port=port)
        assert run.returncode == 0, run.stderr
        assert "300000" in run.stdout
        assert exported.read_bytes() == source.read_bytes()


def test_empty_queries(unified: PgCluster, proxy: ProxyThread) -> None:
    for sql in (";", "  ", ";;select 1;;", "-- only a comment"):
        direct, through = _both(unified, proxy, "-c", sql)
        _assert_same(direct, through, unified, proxy)
