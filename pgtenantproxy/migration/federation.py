"""Federated reads, the migration's side: the foreign objects on unified for every cut-over shop.

A shop in ``tenant_primary`` or ``retired`` keeps its rows in its own
database; the proxy reads them from unified through ``postgres_fdw``, under
the names of :mod:`pgtenantproxy.lifecycle.federation`. :func:`federate_shop`
creates or refreshes them (idempotent, safe to run again at any time):

1. **common** (one transaction, serialised by ``(SETUP_LOCK, 0)``): the
   extension ``postgres_fdw``, the schema :data:`FDW_SCHEMA` (``USAGE`` to
   ``PUBLIC``) and the guard :data:`GUARD_FUNCTION` (STABLE; SQLSTATE 0A000
   outside READ COMMITTED, since one snapshot cannot span databases);
2. **the reader** on the shop's database, as the tenant server's admin: the
   login role ``<shop role>_reader`` (roles are per server), marked
   ``pgtenantproxy shop N reader`` (a role of that name without the mark is
   never touched), ``NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT``,
   ``default_transaction_read_only = on``, ``CONNECT`` on the database,
   ``USAGE`` on the tenant tables' schemas and ``SELECT`` on the tenant
   tables only, with a fresh random password (sent as a SCRAM verifier);
3. **the foreign server** :func:`server_name` (host and port of the shop's
   ``[[tenant_servers]]`` entry, its database, ``async_capable``,
   ``fetch_size``, ``updatable``/``truncatable`` off, ``sslmode`` when TLS is
   required) and the ``PUBLIC`` **user mapping** to the reader. The reader's
   password is set on the shop's database first, then in the mapping (the
   same order when :func:`rotate_reader` rotates it);
4. **the foreign tables** (one transaction): :func:`shop_schema` dropped and
   created again, one foreign table per tenant table with unified's columns
   and types, ``SELECT`` granted to exactly the roles that may read unified's
   table (its owner, the grantees of ``SELECT`` in its ACL, ``PUBLIC``
   included, and column grants as column grants), and the columns'
   :func:`signature` recorded in ``pgtenantproxy.federation`` (its NOTIFY
   tells every proxy).

Invariants: one federation of a shop runs at a time (session advisory lock
``(FEDERATION_LOCK, shop)`` on unified); a reader that a foreign table reaches
can do nothing but read the tenant tables; no role reads more through a
foreign table than it may read from unified's table; no password and no DSN
with a password is ever logged, printed or put in an error (the mapping's
statement runs with statement logging off when the role may turn it off).

:class:`FederationKeeper` is the phase keeper's periodic job (every
``[federation] refresh_interval_s``): it federates again every shop whose
rows are on its own database and whose recorded signature, or the foreign
tables' grants, no longer match unified. :func:`unfederate_shop` removes it
all again; :func:`rotate_reader` gives the reader a new password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pgtenantproxy.config import Config, TenantServerSection
from pgtenantproxy.dualwrite.reverse import connect_tenant_admin
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.federation import (
    FDW_SCHEMA,
    GUARD,
    GUARD_FUNCTION,
    foreign_table,
    forget_federation,
    read_columns,
    read_federation,
    record_federation,
    server_name,
    shop_schema,
    signature,
)
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.sqltext import QualifiedName, ident, literal
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from pgtenantproxy.tenancy.crypto import CryptoError
from pgtenantproxy.tenancy.errors import TenancyError, UnknownTenantError, describe
from pgtenantproxy.tenancy.passwords import create_role_sql, generate_password, scram_verifier
from pgtenantproxy.tenancy.registry import TenantCredentials
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

#: Advisory lock namespace: one federation (or reader rotation) of a shop at a time (second int: the shop).
FEDERATION_LOCK = 0x5047545A
#: Advisory lock namespace (second int 0): the objects every shop shares (extension, schema, guard).
SETUP_LOCK = 0x5047545B
READER_SUFFIX = "_reader"
FETCH_SIZE = 1000
#: The longest the rebuild of a shop's foreign tables waits for reads running on the old ones.
LOCK_TIMEOUT = "10s"
#: Longest pause between two keeper attempts at a shop whose federation keeps failing.
MAX_BACKOFF_S = 300.0
#: What a federation may fail with (reported per shop; anything else is a bug and propagates).
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, MigrationError,
            TenancyError, CryptoError)
#: Server options this module manages (others an operator adds are left alone).
MANAGED_OPTIONS = ("host", "port", "dbname", "async_capable", "fetch_size", "updatable", "truncatable",
                   "sslmode")
#: Statement logging off for the statement that carries the mapping's password (each set only when the
#: role may: superuser or GRANT SET ON PARAMETER; otherwise left as it is).
QUIET = (("log_statement", "none"), ("log_min_duration_statement", "-1"),
         ("log_min_error_statement", "panic"), ("pg_stat_statements.track_utility", "off"))

GUARD_SQL = f"""
CREATE OR REPLACE FUNCTION {ident(FDW_SCHEMA)}.{ident(GUARD)}() RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $guard$
DECLARE
    level text := pg_catalog.current_setting('transaction_isolation');
