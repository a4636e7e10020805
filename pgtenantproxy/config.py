"""``config.toml`` parsed into frozen dataclasses: one snapshot, validated whole.

Each section is a frozen dataclass; each field's metadata carries its check and
whether a change needs a restart. :func:`load_config` either returns a complete
valid :class:`Config` or raises :class:`ConfigError` naming the key at fault
(``[proxy] max_client_connections: ...``). A reload builds a new snapshot and
swaps it in only when valid; nothing mutates a live config.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Check = Callable[[Any], str | None]  # returns an error text, or None when valid


class ConfigError(ValueError):
    """A configuration problem; the message names the key at fault."""


def _opt(default: Any, check: Check | None = None, *, restart: bool = False, required: bool = False) -> Any:
    return field(default=default, metadata={"check": check, "restart": restart, "required": required})


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into (host, port)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected host:port, for example 127.0.0.1:6432")
    return host, int(port)


def _tables(value: Any) -> str | None:
    if isinstance(value, str) and value != "auto":
        return 'must be "auto" or a list of table names'
    return None


def _template(value: Any) -> str | None:
    if "{shop_id}" not in value:
        return "must contain {shop_id}"
    return None


def _listen(value: Any) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxySection:
    listen: str = _opt("127.0.0.1:6432", _listen, restart=True)
    max_client_connections: int = _opt(1000, _positive)
    auth_timeout_ms: int = _opt(60000, _positive)
    shutdown_timeout_ms: int = _opt(30000, _non_negative)
    tls_cert: str | None = _opt(None, restart=True)
    tls_key: str | None = _opt(None, restart=True)

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


@dataclass(frozen=True)
class UnifiedSection:
    host: str = _opt("127.0.0.1")
    port: int = _opt(5432, _port)
    database: str = _opt("handyshop")
    sslmode: str = _opt("prefer", _one_of("disable", "prefer", "require", "verify-ca", "verify-full"))
    sslrootcert: str | None = _opt(None)
    connect_timeout_ms: int = _opt(10000, _positive)


    admin_user: str = _opt("postgres")
    admin_password_env: str = _opt("UNIFIED_ADMIN_PASSWORD")

    @property
    def admin_password(self) -> str | None:
        """The control-plane password, read from the environment variable named in the config."""
        return os.environ.get(self.admin_password_env)


@dataclass(frozen=True)
class TenantServerSection:
    """One ``[[tenant_servers]]`` entry: a PostgreSQL server that hosts shop databases."""

    name: str = _opt("")
    host: str = _opt("127.0.0.1")
    port: int = _opt(5432, _port)
    admin_user: str = _opt("postgres")
    admin_password_env: str = _opt("POSTGRES_SUPERUSER_PASSWORD")
    sslmode: str = _opt("prefer", _one_of("disable", "prefer", "require", "verify-ca", "verify-full"))
    sslrootcert: str | None = _opt(None)
    connect_timeout_ms: int = _opt(10000, _positive)

    @property
    def admin_password(self) -> str | None:
        return os.environ.get(self.admin_password_env)


def _table_label(value: Any) -> str | None:
    schema, dot, name = value.rpartition(".")
    if not name or (dot and (not schema or "." in schema)):
        return 'must be a table name, "table" or "schema.table"'
    return None


def _column_list(value: Any) -> str | None:
    if not value or any(not c for c in value) or len(set(value)) != len(value):
        return "must be a non-empty list of distinct column names"
    return None


def _non_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


def table_label(text: str) -> str:
    """``schema.table`` for a table name as written in the config (bare: ``public``)."""
    return text if "." in text else f"public.{text}"


@dataclass(frozen=True)
class ReferenceTable:
    """One ``[[tenancy.reference_tables]]`` entry: a global table every shop database holds a read-only
    copy of (see :mod:`pgtenantproxy.migration.reference`). ``table`` is normalised to ``schema.table``."""

    table: str = _opt("", _table_label, required=True)
    #: The columns the copies hold (nothing else is copied: deny by default); must include the primary key.
    columns: tuple[str, ...] = _opt((), _column_list, required=True)
    #: When set, each shop's copy holds only the rows whose column equals its shop id (a filtered copy).
    shop_column: str | None = _opt(None, _non_empty)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", table_label(self.table))


@dataclass(frozen=True)
class TenancySection:
    tenant_column: str = _opt("shop_id")
    #: "auto" (every table with tenant_column) or an explicit list of table names.
    tenant_tables: str | tuple[str, ...] = _opt("auto", lambda v: _tables(v))
    database_name: str = _opt("shop_{shop_id}_db", lambda v: _template(v))
    role_name: str = _opt("shop_user_{shop_id}", lambda v: _template(v))
    placement: str = _opt("fewest_tenants", _one_of("fewest_tenants", "hash"))
    #: 64 hex chars (AES-256 key); TENANT_ENCRYPTION_KEY overrides. Prefer the env var.
    encryption_key_env: str = _opt("TENANT_ENCRYPTION_KEY")
    #: env var with comma-separated previous keys (decrypt only), for key rotation.
    previous_keys_env: str = _opt("TENANT_ENCRYPTION_KEY_PREVIOUS")
    credential_cache_ttl_s: int = _opt(3600, _positive)
    provision_concurrency: int = _opt(8, _positive)
    #: SQL listing every shop id for ``provision --all``; "auto" = distinct tenant_column values.
    shops_query: str = _opt("auto")
    #: Global tables every shop database holds a read-only copy of (``[[tenancy.reference_tables]]``);
    #: never tenant tables, also under ``tenant_tables = "auto"``.
    reference_tables: tuple[ReferenceTable, ...] = _opt(())
    #: A reference table with more rows than this on unified (filtered: its largest shop's) is refused.
    reference_max_rows: int = _opt(100_000, _positive)
    #: How often the phase keeper brings the reference copies up to date.
    reference_sync_interval_s: float = _opt(0.5, _positive)


IDENTIFY_SOURCES = ("startup", "set", "comment", "query")
STRATEGIES = ("unified", "tenant", "percentage", "shop-list", "canary")


def _identify(value: Any) -> str | None:
    bad = [v for v in value if v not in IDENTIFY_SOURCES]
    if bad or len(set(value)) != len(value):
        return f"must list distinct sources among {', '.join(IDENTIFY_SOURCES)}"
    return None


def _percentage(value: Any) -> str | None:
    return None if 0 <= value <= 100 else "must be between 0 and 100"


def _rate(value: Any) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0.0 and 1.0"


def _share(value: Any) -> str | None:
    return None if 0.0 < value < 1.0 else "must be greater than 0.0 and less than 1.0"


@dataclass(frozen=True)
class RoutingSection:
    strategy: str = _opt("unified", _one_of(*STRATEGIES))
    percentage: int = _opt(0, _percentage)
    shop_ids: tuple[int, ...] = _opt(())
    canary_shop_ids: tuple[int, ...] = _opt(())
    enable_tenant_reads: bool = _opt(True)
    enable_fallback: bool = _opt(True)
    verify_consistency: bool = _opt(False)
    verify_sample_rate: float = _opt(0.01, _rate)
    log_inconsistencies: bool = _opt(True)
    identify: tuple[str, ...] = _opt(IDENTIFY_SOURCES, _identify)
    analysis_cache_size: int = _opt(10000, _positive)
    fallback_ban_ms: int = _opt(30000, _non_negative)
    #: A tenant read with no complete answer within this is cancelled and re-run on unified.
    tenant_timeout_ms: int = _opt(5000, _positive)
    #: How often the routing catalog (ready shops, tenant tables, overrides) is refreshed.
    catalog_refresh_ms: int = _opt(1000, _positive)
    #: The longest a write of a shop being cut over waits for the cutover's hold (then 55P03).
    write_hold_timeout_ms: int = _opt(10000, _positive)
    #: Routing by key: keys whose shop is remembered (LRU), the longest a lookup may take (then 0A000),
    #: and the most shop databases a key that is nowhere else is looked for on (more: 0A000).
    key_cache_size: int = _opt(100_000, _positive)
    key_lookup_timeout_ms: int = _opt(2000, _positive)
    key_confirm_limit: int = _opt(32, _positive)


@dataclass(frozen=True)
class PoolsSection:
    max_pool_size: int = _opt(20, _positive)
    idle_timeout_ms: int = _opt(30000, _positive)
    connection_timeout_ms: int = _opt(10000, _positive)
    max_total_connections: int = _opt(400, _positive)


def _backoffs(value: Any) -> str | None:
    if not value or any(v < 0 for v in value):
        return "must be a non-empty list of delays in milliseconds (0 or greater)"
    return None


@dataclass(frozen=True)
class DualWriteSection:
    """Write mirroring (:mod:`pgtenantproxy.dualwrite`); ENABLE_DUAL_WRITE overrides ``enabled``."""

    #: Install write capture at startup (``dual-write enable`` does it on demand).
    enabled: bool = _opt(False)
    #: Run the mirror worker inside the proxy (``pgtenantproxy mirror`` runs it on its own).
    run_worker: bool = _opt(True, restart=True)
    #: Reads of a shop go to its tenant database only while its mirror lag is under this.
    max_lag_ms: int = _opt(1000, _positive)
    #: Retries of a failing entry before it is dead-lettered (the first try is not counted).
    retry_attempts: int = _opt(3, _non_negative)
    #: Delay before retry 1, 2, ...; the last value repeats when there are more retries.
    retry_backoff_ms: tuple[int, ...] = _opt((1000, 2000, 4000), _backoffs)
    #: Outbox entries of one shop applied in one tenant transaction, at most.
    batch_size: int = _opt(1000, _positive)
    #: How often an idle worker looks for new outbox entries.
    poll_interval_ms: int = _opt(100, _positive)
    #: How often the lag / read-your-writes status is refreshed from the control schema.
    status_interval_ms: int = _opt(150, _positive)
    #: Shops one worker applies at the same time.
    concurrency: int = _opt(4, _positive)


@dataclass(frozen=True)
class MigrationSection:
    """The per-shop migration lifecycle (:mod:`pgtenantproxy.migration`): backfill, verification."""

    #: Shops backfilled (or verified) at the same time.
    jobs: int = _opt(4, _positive)
    #: Rows per COPY chunk of a backfill (progress, throttling and the unit of work).
    chunk_rows: int = _opt(50000, _positive)
    #: Upper bound of rows copied per second, over all shops of one backfill (0: no limit).
    throttle_rows_per_s: int = _opt(0, _non_negative)
    #: Rows per primary-key range compared by one checksum in verification.
    verify_chunk_rows: int = _opt(10000, _positive)
    #: Times a differing range is compared again (after the mirror drains) before it is reported.
    verify_rechecks: int = _opt(3, _non_negative)
    #: How long backfill and verification wait for a shop's mirror to drain.
    drain_timeout_s: int = _opt(60, _positive)
    #: How often the phase keeper (in the proxy) applies the automatic phase changes.
    keeper_interval_ms: int = _opt(500, _positive)
    #: Cutover/rollback: the longest a shop's writes are held (in-flight transactions, drain, checks,
    #: flip); past it the step is aborted and nothing changes.
    fence_timeout_ms: int = _opt(5000, _positive)
    #: Cutover/rollback: how long every live proxy instance has to acknowledge a hold or a flip.
    ack_timeout_ms: int = _opt(2000, _positive)
    #: Cutover: ids reserved in each shared sequence for a shop's own database (see docs/migration.md).
    id_block: int = _opt(1_000_000, _positive)
    #: A shop whose own database has used more than this share of its current id block gets the next
    #: block (checked by the phase keeper every ``id_block_refill_interval_s``).
    id_block_refill_at: float = _opt(0.8, _share)
    #: How often the phase keeper checks the id blocks of shops in ``tenant_primary`` and ``retired``.
    id_block_refill_interval_s: int = _opt(30, _positive)
    #: The readiness report (``cutover --check``, and the gate of ``cutover``) counts what the proxies saw
    #: in this many seconds before now (a day by default: nightly jobs are seen).
    readiness_window_s: int = _opt(86400, _positive)
    #: Where retirement writes each shop's archive (``shop_<N>/``); relative to the working directory.
    archive_dir: str = _opt("pgtenantproxy-archive")
    #: Retire a shop only when verification finds its tenant database identical
    #: (seed: VERIFY_BEFORE_RETIREMENT).
    verify_before_retirement: bool = _opt(True)
    #: Archive a shop's rows before deleting them from unified (seed: ARCHIVE_BEFORE_DELETE).
    archive_before_delete: bool = _opt(True)


@dataclass(frozen=True)
class FederationSection:
    """Federated reads: unified reads cut-over shops' rows through ``postgres_fdw`` foreign tables."""

    #: The most cut-over shops one read on unified may read through their foreign tables.
    max_shops_per_query: int = _opt(64, _positive)
    #: How often the phase keeper checks that every cut-over shop's foreign tables match unified's tenant
    #: tables (columns, types, grants) and rebuilds those that do not.
    refresh_interval_s: float = _opt(5.0, _positive)


