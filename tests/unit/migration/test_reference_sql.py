"""The SQL of reference copies, built from a table's definition (pure): DDL, triggers, signature."""

from __future__ import annotations

from pgtenantproxy.config import ReferenceTable
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.reference import HAS_DATABASE
from pgtenantproxy.migration.reference_catalog import (
    CopyColumn,
    ReferenceDef,
    copy_marker,
    install_sql,
    is_copy_marker,
    trigger_args,
)
from pgtenantproxy.sqltext import QualifiedName

COLUMNS = (CopyColumn("id", "integer", True, None), CopyColumn("shop id", "bigint", True, None),
           CopyColumn("name", "text", False, '"pg_catalog"."C"'))


def definition(shop_column: str | None = "shop id",
               columns: tuple[CopyColumn, ...] = COLUMNS) -> ReferenceDef:
    ref = ReferenceTable('app.us"ers', tuple(c.name for c in columns), shop_column)
    return ReferenceDef(ref, QualifiedName("app", 'us"ers'), columns, ("id",))


def test_the_copy_has_exactly_the_listed_columns_and_the_key() -> None:
    assert definition().create_sql() == (
        'CREATE TABLE "app"."us""ers" ("id" integer NOT NULL, "shop id" bigint NOT NULL, '
        '"name" text COLLATE "pg_catalog"."C", PRIMARY KEY ("id"))')
    info = definition().info
    assert (info.label, info.tenant_column, [c.name for c in info.pk]) == ('app.us"ers', "shop id", ["id"])
    assert definition(None).info.tenant_column == ""


def test_the_signature_follows_the_definition() -> None:
    base = definition().signature
    assert definition().signature == base and len(base) == 16
    assert definition(None).signature != base  # the filter
    retyped = (COLUMNS[0], CopyColumn("shop id", "integer", True, None), COLUMNS[2])
    assert definition(columns=retyped).signature != base
    assert definition(columns=COLUMNS[:2]).signature != base


def test_capture_triggers_log_keys_and_a_refill() -> None:
    sql = install_sql(definition())
    assert trigger_args(definition()) == ('app.us"ers', definition().signature, "id")
    assert "AFTER INSERT OR DELETE ON \"app\".\"us\"\"ers\" FOR EACH ROW" in sql
    assert ('WHEN (ROW(OLD."id", OLD."shop id", OLD."name")::text IS DISTINCT FROM '
            'ROW(NEW."id", NEW."shop id", NEW."name")::text)') in sql
    assert "AFTER TRUNCATE ON" in sql and "FOR EACH STATEMENT" in sql
    assert sql.endswith("INSERT INTO pgtenantproxy.reference_changes (tbl, key)"
                        " VALUES ('app.us\"ers', NULL);")


def test_copy_markers() -> None:
    marker = definition().marker()
    assert marker == copy_marker('app.us"ers', definition().signature)
    assert is_copy_marker(marker, 'app.us"ers') and not is_copy_marker(marker, "app.users")
    assert not is_copy_marker("", 'app.us"ers') and not is_copy_marker(None, 'app.us"ers')


def test_shops_with_a_database() -> None:
    assert HAS_DATABASE == {ph.PROVISIONED, ph.BACKFILLING, ph.BACKFILLED, ph.MIRRORING, ph.READS_ON_TENANT,
                            ph.TENANT_PRIMARY, ph.RETIRED}
