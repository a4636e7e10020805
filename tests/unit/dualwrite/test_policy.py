"""Retry schedule, dirty-key grouping, error classes, metrics, capture DDL, config."""

from __future__ import annotations

import asyncpg
import pytest

from pgtenantproxy.config import ConfigError, parse_config
from pgtenantproxy.dualwrite.capture import CapturedTable, function_name, install_sql, remove_sql
from pgtenantproxy.dualwrite.errors import TargetUnavailable, is_transient
from pgtenantproxy.dualwrite.outbox import plan
from pgtenantproxy.dualwrite.retry import RetryPolicy
from pgtenantproxy.dualwrite.stats import Histogram, MirrorStats
from pgtenantproxy.sqltext import QualifiedName


def test_the_seed_schedule_tries_four_times_over_seven_seconds() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(n) for n in (1, 2, 3)] == [1000, 2000, 4000]
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, False, True]
    assert RetryPolicy(5, (10, 20)).delay_ms(5) == 20  # the last delay repeats
    assert RetryPolicy(0, (10,)).exhausted(1)
    with pytest.raises(ValueError):
        RetryPolicy(1, ())


def row(id: int, tbl: str, pk: str, attempts: int = 0, age_s: float = 1.0) -> dict[str, object]:
    return {"id": id, "tbl": tbl, "pk": pk, "attempts": attempts, "fresh": attempts == 0, "age_s": age_s}


def test_entries_are_grouped_by_key_in_order_of_their_oldest_entry() -> None:
    claim = plan([  # type: ignore[arg-type]
        row(10, "public.a", "[1]"), row(11, "public.b", "[1]"),
        row(12, "public.a", "[1]", attempts=2, age_s=3.0), row(14, "public.a", "[2]"),
    ])
    assert claim.claimed == 4
    assert [(w.table, w.key, w.entry_ids) for w in claim.due] == [
        ("public.a", "[1]", [10, 12]), ("public.b", "[1]", [11]), ("public.a", "[2]", [14]),
    ]
    first = claim.due[0]
    assert first.attempts == 2 and first.fresh == 1 and first.age_s == 3.0


def test_connection_and_server_state_errors_are_transient_data_errors_are_not() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert is_transient(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert is_transient(asyncpg.exceptions.AdminShutdownError("shutting down"))
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert is_transient(asyncpg.exceptions.TooManyConnectionsError("full"))
    assert is_transient(asyncpg.exceptions.LockNotAvailableError("fence"))
    assert is_transient(asyncpg.exceptions.SerializationError("retry"))
    assert is_transient(asyncpg.InterfaceError("connection is closed"))
    assert not is_transient(asyncpg.exceptions.UndefinedColumnError("no such column"))
    assert not is_transient(asyncpg.exceptions.InsufficientPrivilegeError("denied"))
    assert not is_transient(asyncpg.exceptions.ForeignKeyViolationError("fk"))
    assert not is_transient(asyncpg.exceptions._base.DataError("bad parameter"))
    assert "shop 3: target database unavailable" in str(TargetUnavailable(3, OSError("refused")))


def test_histogram_quantiles_are_bucket_upper_bounds() -> None:
    h = Histogram()
    for value in (0.001, 0.02, 0.02, 0.3, 100.0):
        h.observe(value)
    assert h.count == 5 and h.quantile(0.5) == 0.025 and h.quantile(0.6) == 0.025
    assert h.quantile(0.8) == 0.5 and h.quantile(1.0) == float("inf")
    assert Histogram().quantile(0.99) == 0.0


def test_counters_are_kept_per_table() -> None:
    stats = MirrorStats()
    stats.count("mirrored", "public.a", 3)
    stats.count("mirrored", "public.b")
    stats.count("failed", "public.a", 0)
    assert stats.totals["mirrored"] == 4 and stats.per_table["public.a"]["mirrored"] == 3
    assert "failed" not in stats.per_table["public.a"]
    assert stats.snapshot()["mirrored"] == 4


def test_capture_is_a_generated_statement_function_per_table_and_a_key_change_row_trigger() -> None:
    table = CapturedTable(QualifiedName("app", "Order Lines"), "shop_id", ("order_id", "line"))
    sql = install_sql(table)
    function = function_name(table)
    assert function.schema == "pgtenantproxy" and function.name.startswith("capture_")
    assert function == function_name(QualifiedName("app", "Order Lines"))  # found again by name alone
    for event, table_kind in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        assert (f'AFTER {event} ON "app"."Order Lines" REFERENCING {table_kind} TABLE AS pgtenantproxy_'
                f"{table_kind.lower()} FOR EACH STATEMENT EXECUTE FUNCTION {function.sql}()") in sql
    assert ("SELECT n.\"shop_id\"::bigint, 'app.Order Lines', jsonb_build_array(n.\"order_id\", n.\"line\"),"
            " left(TG_OP, 1) FROM pgtenantproxy_new AS n WHERE n.\"shop_id\" IS NOT NULL") in sql
    assert "FROM pgtenantproxy_old AS o" in sql and "SECURITY DEFINER SET search_path = pg_catalog" in sql
    assert ('WHEN (((OLD."order_id", OLD."line", OLD."shop_id")) IS DISTINCT FROM '
            '((NEW."order_id", NEW."line", NEW."shop_id")))') in sql
    assert "pgtenantproxy.capture_key_change('shop_id', 'app.Order Lines', 'order_id', 'line')" in sql
    assert "BEFORE TRUNCATE" in sql
    removal = remove_sql(QualifiedName("app", "Order Lines"))
    assert removal.count("DROP TRIGGER IF EXISTS") == 5
    assert f"DROP FUNCTION IF EXISTS {function.sql}()" in removal


def test_dual_write_config_defaults_seed_variable_and_checks() -> None:
    section = parse_config({}, environ={}).dual_write
    assert (section.enabled, section.max_lag_ms, section.retry_attempts) == (False, 1000, 3)
    assert section.retry_backoff_ms == (1000, 2000, 4000) and section.run_worker
    assert parse_config({}, environ={"ENABLE_DUAL_WRITE": "true"}).dual_write.enabled
    overridden = parse_config({"dual_write": {"enabled": True}}, environ={"ENABLE_DUAL_WRITE": "false"})
    assert not overridden.dual_write.enabled
    with pytest.raises(ConfigError, match="ENABLE_DUAL_WRITE"):
        parse_config({}, environ={"ENABLE_DUAL_WRITE": "maybe"})
    with pytest.raises(ConfigError, match=r"\[dual_write\] retry_backoff_ms"):
        parse_config({"dual_write": {"retry_backoff_ms": []}}, environ={})
    with pytest.raises(ConfigError, match=r"\[dual_write\] max_lag_ms"):
        parse_config({"dual_write": {"max_lag_ms": 0}}, environ={})
