"""The key facts' pure parts: the refill settings, the key directory's SQL text, the proofs' lines."""

from __future__ import annotations

import pytest

from pgtenantproxy.config import ConfigError, parse_config
from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.lifecycle.keys import FkProof, ForeignKey
from pgtenantproxy.migration.fk_proofs import fk_label, proof_dict, proof_line
from pgtenantproxy.migration.key_directory import NOT_ROUTED, RANGES, TEXT, islands_sql, kind, text_keys_sql
from pgtenantproxy.migration.readiness import Readiness
from pgtenantproxy.migration.verify_report import VerificationReport
from pgtenantproxy.sqltext import QualifiedName


def table(pk: tuple[ColumnInfo, ...], name: str = "repairs") -> TableInfo:
    return TableInfo(label=f"public.{name}", name=QualifiedName("public", name), tenant_column="shop_id",
                     columns=(*pk, ColumnInfo("shop_id", "bigint")), pk=pk)


def test_refill_settings_have_defaults_and_name_the_key_when_wrong() -> None:
    section = parse_config({}, environ={}).migration
    assert (section.id_block_refill_at, section.id_block_refill_interval_s) == (0.8, 30)
    half = parse_config({"migration": {"id_block_refill_at": 0.5}}, environ={})
    assert half.migration.id_block_refill_at == 0.5
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match=r"\[migration\] id_block_refill_at: must be greater than 0"):
            parse_config({"migration": {"id_block_refill_at": bad}}, environ={})
    with pytest.raises(ConfigError, match=r"\[migration\] id_block_refill_interval_s: must be greater"):
        parse_config({"migration": {"id_block_refill_interval_s": 0}}, environ={})


def test_each_key_shape_has_its_place_in_the_directory() -> None:
    assert kind(table((ColumnInfo("id", "integer"),))) == RANGES
    assert kind(table((ColumnInfo("id", "smallint"),))) == RANGES
    assert kind(table((ColumnInfo("id", "bigint"),))) == RANGES
    assert kind(table((ColumnInfo("id", "uuid"),))) == TEXT
    assert kind(table((ColumnInfo("id", "numeric"),))) == TEXT
    assert kind(table((ColumnInfo("a", "integer"), ColumnInfo("b", "integer")))) == NOT_ROUTED


def test_names_in_the_directory_sql_are_quoted() -> None:
    odd = TableInfo(label='we"ird.Ta ble', name=QualifiedName('we"ird', "Ta ble"), tenant_column='sh"op',
                    columns=(ColumnInfo('I"d', "bigint"), ColumnInfo('sh"op', "integer")),
                    pk=(ColumnInfo('I"d', "bigint"),))
    sql = islands_sql(odd)
    assert '"we""ird"."Ta ble" AS x' in sql and 'x."I""d"::int8' in sql
    assert 'x."sh""op" = $3::text::integer' in sql and "row_number() OVER (ORDER BY u.k)" in sql
    assert "PARTITION BY u.mine ORDER BY u.k" in sql and "int8range(min(s.k), max(s.k), '[]')" in sql
    assert "d.shop_id <> $2" in sql  # the ranges of the shops retired before bound the islands
    text = text_keys_sql(odd)
    assert 'x."I""d"::text' in text
    assert 'FROM "we""ird"."Ta ble" AS x WHERE x."sh""op" = $3::text::integer' in text


def test_proof_lines_name_the_foreign_key_and_the_crossing_rows() -> None:
    fk = ForeignKey("public.repairs", "repairs_customer_id_fkey", ("customer_id",), "public.customers",
                    ("id",))
    good = FkProof(fk, True)
    assert proof_line(good) == ("foreign key public.repairs.customer_id -> public.customers: "
                                "0 cross-shop references")
    bad = FkProof(fk, False, 3, ({"child_key": [7], "child_shop": 1, "parent_shop": 2, "references": [40]},))
    assert proof_line(bad) == ("foreign key public.repairs.customer_id -> public.customers: 3 cross-shop "
                               "references (it pins nothing), e.g. public.repairs [7] (shop 1) -> "
                               "public.customers [40] (shop 2)")
    assert fk_label(ForeignKey("public.notes", "n", ("a", "b"), "public.pairs", ("x", "y"))) == (
        "public.notes.(a, b) -> public.pairs")
    data = proof_dict(bad)
    assert data["cross_shop_references"] == 3 and data["samples"][0]["child_key"] == [7]

    ready = Readiness(5, foreign_keys=[good, bad])
    assert ready.ready and ready.cross_shop_foreign_keys == [bad]
    assert [d["consistent"] for d in ready.as_dict()["foreign_keys"]] == [True, False]
    report = VerificationReport(foreign_keys=[good], foreign_keys_error=None)
    assert report.foreign_key_lines() == [proof_line(good)]
    assert report.as_dict()["foreign_keys"][0]["consistent"]
    failed = VerificationReport(foreign_keys_error="PostgresError: boom")
    assert failed.foreign_key_lines() == ["foreign keys not proved: PostgresError: boom"]