@dataclass(frozen=True)
class MetricsSection:
    """Prometheus exporter and the performance monitor (:mod:`pgtenantproxy.metrics`)."""

    #: Record query metrics and serve ``/metrics``; false takes recording off the data path.
    enabled: bool = _opt(True, restart=True)
    listen: str = _opt("127.0.0.1:9187", _listen, restart=True)
    #: Shops with their own series in the per-shop histogram (the rest: shop="other").
    max_shop_series: int = _opt(50, _non_negative)
    #: Queries kept in the performance monitor's rolling window (seed: MAX_METRICS_RETENTION).
    retention: int = _opt(10000, _positive)
    #: Queries slower than this are logged (fingerprint only) and counted slow
    #: (seed: SLOW_QUERY_THRESHOLD_MS).
    slow_query_threshold_ms: int = _opt(1000, _positive)
    #: The alert hook fires when a shop's P99 (over the window) goes above this...
    alert_p99_ms: int = _opt(2000, _positive)
    #: ...or its error rate above this (0.0-1.0)...
    alert_error_rate: float = _opt(0.05, _rate)
    #: ...counting only shops with at least this many queries in the window.
    alert_min_queries: int = _opt(20, _positive)
    #: How often the alert thresholds are evaluated.
    alert_interval_ms: int = _opt(5000, _positive)


