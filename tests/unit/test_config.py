"""config.toml validation: every key of every section, named in every message.

The generic tests walk the dataclass fields, so a key added later is checked
too: a value of the wrong type is refused with a message naming
``[section] key``, and each default is itself a valid value. The explicit
tests pin the rules of the proxy's own keys.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from pgtenantproxy.config import (
    LIST_SECTIONS,
    SECTIONS,
    Config,
    ConfigError,
    ReferenceTable,
    load_config,
    parse_config,
    parse_listen,
    restart_keys,
)

NO_ENV: dict[str, str] = {}


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, environ=NO_ENV)


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


def _all_fields() -> list[tuple[str, bool, dataclasses.Field[Any], Any]]:
    out: list[tuple[str, bool, dataclasses.Field[Any], Any]] = []
    for sections, is_list in ((SECTIONS, False), (LIST_SECTIONS, True)):
        for name, cls in sections.items():
            hints = typing.get_type_hints(cls)
            out.extend((name, is_list, f, hints[f.name]) for f in dataclasses.fields(cls))
    return out


ALL_FIELDS = _all_fields()
FIELD_IDS = [f"{name}.{f.name}" for name, _, f, _ in ALL_FIELDS]


def _doc(section: str, is_list: bool, key: str, value: Any) -> dict[str, Any]:
    return {section: [{key: value}] if is_list else {key: value}}


def _where(section: str, is_list: bool, key: str) -> str:
    return f"[{section}.0] {key}" if is_list else f"[{section}] {key}"


def _wrong_values(hint: Any) -> list[Any]:
    """Values no field of this annotation may accept."""
    args = set(typing.get_args(hint)) - {type(None)}
    kinds = args or {hint}
    wrong: list[Any] = [{"a": 1}]
    if str not in kinds:
        wrong.append("text")
    if not kinds & {int, float}:
        wrong.append(7)
    if bool not in kinds:
        wrong.append(True)
    if not any(typing.get_origin(k) in (tuple, list) for k in kinds):
        wrong.append(["a"])
    return wrong


@pytest.mark.parametrize(("section", "is_list", "fld", "hint"), ALL_FIELDS, ids=FIELD_IDS)
def test_every_key_refuses_a_wrong_type(section: str, is_list: bool, fld: Any, hint: Any) -> None:
    where = _where(section, is_list, fld.name)
    for value in _wrong_values(hint):
        message = refused(_doc(section, is_list, fld.name, value))
        assert message.startswith(f"{where}: "), (value, message)


@pytest.mark.parametrize(("section", "is_list", "fld", "hint"), ALL_FIELDS, ids=FIELD_IDS)
def test_every_default_is_a_valid_value(section: str, is_list: bool, fld: Any, hint: Any) -> None:
    default = fld.default
    if default is None or default is dataclasses.MISSING:
        return
    value = list(default) if isinstance(default, tuple) else default
    config = parse(_doc(section, is_list, fld.name, value))
    built = getattr(config, section)
    built = built[0] if is_list else built
    assert getattr(built, fld.name) == default


def test_defaults() -> None:
    config = parse({})
    assert config.proxy.listen == "127.0.0.1:6432"
    assert (config.proxy.host, config.proxy.port) == ("127.0.0.1", 6432)
    assert config.proxy.max_client_connections == 1000
    assert config.unified.port == 5432
    assert config.logging.level == "info"


@pytest.mark.parametrize(
    ("section", "key", "value", "text"),
    [
        ("proxy", "max_client_connections", 0, "must be greater than 0"),
        ("proxy", "max_client_connections", -5, "must be greater than 0"),
        ("proxy", "auth_timeout_ms", 0, "must be greater than 0"),
        ("proxy", "shutdown_timeout_ms", -1, "must be 0 or greater"),
        ("proxy", "listen", "nope", "expected host:port"),
        ("unified", "port", 0, "must be a TCP port"),
        ("unified", "port", 65536, "must be a TCP port"),
        ("unified", "sslmode", "bogus", "must be one of disable, prefer, require"),
        ("unified", "connect_timeout_ms", 0, "must be greater than 0"),
        ("logging", "level", "verbose", "must be one of debug, info, warning, error"),
        ("federation", "max_shops_per_query", 0, "must be greater than 0"),
        ("federation", "max_shops_per_query", -3, "must be greater than 0"),
        ("federation", "refresh_interval_s", 0, "must be greater than 0"),
        ("federation", "refresh_interval_s", -0.5, "must be greater than 0"),
    ],
)
def test_bad_values_name_the_key(section: str, key: str, value: Any, text: str) -> None:
    message = refused({section: {key: value}})
    assert message.startswith(f"[{section}] {key}: ")
    assert text in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("proxy", "max_client_connections", 1),
        ("proxy", "shutdown_timeout_ms", 0),
        ("proxy", "listen", "127.0.0.1:0"),
        ("unified", "port", 1),
        ("unified", "port", 65535),
        ("unified", "sslmode", "require"),
        ("logging", "level", "debug"),
        ("federation", "max_shops_per_query", 1),
        ("federation", "refresh_interval_s", 0.05),
    ],
)
def test_edge_values_accepted(section: str, key: str, value: Any) -> None:
    assert getattr(getattr(parse({section: {key: value}}), section), key) == value


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_client_connections", "10", "expected an integer, got '10'"),
        ("max_client_connections", 1.5, "expected an integer, got 1.5"),
        ("max_client_connections", True, "expected an integer, got True"),
        ("listen", 6432, "expected a string, got 6432"),
        ("tls_cert", 1, "expected a string, got 1"),
    ],
)
def test_wrong_types_proxy(key: str, value: Any, expected: str) -> None:
    assert refused({"proxy": {key: value}}) == f"[proxy] {key}: {expected}"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:6432", "127.0.0.1", 6432),
        ("[::1]:6432", "::1", 6432),
        ("localhost:1", "localhost", 1),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[fe80::1%lo]:5", "fe80::1%lo", 5),
    ],
)
def test_listen_parses(listen: str, host: str, port: int) -> None:
    assert parse_listen(listen) == (host, port)
    config = parse({"proxy": {"listen": listen}})
    assert (config.proxy.host, config.proxy.port) == (host, port)


@pytest.mark.parametrize(
    "listen",
    ["", "6432", ":6432", "127.0.0.1", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:-1", "127.0.0.1:65536",
     "[::1]", "[::1]6432", "[::1]:", "[]:6432", "host:64 32"],
)
def test_bad_listen_strings(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
    assert refused({"proxy": {"listen": listen}}).startswith("[proxy] listen: expected host:port")


def test_unknown_key() -> None:
    message = refused({"proxy": {"max_clients": 5}})
    assert message.startswith("[proxy] max_clients: unknown key")
    assert "max_client_connections" in message  # the known keys are listed


def test_unknown_section() -> None:
    assert refused({"proxyy": {}}).startswith("[proxyy]: unknown section")


def test_section_must_be_a_table() -> None:
    assert refused({"proxy": 5}) == "[proxy]: must be a table"


def test_env_override_into_a_section_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^\[routing\]: must be a table"):
        parse_config({"routing": 5}, environ={"MIGRATION_STRATEGY": "tenant"})


def test_tls_cert_without_key(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    assert refused({"proxy": {"tls_cert": str(cert)}}) == (
        "[proxy] tls_cert: tls_cert and tls_key must be set together"
    )
    assert "must be set together" in refused({"proxy": {"tls_key": str(cert)}})


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    missing = str(tmp_path / "missing.key")
    assert refused({"proxy": {"tls_cert": str(cert), "tls_key": missing}}) == (
        f"[proxy] tls_key: file not found: {missing}"
    )
    config = parse({"proxy": {"tls_cert": str(cert), "tls_key": str(cert)}})
    assert config.proxy.tls_key == str(cert)


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verify_needs_root_cert(mode: str) -> None:
    assert refused({"unified": {"sslmode": mode}}).startswith("[unified] sslrootcert:")


def test_config_is_frozen() -> None:
    config = parse({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.proxy.max_client_connections = 5  # type: ignore[misc]


def test_restart_keys() -> None:
    old = parse({"proxy": {"listen": "127.0.0.1:6432", "max_client_connections": 10}})
    same = parse({"proxy": {"listen": "127.0.0.1:6432", "max_client_connections": 20},
                  "logging": {"level": "debug"}, "unified": {"port": 5433}})
    assert restart_keys(old, same) == []
    moved = parse({"proxy": {"listen": "127.0.0.1:7000"}})
    assert restart_keys(old, moved) == ["[proxy] listen"]
    assert restart_keys(old, old) == []


def test_restart_keys_tls(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    old = parse({})
    new = parse({"proxy": {"tls_cert": str(pem), "tls_key": str(pem)}})
    assert restart_keys(old, new) == ["[proxy] tls_cert", "[proxy] tls_key"]


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[proxy]\nlisten = "[::1]:7432"\nshutdown_timeout_ms = 0\n[unified]\nport = 5999\n')
    config = load_config(path)
    assert (config.proxy.host, config.proxy.port) == ("::1", 7432)
    assert config.unified.port == 5999
    assert config.source == str(path)


def test_load_config_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[proxy]\nmax_client_connections = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: [proxy] max_client_connections: must be greater than 0")


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"[proxy\n", "invalid TOML"),
        (b"listen = \n", "invalid TOML"),
        (b"[proxy]\nlisten = \"\xff\xfe\"\n", "not valid UTF-8"),
    ],
)
def test_load_config_bad_files(tmp_path: Path, content: bytes, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=text):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)  # a directory


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.toml"
    config = parse_config(__import__("tomllib").loads(example.read_text()), environ=NO_ENV)
    assert config.proxy.listen == "127.0.0.1:6432"


def test_federation_section() -> None:
    defaults = parse({}).federation
    assert (defaults.max_shops_per_query, defaults.refresh_interval_s) == (64, 5.0)
    assert parse({"federation": {"refresh_interval_s": 2}}).federation.refresh_interval_s == 2.0
    assert refused({"federation": {"max_shops_per_query": 2.5}}) == (
        "[federation] max_shops_per_query: expected an integer, got 2.5")
    assert refused({"federation": {"refresh_interval_s": "5s"}}) == (
        "[federation] refresh_interval_s: expected a number, got '5s'")
    assert refused({"federation": {"max_shops": 3}}).startswith("[federation] max_shops: unknown key")


REFERENCE_TOML = """
[tenancy]
reference_max_rows = 500
reference_sync_interval_s = 2
[[tenancy.reference_tables]]
table = "device_models"
columns = ["id", "brand_id", "model"]
[[tenancy.reference_tables]]
table = "app.users"
columns = ["id", "shop_id", "name", "role"]
shop_column = "shop_id"
"""


def test_reference_tables_parse(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(REFERENCE_TOML)
    tenancy = load_config(path).tenancy
    assert tenancy.reference_tables == (
        ReferenceTable("public.device_models", ("id", "brand_id", "model"), None),
        ReferenceTable("app.users", ("id", "shop_id", "name", "role"), "shop_id"),
    )
    assert (tenancy.reference_max_rows, tenancy.reference_sync_interval_s) == (500, 2.0)
    defaults = parse({}).tenancy
    assert (defaults.reference_tables, defaults.reference_max_rows, defaults.reference_sync_interval_s) == (
        (), 100_000, 0.5)


def _reference(**entry: Any) -> dict[str, Any]:
    return {"tenancy": {"reference_tables": [{"table": "t", "columns": ["id"], **entry}]}}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"tenancy": {"reference_tables": [{"columns": ["id"]}]}},
         "[tenancy.reference_tables.0] table: required"),
        ({"tenancy": {"reference_tables": [{"table": "t"}]}},
         "[tenancy.reference_tables.0] columns: required"),
        (_reference(columns=[]), "[tenancy.reference_tables.0] columns: must be a non-empty list"),
        (_reference(columns=["id", "id"]),
         "[tenancy.reference_tables.0] columns: must be a non-empty list of distinct column names"),
        (_reference(columns="id"), "[tenancy.reference_tables.0] columns: expected a list, got 'id'"),
        (_reference(table="a.b.c"), '[tenancy.reference_tables.0] table: must be a table name, "table" or '
                                    '"schema.table"'),
        (_reference(table=".t"), "[tenancy.reference_tables.0] table: must be a table name"),
        (_reference(shop_column="shop_id"), "[tenancy.reference_tables.0] shop_column: must be one of its "
                                            "columns (id), got 'shop_id'"),
        (_reference(shop_column=""), "[tenancy.reference_tables.0] shop_column: must not be empty"),
        (_reference(filter="x"), "[tenancy.reference_tables.0] filter: unknown key (known: table, columns, "
                                 "shop_column)"),
        ({"tenancy": {"reference_tables": ["t"]}}, "[tenancy] reference_tables: expected an array of tables "
                                                   "([[tenancy.reference_tables]])"),
        ({"tenancy": {"reference_tables": [{"table": "t", "columns": ["id"]},
                                           {"table": "public.t", "columns": ["id"]}]}},
         "[tenancy.reference_tables.1] table: public.t is listed twice in reference_tables"),
        ({"tenancy": {"reference_max_rows": 0}},
         "[tenancy] reference_max_rows: must be greater than 0, got 0"),
        ({"tenancy": {"reference_sync_interval_s": 0}},
         "[tenancy] reference_sync_interval_s: must be greater than 0, got 0"),
    ],
)
def test_reference_table_errors_name_the_key(data: dict[str, Any], expected: str) -> None:
    assert refused(data).startswith(expected)


@pytest.mark.parametrize("listed", ["t", "public.t"])
def test_a_table_is_not_both_tenant_and_reference(listed: str) -> None:
    message = refused({"tenancy": {"tenant_tables": ["repairs", listed],
                                   "reference_tables": [{"table": "public.t", "columns": ["id"]}]}})
    assert message.startswith("[tenancy.reference_tables.0] table: public.t is also listed in [tenancy] "
                              "tenant_tables")
    auto = parse({"tenancy": {"reference_tables": [{"table": "public.t", "columns": ["id"]}]}})
    assert auto.tenancy.tenant_tables == "auto"  # under auto, discovery leaves reference tables out


def test_reference_tables_reload_without_restart() -> None:
    old = parse({})
    new = parse(_reference())
    assert restart_keys(old, new) == []