BEGIN
    IF level <> 'read committed' THEN
        RAISE EXCEPTION 'this read needs rows of shops on their own databases, which cannot be read in a % '
                        'transaction: a snapshot cannot span databases', pg_catalog.upper(level)
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Run it at READ COMMITTED, or name one shop (shop_id = N) so that it runs on that '
                         'shop''s own database.';
    END IF;
    RETURN true;
END
$guard$;
GRANT EXECUTE ON FUNCTION {ident(FDW_SCHEMA)}.{ident(GUARD)}() TO PUBLIC;
"""

#: Who may read each relation: (namespace, label, column or '', grantee or '' for PUBLIC, is owner row).
_READERS = """
WITH rel AS (
    SELECT c.oid, c.relowner, c.relacl, n.nspname::text AS nsp, {label} AS tbl
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE {where}
)
SELECT nsp, tbl, '' AS col, pg_get_userbyid(relowner)::text AS grantee, true AS owner FROM rel
UNION
SELECT nsp, tbl, '', CASE x.grantee WHEN 0 THEN '' ELSE pg_get_userbyid(x.grantee)::text END, false
FROM rel CROSS JOIN LATERAL aclexplode(rel.relacl) x WHERE x.privilege_type = 'SELECT'
UNION
SELECT nsp, tbl, a.attname::text, CASE x.grantee WHEN 0 THEN '' ELSE pg_get_userbyid(x.grantee)::text END,
       false
FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
CROSS JOIN LATERAL aclexplode(a.attacl) x WHERE x.privilege_type = 'SELECT'
"""
_UNIFIED_READERS = _READERS.format(label="n.nspname || '.' || c.relname",
                                   where="n.nspname || '.' || c.relname = ANY($1::text[]) "
                                         "AND c.relkind IN ('r', 'p')")
_FOREIGN_READERS = _READERS.format(label="c.relname::text",
                                   where="n.nspname = ANY($1::text[]) AND c.relkind = 'f'")

#: (column or None for "the relation exists", grantee or '' for PUBLIC)
Grant = tuple[str | None, str]


class FederationError(MigrationError):
    """Federating a shop failed or was refused (the message names the shop and what to do)."""


@dataclass(frozen=True)
class FederationResult:
    """One :func:`federate_shop`: the foreign tables built and the signature recorded."""

    shop_id: int
    tables: int
    signature: str
    created: bool  # False: the shop was federated before, its objects were refreshed

    def describe(self) -> str:
        what = "federated" if self.created else "federation refreshed"
        return (f"shop {self.shop_id}: {what}: {self.tables} foreign tables in {shop_schema(self.shop_id)} "
                f"(signature {self.signature})")

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "tables": self.tables, "signature": self.signature,
                "created": self.created, "schema": shop_schema(self.shop_id)}


def reader_role(shop_role: str) -> str:
    """The read-only login of a shop whose own role is ``shop_role``."""
    name = shop_role + READER_SUFFIX
    if len(name.encode()) > 63:
        raise FederationError(f"role name {name!r} is longer than PostgreSQL's 63 bytes: choose a shorter "
                              "[tenancy] role_name")
    return name


def reader_marker(shop_id: int) -> str:
    return f"pgtenantproxy shop {int(shop_id)} reader"


# --- federate ----------------------------------------------------------------------------
async def federate_shop(tenancy: TenancyService, shop_id: int) -> FederationResult:
    """Create or refresh shop ``shop_id``'s foreign objects on unified (see the module doc)."""
    tables = await tenancy.tenant_tables()
    creds = await tenancy.registry.get(shop_id)
    section = tenancy.servers.get(creds.server).section
    reader = reader_role(creds.user)
    async with tenancy.pool.acquire() as conn, _shop_locked(conn, shop_id):
        await ensure_common(conn, tenancy.config)
        labels = [str(t) for t in tables]
        columns = await read_columns(conn, labels)
        missing = sorted(set(labels) - set(columns))
        if missing:
            raise FederationError(f"shop {shop_id}: tenant tables not found on unified: {', '.join(missing)}")
        created = shop_id not in await read_federation(conn)
        password = generate_password()
        await _set_reader(tenancy, creds, reader, password, tables)
        await _ensure_server(conn, shop_id, section, creds.database)
        await _set_user_mapping(conn, shop_id, reader, password)
        sig = signature(columns)
        await _build_foreign_tables(conn, shop_id, tables, columns, sig)
    result = FederationResult(shop_id, len(labels), sig, created)
    logger.info("%s", result.describe())
    return result


