"""Pure parts of the control plane: quoting, SCRAM verifiers, placement, migration files,
credential reprs, and the DDL rendered from a hand-made clone spec."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import scramp

from pgtenantproxy.config import ConfigError, TenancySection, TenantServerSection, parse_config
from pgtenantproxy.sqltext import QualifiedName, ident, literal
from pgtenantproxy.tenancy.errors import MigrationError, PlacementError
from pgtenantproxy.tenancy.passwords import (
    alter_role_password_sql,
    create_role_sql,
    generate_password,
    scram_verifier,
)
from pgtenantproxy.tenancy.registry import TenantCredentials
from pgtenantproxy.tenancy.schema_migrations import load_migrations
from pgtenantproxy.tenancy.schema_model import (
    CloneSpec,
    ColumnSpec,
    ConstraintSpec,
    DomainType,
    EnumType,
    IndexSpec,
    SequenceSpec,
    TableSpec,
    render_ddl,
)
from pgtenantproxy.tenancy.servers import TenantServer, choose_server


def test_identifiers_and_literals_are_quoted_like_postgresql() -> None:
    assert ident("shop_user_7") == '"shop_user_7"'
    assert ident('we"ird') == '"we""ird"'
    assert literal("it's") == "'it''s'"
    assert literal("back\\slash") == "E'back\\\\slash'"
    for bad in ("a\x00b",):
        with pytest.raises(ValueError, match="NUL"):
            ident(bad)
        with pytest.raises(ValueError, match="NUL"):
            literal(bad)
    with pytest.raises(ValueError):
        ident("")
    assert QualifiedName.parse("users") == QualifiedName("public", "users")
    assert QualifiedName.parse("app.users").sql == '"app"."users"'


def verify_scram(verifier: str, password: str) -> None:
    """Authenticate ``password`` against a PostgreSQL SCRAM verifier, as the server would."""
    mechanism, rest = verifier.split("$", 1)
    assert mechanism == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored, server = (base64.b64decode(k) for k in keys.split(":"))
    auth = (base64.b64decode(salt), stored, server, int(iterations))
    server_side = scramp.ScramMechanism("SCRAM-SHA-256").make_server(lambda _user: auth)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "u", password)
    server_side.set_client_first(client.get_client_first())
    client.set_server_first(server_side.get_server_first())
    server_side.set_client_final(client.get_client_final())
    client.set_server_final(server_side.get_server_final())


def test_scram_verifier_authenticates_the_password_and_only_it() -> None:
    password = generate_password()
    assert len(password) >= 40 and generate_password() != password
    verifier = scram_verifier(password)
    assert verifier.startswith("SCRAM-SHA-256$4096:") and password not in verifier
    verify_scram(verifier, password)
    with pytest.raises(scramp.ScramException):
        verify_scram(verifier, password + "x")
    assert scram_verifier(password) != verifier  # fresh salt
    for sql in (create_role_sql("shop_user_1", password), alter_role_password_sql("shop_user_1", password)):
        assert password not in sql and "SCRAM-SHA-256$" in sql and '"shop_user_1"' in sql
    assert "NOSUPERUSER" in create_role_sql("r", password) and "NOINHERIT" in create_role_sql("r", password)


def servers(*names: str) -> list[TenantServer]:
    return [TenantServer(TenantServerSection(name=n, port=5433 + i)) for i, n in enumerate(names)]


def test_placement_policies() -> None:
    three = servers("a", "b", "c")
    assert choose_server(three, "fewest_tenants", 1, {"a": 3, "b": 1, "c": 1}).name == "b"
    assert choose_server(three, "fewest_tenants", 1, {}).name == "a"
    picks = [choose_server(three, "hash", shop, {}).name for shop in range(1, 301)]
    assert picks == [choose_server(three, "hash", shop, {"a": 99}).name for shop in range(1, 301)]
    assert all(80 < picks.count(n) < 120 for n in "abc")
    assert choose_server(three, "hash", 42, {}).name == "a"  # stable across runs and machines
    with pytest.raises(PlacementError, match="no \\[\\[tenant_servers\\]\\]"):
        choose_server([], "fewest_tenants", 1, {})
    assert TenantServer(TenantServerSection(host="h", port=1)).name == "h:1"


def test_migration_files(tmp_path: Path) -> None:
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    migrations = load_migrations(tmp_path)
    assert [(m.version, m.name, m.label) for m in migrations] == [
        (1, "first", "0001_first"),
        (2, "second", "0002_second"),
    ]
    assert migrations[0].checksum != migrations[1].checksum and "SELECT" not in repr(migrations[0])
    (tmp_path / "02_again.sql").write_text("SELECT 3;")
    with pytest.raises(MigrationError, match=r"version 2 is used by 0002_second\.sql too"):
        load_migrations(tmp_path)
    (tmp_path / "02_again.sql").unlink()
    (tmp_path / "bad name.sql").write_text("")
    with pytest.raises(MigrationError, match=r"<version>_<name>\.sql"):
        load_migrations(tmp_path)
    with pytest.raises(MigrationError, match="not a directory"):
        load_migrations(tmp_path / "missing")


def test_credentials_repr_masks_the_password() -> None:
    creds = TenantCredentials(7, "t1", "::1", 5433, "shop_7_db", "shop_user_7", "p@ss/word")
    for text in (repr(creds), str(creds), repr([creds]), f"{creds}"):
        assert "p@ss/word" not in text and "***" in text
    assert creds.dsn() == "postgresql://shop_user_7:p%40ss%2Fword@[::1]:5433/shop_7_db"
    assert creds.connect_kwargs()["password"] == "p@ss/word"


def test_rendered_ddl_pins_the_shop_and_orders_dependencies() -> None:
    seq = SequenceSpec(
        QualifiedName("public", "t_id_seq"),
        "integer",
        1,
        1,
        1,
        2147483647,
        1,
        False,
        (QualifiedName("public", "t"), "id"),
    )
    spec = CloneSpec(
        tenant_column="shop_id",
        schemas=("app",),
        enums=(EnumType(QualifiedName("public", "mood"), ("ok", "it's")),),
        domains=(
            DomainType(
                QualifiedName("public", "pos"),
                "integer",
                None,
                "1",
                True,
                (("pos_check", "CHECK ((VALUE > 0))"),),
            ),
        ),
        sequences=(seq,),
        tables=(
            TableSpec(
                QualifiedName("app", "t"),
                (
                    ColumnSpec("id", "integer", True, "nextval('public.t_id_seq'::regclass)"),
                    ColumnSpec("shop_id", "bigint", True, "current_setting('x')::bigint"),
                    ColumnSpec("code", "text", False, collation='pg_catalog."C"'),
                    ColumnSpec("n", "integer", True, identity="a", identity_sequence=seq),
                    ColumnSpec("twice", "integer", False, generated="(n * 2)"),
                ),
                unlogged=True,
            ),
        ),
        constraints=(
            ConstraintSpec(QualifiedName("app", "t"), "t_fk", "f", "FOREIGN KEY (id) REFERENCES app.t(id)"),
            ConstraintSpec(QualifiedName("app", "t"), "t_pkey", "p", "PRIMARY KEY (id)"),
        ),
        indexes=(
            IndexSpec(QualifiedName("app", "t"), "t_code", "CREATE INDEX t_code ON app.t USING btree (code)"),
        ),
    )
    ddl = render_ddl(spec, 42)
    assert '"shop_id" bigint DEFAULT 42 NOT NULL' in ddl and "current_setting" not in ddl
    assert 'CONSTRAINT pgtenantproxy_tenant_pin CHECK ("shop_id" = 42)' in ddl
    assert "CREATE TYPE \"public\".\"mood\" AS ENUM ('ok', 'it''s');" in ddl
    assert 'CREATE DOMAIN "public"."pos" AS integer DEFAULT 1 NOT NULL CONSTRAINT "pos_check" CHECK' in ddl
    assert 'CREATE UNLOGGED TABLE "app"."t"' in ddl and 'COLLATE pg_catalog."C"' in ddl
    assert (
        "GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME" in ddl and "GENERATED ALWAYS AS ((n * 2)) STORED" in ddl
    )
    order = [
        ddl.index(s)
        for s in (
            'CREATE SCHEMA IF NOT EXISTS "app"',
            "CREATE TYPE",
            "CREATE DOMAIN",
            "CREATE SEQUENCE",
            "CREATE UNLOGGED TABLE",
            "OWNED BY",
            "PRIMARY KEY",
            "FOREIGN KEY",
            "CREATE INDEX",
        )
    ]
    assert order == sorted(order)
    text_pin = CloneSpec(
        "shop_id", (TableSpec(QualifiedName("public", "u"), (ColumnSpec("shop_id", "text", True),)),)
    )
    assert "DEFAULT '42'::text" in render_ddl(text_pin, 42) and "= '42'::text" in render_ddl(text_pin, 42)


def test_tenancy_config_keys() -> None:
    section = parse_config({}).tenancy
    assert section == TenancySection()
    assert (section.previous_keys_env, section.shops_query) == ("TENANT_ENCRYPTION_KEY_PREVIOUS", "auto")
    with pytest.raises(ConfigError, match="role_name: must contain"):
        parse_config({"tenancy": {"role_name": "shop_user"}})
    with pytest.raises(ConfigError, match="placement: must be one of"):
        parse_config({"tenancy": {"placement": "random"}})