@dataclass(frozen=True)
class AdminSection:
    """The admin HTTP API (:mod:`pgtenantproxy.admin`); runs when routing is on."""

    enabled: bool = _opt(True, restart=True)
    listen: str = _opt("127.0.0.1:9188", _listen, restart=True)
    #: Environment variable holding the bearer token (``TOKEN`` or ``name:TOKEN,name2:TOKEN2``).
    token_env: str = _opt("PGTENANTPROXY_ADMIN_TOKEN", restart=True)


@dataclass(frozen=True)
class LoggingSection:
    level: str = _opt("info", _one_of("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    proxy: ProxySection = field(default_factory=ProxySection)
    unified: UnifiedSection = field(default_factory=UnifiedSection)
    tenancy: TenancySection = field(default_factory=TenancySection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    pools: PoolsSection = field(default_factory=PoolsSection)
    dual_write: DualWriteSection = field(default_factory=DualWriteSection)
    migration: MigrationSection = field(default_factory=MigrationSection)
    federation: FederationSection = field(default_factory=FederationSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    admin: AdminSection = field(default_factory=AdminSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    tenant_servers: tuple[TenantServerSection, ...] = ()
    source: str | None = None  # the file it came from, for messages


#: Sections that are TOML tables, in the order they are documented.
SECTIONS: dict[str, type] = {
    "proxy": ProxySection,
    "unified": UnifiedSection,
    "tenancy": TenancySection,
    "routing": RoutingSection,
    "pools": PoolsSection,
    "dual_write": DualWriteSection,
    "migration": MigrationSection,
    "federation": FederationSection,
    "metrics": MetricsSection,
    "admin": AdminSection,
    "logging": LoggingSection,
}
#: Sections that are arrays of tables (``[[name]]``).
LIST_SECTIONS: dict[str, type] = {
    "tenant_servers": TenantServerSection,
}

def _env_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


#: The seed application's environment variables and the keys they override.
ENV_OVERRIDES: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "TENANT_DB_MAX_POOL_SIZE": ("pools", "max_pool_size", int),
    "TENANT_DB_IDLE_TIMEOUT": ("pools", "idle_timeout_ms", int),
    "TENANT_DB_CONNECTION_TIMEOUT": ("pools", "connection_timeout_ms", int),
    "MIGRATION_STRATEGY": ("routing", "strategy", str),
    "ENABLE_TENANT_READS": ("routing", "enable_tenant_reads", _env_bool),
    "ENABLE_DUAL_WRITE": ("dual_write", "enabled", _env_bool),
    "MAX_METRICS_RETENTION": ("metrics", "retention", int),
    "SLOW_QUERY_THRESHOLD_MS": ("metrics", "slow_query_threshold_ms", int),
    "VERIFY_BEFORE_RETIREMENT": ("migration", "verify_before_retirement", _env_bool),
    "ARCHIVE_BEFORE_DELETE": ("migration", "archive_before_delete", _env_bool),
}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError naming the culprit."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    try:
        return parse_config(data, source=str(p))
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate a parsed TOML document (plus the seed's environment overrides)."""
    known = [*SECTIONS, *LIST_SECTIONS]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"[{unknown[0]}]: unknown section (known: {', '.join(known)})")
    data = _apply_env(data, os.environ if environ is None else environ)
    built: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{name}]: must be a table")
        built[name] = build_section(cls, name, table)
    for name, cls in LIST_SECTIONS.items():
        items = data.get(name, [])
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise ConfigError(f"[[{name}]]: must be an array of tables")
        built[name] = tuple(build_section(cls, f"{name}.{i}", item) for i, item in enumerate(items))
    config = Config(**built, source=source)
    _check_whole(config)
    return config


def _apply_env(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The seed's environment variables override the file where they apply."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for var, (section, key, kind) in ENV_OVERRIDES.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            value: Any = kind(raw)
        except ValueError:
            raise ConfigError(f"{var} (overrides [{section}] {key}): invalid value {raw!r}") from None
        table = out.setdefault(section, {})
        if isinstance(table, dict):  # else parse_config reports "must be a table"
            table[key] = value
    superuser = environ.get("POSTGRES_SUPERUSER")
    if superuser and isinstance(out.get("tenant_servers"), list):
        out["tenant_servers"] = [
            {**server, "admin_user": superuser} if isinstance(server, Mapping) else server
            for server in out["tenant_servers"]
        ]
    return out


def build_section(cls: type, name: str, table: Mapping[str, Any]) -> Any:
    """Build one section dataclass from a TOML table, checking every key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in table:
        if key not in fields:
            raise ConfigError(f"[{name}] {key}: unknown key (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        if f.metadata.get("required") and key not in table:
            raise ConfigError(f"[{name}] {key}: required")
    for key, value in table.items():
        where = f"[{name}] {key}"
        value = _coerce(value, hints[key], where, nested=f"{name}.{key}")
        check = fields[key].metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(f"{where}: {problem}, got {value!r}")
        values[key] = value
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, *, nested: str = "") -> Any:
    """Check a TOML value against the field's annotation (``nested``: the name of the tables of an array
    of tables inside a section, ``tenancy.reference_tables``; its entries are named ``[nested.0]``)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options[:-1]:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        return _coerce(value, options[-1], where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item, where) for v in value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            if not all(isinstance(v, Mapping) for v in value):
                raise ConfigError(f"{where}: expected an array of tables ([[{nested}]]), got {value!r}")
            return tuple(build_section(item, f"{nested}.{i}", v) for i, v in enumerate(value))
        return tuple(_coerce(v, item, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _check_whole(config: Config) -> None:
    """Checks that involve more than one key."""
    proxy = config.proxy
    if (proxy.tls_cert is None) != (proxy.tls_key is None):
        raise ConfigError("[proxy] tls_cert: tls_cert and tls_key must be set together")
    for key in ("tls_cert", "tls_key"):
        value = getattr(proxy, key)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"[proxy] {key}: file not found: {value}")
    if config.unified.sslmode in ("verify-ca", "verify-full") and not config.unified.sslrootcert:
        raise ConfigError("[unified] sslrootcert: required when sslmode is verify-ca or verify-full")
    _check_reference_tables(config.tenancy)
    names: set[str] = set()
    for i, server in enumerate(config.tenant_servers):
        name = server.name or f"{server.host}:{server.port}"
        if name in names:
            raise ConfigError(f"[[tenant_servers]] {i} name: duplicate tenant server {name!r}")
        names.add(name)


def _check_reference_tables(tenancy: TenancySection) -> None:
    seen: set[str] = set()
    tenant = set() if tenancy.tenant_tables == "auto" else {table_label(t) for t in tenancy.tenant_tables}
    for i, ref in enumerate(tenancy.reference_tables):
        where = f"[tenancy.reference_tables.{i}]"
        if ref.table in seen:
            raise ConfigError(f"{where} table: {ref.table} is listed twice in reference_tables")
        seen.add(ref.table)
        if ref.table in tenant:
            raise ConfigError(
                f"{where} table: {ref.table} is also listed in [tenancy] tenant_tables; a table is either a "
                "tenant table (its rows belong to shops and move to their databases) or a reference table "
                "(every shop database holds a read-only copy), not both")
        if ref.shop_column is not None and ref.shop_column not in ref.columns:
            raise ConfigError(f"{where} shop_column: must be one of its columns ({', '.join(ref.columns)}), "
                              f"got {ref.shop_column!r}")


def restart_keys(old: Config, new: Config) -> list[str]:
    """Keys whose change only takes effect after a restart."""
    changed = []
    if old.tenant_servers != new.tenant_servers:
        changed.append("[[tenant_servers]]")
    for name in SECTIONS:
        a, b = getattr(old, name), getattr(new, name)
        for f in dataclasses.fields(a):
            if f.metadata.get("restart") and getattr(a, f.name) != getattr(b, f.name):
                changed.append(f"[{name}] {f.name}")
    return changed