async def ensure_common(conn: asyncpg.Connection, config: Config) -> None:
    """The extension, :data:`FDW_SCHEMA` and the guard, in one transaction (every shop shares them)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", SETUP_LOCK)
        if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgres_fdw')"):
            try:
                async with conn.transaction():
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
            except asyncpg.PostgresError as exc:
                raise FederationError(
                    "federated reads need the extension postgres_fdw in the unified database "
                    f"{config.unified.database!r}, and creating it failed ({exc.sqlstate}: {exc}). "
                    "It is not a trusted extension: a superuser must run CREATE EXTENSION postgres_fdw there "
                    "once (the server needs PostgreSQL's contrib modules installed) and, unless [unified] "
                    "admin_user "
                    f"({config.unified.admin_user}) is a superuser, GRANT USAGE ON FOREIGN DATA WRAPPER "
                    f"postgres_fdw TO {ident(config.unified.admin_user)}") from None
        schema = ident(FDW_SCHEMA)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}; GRANT USAGE ON SCHEMA {schema} TO PUBLIC;"
                           + GUARD_SQL)


async def _set_reader(
    tenancy: TenancyService, creds: TenantCredentials, reader: str, password: str,
    tables: Sequence[QualifiedName],
) -> None:
    """The reader on the shop's database: created, or its password and attributes set again; its rights."""
    tenant = await connect_tenant_admin(tenancy.registry, tenancy.servers, creds.shop_id)
    try:
        r = ident(reader)
        schemas = ", ".join(ident(s) for s in sorted({t.schema for t in tables}))
        async with tenant.transaction():
            note = await _reader_note(tenant, reader)
            if note is None:
                await tenant.execute(create_role_sql(reader, password))
                await tenant.execute(f"COMMENT ON ROLE {r} IS {literal(reader_marker(creds.shop_id))}")
            elif note != reader_marker(creds.shop_id):
                raise FederationError(
                    f"shop {creds.shop_id}: role {reader} exists on tenant server {creds.server} and was not "
                    "created by pgtenantproxy for this shop: drop or rename it")
            else:
                await tenant.execute(
                    f"ALTER ROLE {r} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION "
                    f"NOBYPASSRLS PASSWORD {literal(scram_verifier(password))}")
            await tenant.execute(
                f"ALTER ROLE {r} SET default_transaction_read_only = on;"
                f"GRANT CONNECT ON DATABASE {ident(creds.database)} TO {r};"
                f"GRANT USAGE ON SCHEMA {schemas} TO {r};"
                f"REVOKE ALL ON ALL TABLES IN SCHEMA {schemas} FROM {r};"
                f"GRANT SELECT ON TABLE {', '.join(t.sql for t in tables)} TO {r};")
    except asyncpg.PostgresError as exc:
        raise FederationError(f"shop {creds.shop_id}: the reader {reader} on its database: "
                              f"{exc.sqlstate}: {exc}") from None
    finally:
        await tenant.close(timeout=2.0)


async def _reader_note(admin: asyncpg.Connection, reader: str) -> str | None:
    """None when the role does not exist, else its comment ('' without one)."""
    rows = await admin.fetch(
        "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1", reader)
    return str(rows[0][0]) if rows else None


def server_options(section: TenantServerSection, database: str, version: int) -> dict[str, str]:
    """The foreign server's options for a shop database on ``section`` (unified at server ``version``)."""
    options = {"host": section.host, "port": str(section.port), "dbname": database,
               "fetch_size": str(FETCH_SIZE), "updatable": "false"}
    if version >= 140000:
        options |= {"async_capable": "true", "truncatable": "false"}
    if section.sslmode not in ("disable", "prefer"):
        options["sslmode"] = section.sslmode
    return options


async def _ensure_server(conn: asyncpg.Connection, shop_id: int, section: TenantServerSection,
                         database: str) -> None:
    server = ident(server_name(shop_id))
    wanted = server_options(section, database, int(await conn.fetchval("SHOW server_version_num")))
    rows = await conn.fetch("SELECT srvoptions FROM pg_foreign_server WHERE srvname = $1",
                            server_name(shop_id))
    try:
        if not rows:
            options = ", ".join(f"{k} {literal(v)}" for k, v in wanted.items())
            await conn.execute(
                f"CREATE SERVER {server} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({options})")
            return
        current = dict(o.split("=", 1) for o in rows[0]["srvoptions"] or [])
        changes = [f"SET {k} {literal(v)}" if k in current else f"ADD {k} {literal(v)}"
                   for k, v in wanted.items() if current.get(k) != v]
        changes += [f"DROP {k}" for k in MANAGED_OPTIONS if k in current and k not in wanted]
        if changes:
            await conn.execute(f"ALTER SERVER {server} OPTIONS ({', '.join(changes)})")
    except asyncpg.InsufficientPrivilegeError as exc:
        raise FederationError(
            f"shop {shop_id}: foreign server {server_name(shop_id)}: {exc}; the control-plane role needs "
            "USAGE ON FOREIGN DATA WRAPPER postgres_fdw (and to own the server)") from None


async def _set_user_mapping(conn: asyncpg.Connection, shop_id: int, reader: str, password: str) -> None:
    """The ``PUBLIC`` mapping to the reader (replaced in one transaction, statement logging off)."""
    server = ident(server_name(shop_id))
    try:
        async with conn.transaction():
            await _quiet(conn)
            await conn.execute(f"DROP USER MAPPING IF EXISTS FOR PUBLIC SERVER {server}")
            await conn.execute(f"CREATE USER MAPPING FOR PUBLIC SERVER {server} "
                               f"OPTIONS (user {literal(reader)}, password {literal(password)})")
    except asyncpg.PostgresError as exc:
        text = f"{exc.sqlstate}: {exc}".replace(password, "***")
        raise FederationError(
            f"shop {shop_id}: user mapping of server {server_name(shop_id)}: {text}") from None


async def _quiet(conn: asyncpg.Connection) -> None:
    """Inside a transaction: statement logging off for it, each setting only where the role may."""
    for name, value in QUIET:
        if await conn.fetchval("SELECT current_setting($1, true)", name) is None:
            continue  # not a setting of this server (pg_stat_statements not loaded)
        try:
            async with conn.transaction():  # a savepoint: a refusal leaves the transaction usable
                await conn.execute("SELECT set_config($1, $2, true)", name, value)
        except asyncpg.PostgresError:
            logger.debug("%s not changed for the user mapping's statement (not allowed)", name)


async def _build_foreign_tables(
    conn: asyncpg.Connection, shop_id: int, tables: Sequence[QualifiedName],
    columns: dict[str, tuple[tuple[str, str], ...]], sig: str,
) -> None:
    schema = ident(shop_schema(shop_id))
    server = ident(server_name(shop_id))
    readers = await _grants(conn, [str(t) for t in tables])
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {literal(LOCK_TIMEOUT)}")
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"
                           f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC")
        for remote in tables:
            label = str(remote)
            table = f"{schema}.{ident(foreign_table(label))}"
            cols = ", ".join(f"{ident(name)} {typ}" for name, typ in columns[label])
            options = f"schema_name {literal(remote.schema)}, table_name {literal(remote.name)}"
            statements = [f"CREATE FOREIGN TABLE {table} ({cols}) SERVER {server} OPTIONS ({options})"]
            statements += _grant_statements(table, readers.get(("", label), frozenset()))
            await conn.execute(";".join(statements))
        await record_federation(conn, shop_id, sig, len(tables))


def _grant_statements(table: str, grants: frozenset[Grant]) -> list[str]:
    def who(grantee: str) -> str:
        return "PUBLIC" if grantee == "" else ident(grantee)

    whole = sorted(g for c, g in grants if c == "")
    by_column = sorted((c, g) for c, g in grants if c is not None and c != "")
    out = [f"GRANT SELECT ON {table} TO {', '.join(who(g) for g in whole)}"] if whole else []
    return out + [f"GRANT SELECT ({ident(c)}) ON {table} TO {who(g)}" for c, g in by_column]


async def _grants(
    conn: asyncpg.Connection, keys: Sequence[str], *, foreign: bool = False
) -> dict[tuple[str, str], frozenset[Grant]]:
    """Who may read each relation: unified's tenant tables (``keys``: labels; key ``('', label)``; the
    owner counts as a reader), or the foreign tables in the schemas ``keys`` (key ``(schema, label)``;
    only their grants count: the owner is the control plane). Each has the entry ``(None, '')``."""
    found: dict[tuple[str, str], set[Grant]] = {}
    unified = not foreign
    for r in await conn.fetch(_FOREIGN_READERS if foreign else _UNIFIED_READERS, list(keys)):
        key = ("" if unified else r["nsp"], r["tbl"])
        grants = found.setdefault(key, set())
        if r["owner"]:
            grants.add((None, ""))
            if unified:
                grants.add(("", r["grantee"]))
        else:
            grants.add((r["col"], r["grantee"]))
    return {k: frozenset(v) for k, v in found.items()}


# --- rotate, unfederate --------------------------------------------------------------------
async def rotate_reader(tenancy: TenancyService, shop_id: int) -> None:
    """A new password for the shop's reader: set on the shop's database first, then in the user mapping."""
    creds = await tenancy.registry.get(shop_id)
    reader = reader_role(creds.user)
    async with tenancy.pool.acquire() as conn, _shop_locked(conn, shop_id):
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = $1)",
                                   server_name(shop_id)):
            raise FederationError(f"shop {shop_id} is not federated (no foreign server "
                                  f"{server_name(shop_id)} on unified): nothing to rotate")
        password = generate_password()
        tenant = await connect_tenant_admin(tenancy.registry, tenancy.servers, shop_id)
        try:
            if await _reader_note(tenant, reader) != reader_marker(shop_id):
                raise FederationError(f"shop {shop_id}: its reader {reader} is missing on its tenant server "
                                      "(or not pgtenantproxy's): federate the shop again")
            await tenant.execute(f"ALTER ROLE {ident(reader)} PASSWORD {literal(scram_verifier(password))}")
        finally:
            await tenant.close(timeout=2.0)
        await _set_user_mapping(conn, shop_id, reader, password)
    logger.info("shop %s: the reader's password was rotated", shop_id)


async def unfederate_shop(tenancy: TenancyService, shop_id: int) -> bool:
    """Remove the shop's foreign tables, user mapping, server, federation row and reader; True when
    anything was there. The reader is kept (with a warning) when the shop's credentials are gone."""
    async with tenancy.pool.acquire() as conn, _shop_locked(conn, shop_id):
        async with conn.transaction():
            had = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = $1)"
                " OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2)"
                " OR EXISTS (SELECT 1 FROM pgtenantproxy.federation WHERE shop_id = $3)",
                server_name(shop_id), shop_schema(shop_id), shop_id)
            await conn.execute(f"DROP SCHEMA IF EXISTS {ident(shop_schema(shop_id))} CASCADE")
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_foreign_server WHERE srvname = $1)",
                                   server_name(shop_id)):
                await conn.execute(f"DROP SERVER {ident(server_name(shop_id))} CASCADE")  # and its mapping
            await forget_federation(conn, shop_id)
        dropped = await _drop_reader(tenancy, shop_id)
    if had or dropped:
        logger.info("shop %s: federation removed", shop_id)
    return bool(had) or dropped


async def _drop_reader(tenancy: TenancyService, shop_id: int) -> bool:
    try:
        creds = await tenancy.registry.get(shop_id)
    except UnknownTenantError:
        logger.warning("shop %s: no credentials registered: its reader role (if any) is left on its tenant "
                       "server", shop_id)
        return False
    reader = reader_role(creds.user)
    tenant = await connect_tenant_admin(tenancy.registry, tenancy.servers, shop_id)
    try:
        note = await _reader_note(tenant, reader)
        if note is None:
            return False
        if note != reader_marker(shop_id):
            logger.warning("shop %s: role %s was not created by pgtenantproxy for this shop: left alone",
                           shop_id, reader)
            return False
        async with tenant.transaction():
            await tenant.execute(f"DROP OWNED BY {ident(reader)}; DROP ROLE {ident(reader)}")
        return True
    finally:
        await tenant.close(timeout=2.0)


class _ShopLock:
    """``async with``: the session advisory lock ``(FEDERATION_LOCK, shop)`` on ``conn``."""

    def __init__(self, conn: asyncpg.Connection, shop_id: int) -> None:
        self.conn = conn
        self.key = shop_lock_key(shop_id)

    async def __aenter__(self) -> None:
        await self.conn.execute("SELECT pg_advisory_lock($1, $2)", FEDERATION_LOCK, self.key)

    async def __aexit__(self, *exc: object) -> None:
        if not self.conn.is_closed():
            await self.conn.execute("SELECT pg_advisory_unlock($1, $2)", FEDERATION_LOCK, self.key)


def _shop_locked(conn: asyncpg.Connection, shop_id: int) -> _ShopLock:
    return _ShopLock(conn, shop_id)


# --- the keeper's job ------------------------------------------------------------------------
class FederationKeeper:
    """Keeps every cut-over shop's foreign tables in step with unified (see the module doc)."""

    def __init__(self, tenancy: TenancyService, config: Callable[[], Config] | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.tenancy = tenancy
        self._config = config or (lambda: tenancy.config)
        self._clock = clock
        self._failing: dict[int, tuple[int, float]] = {}  # shop -> (failures in a row, next attempt at)
        self.rebuilt = 0

    @property
    def interval_s(self) -> float:
        return float(self._config().federation.refresh_interval_s)

    async def stale_shops(self) -> list[int]:
        """Shops whose rows are on their own database and whose foreign tables do not match unified."""
        pool = self.tenancy.pool
        shops = sorted(s for s, r in (await read_phases(pool)).items() if r.effective in ph.OWN_DATABASE)
        if not shops:
            return []
        recorded = await read_federation(pool)
        labels = [str(t) for t in await self.tenancy.tenant_tables()]
        async with pool.acquire() as conn:
            current = signature(await read_columns(conn, labels))
            me = str(await conn.fetchval("SELECT current_user"))
            unified = await _grants(conn, labels)
            foreign = await _grants(conn, [shop_schema(s) for s in shops], foreign=True)

        def mine(grants: frozenset[Grant]) -> frozenset[Grant]:
            return frozenset(g for g in grants if g[1] != me or g[0] is None)

        wanted = {label: mine(unified.get(("", label), frozenset())) for label in labels}
        stale = []
        for shop in shops:
            built = {label: mine(g) for (nsp, label), g in foreign.items() if nsp == shop_schema(shop)}
            if recorded.get(shop) != current or built != wanted:
                stale.append(shop)
        return stale

    async def run_once(self) -> list[FederationResult]:
        """One check of every shop in ``tenant_primary`` or ``retired``; the shops federated again."""
        done: list[FederationResult] = []
        now = self._clock()
        for shop in await self.stale_shops():
            failures, next_at = self._failing.get(shop, (0, 0.0))
            if now < next_at:
                continue
            try:
                done.append(await federate_shop(self.tenancy, shop))
            except FAILURES as exc:
                failures += 1
                backoff = min(self.interval_s * 2 ** min(failures, 16), MAX_BACKOFF_S)
                self._failing[shop] = (failures, self._clock() + backoff)
                logger.warning("shop %s: foreign tables not refreshed (attempt %d, next in %.0f s): %s", shop,
                               failures, backoff, describe(exc))
                continue
            self._failing.pop(shop, None)
        self.rebuilt += len(done)
        return done


__all__ = ["FEDERATION_LOCK", "GUARD_FUNCTION", "FederationError", "FederationKeeper", "FederationResult",
           "federate_shop", "reader_role", "rotate_reader", "unfederate_shop"]
