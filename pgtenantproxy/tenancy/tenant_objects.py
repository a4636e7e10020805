"""What provisioning does on a tenant server, one function per object.

Ownership model of a shop database: the database and every object in it belong
to the server's admin role; the shop role may only log in (``CONNECT``, nothing
for ``PUBLIC``) and read and write rows (``SELECT, INSERT, UPDATE, DELETE`` on the
tenant tables, ``USAGE, SELECT, UPDATE`` on their sequences, and the same by
default privileges on whatever later migrations create). It cannot alter or
drop a table, so it cannot remove the ``CHECK (shop_id = N)`` pin, and it has
no privilege on any other database.

Markers: every role and database created here carries the comment
``pgtenantproxy shop <id>``. Cleanup of leftovers and deprovisioning drop only
objects that carry the marker of the shop in question, so an object of the same
name that pgtenantproxy did not create is never touched.

Each tenant database also gets a private ``pgtenantproxy`` schema (admin only)
recording which shop it belongs to and which tenant schema migrations it has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from pgtenantproxy.sqltext import QualifiedName, ident, literal
from pgtenantproxy.tenancy.errors import ProvisioningError
from pgtenantproxy.tenancy.passwords import create_role_sql
from pgtenantproxy.tenancy.schema_model import PIN_CONSTRAINT, CloneSpec, render_ddl

TENANT_LOCAL_DDL = """
CREATE SCHEMA pgtenantproxy;
REVOKE ALL ON SCHEMA pgtenantproxy FROM PUBLIC;
CREATE TABLE pgtenantproxy.tenant (
    shop_id     bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pgtenantproxy.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    baseline    boolean NOT NULL DEFAULT false,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


def marker(shop_id: int) -> str:
    return f"pgtenantproxy shop {shop_id}"


async def database_options(unified: asyncpg.Connection) -> str:
    """ENCODING/LC_COLLATE/LC_CTYPE (and locale provider) of the unified database.

    Tenant databases sort and compare text exactly as unified does, so a read
    routed to a tenant returns rows in the same order.
    """
    raw = await unified.fetchval("SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()")
    row = json.loads(raw)
    encoding = await unified.fetchval("SELECT pg_encoding_to_char($1::int)", row["encoding"])
    options = (
        f"ENCODING {literal(encoding)} LC_COLLATE {literal(row['datcollate'])} "
        f"LC_CTYPE {literal(row['datctype'])}"
    )
    provider = row.get("datlocprovider")
    locale = row.get("datlocale") or row.get("daticulocale")
    if provider == "i" and locale:
        options += f" LOCALE_PROVIDER icu ICU_LOCALE {literal(locale)}"
    elif provider == "b" and locale:
        options += f" LOCALE_PROVIDER builtin BUILTIN_LOCALE {literal(locale)}"
    return options


async def _note(admin: asyncpg.Connection, catalog: str, name: str) -> tuple[bool, str | None]:
    """(exists, comment) of a role (catalog pg_authid) or database (pg_database)."""
    if catalog == "pg_database":
        sql = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1"
    else:
        sql = "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1"
    rows = await admin.fetch(sql, name)
    return (bool(rows), rows[0][0] if rows else None)


async def create_role(admin: asyncpg.Connection, role: str, password: str, shop_id: int) -> None:
    exists, _ = await _note(admin, "pg_authid", role)
    if exists:
        raise ProvisioningError(
            f"role {role} already exists on the tenant server and was not left by a previous attempt: "
            "drop or rename it, or choose another [tenancy] role_name"
        )
    async with admin.transaction():
        await admin.execute(create_role_sql(role, password))
        await admin.execute(f"COMMENT ON ROLE {ident(role)} IS {literal(marker(shop_id))}")


async def create_database(admin: asyncpg.Connection, database: str, options: str) -> None:
    exists, _ = await _note(admin, "pg_database", database)
    if exists:
        raise ProvisioningError(
            f"database {database} already exists on the tenant server and was not left by a previous "
            "attempt: drop or rename it, or choose another [tenancy] database_name"
        )
    await admin.execute(f"CREATE DATABASE {ident(database)} TEMPLATE template0 {options}")


async def secure_database(admin: asyncpg.Connection, database: str, role: str, shop_id: int) -> None:
    """Mark the database as ours; only the shop role (and superusers) may connect."""
    db = ident(database)
    await admin.execute(
        f"COMMENT ON DATABASE {db} IS {literal(marker(shop_id))};"
        f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;"
        f"GRANT CONNECT ON DATABASE {db} TO {ident(role)};"
    )


async def create_schema(
    conn: asyncpg.Connection, spec: CloneSpec, shop_id: int, baseline: Sequence[tuple[int, str, str]]
) -> None:
    """The cloned tenant schema plus the private bookkeeping schema, in one transaction."""
    async with conn.transaction():
        await conn.execute(render_ddl(spec, shop_id) + TENANT_LOCAL_DDL)
        await conn.execute("INSERT INTO pgtenantproxy.tenant (shop_id) VALUES ($1)", shop_id)
        await conn.executemany(
            "INSERT INTO pgtenantproxy.schema_migrations (version, name, checksum, baseline)"
            " VALUES ($1, $2, $3, true)",
            list(baseline),
        )


def grants_sql(spec: CloneSpec, role: str) -> str:
    schemas = ", ".join(ident(s) for s in sorted({"public", *spec.schemas}))
    r = ident(role)
    return (
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;"
        f"GRANT USAGE ON SCHEMA {schemas} TO {r};"
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schemas} TO {r};"
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schemas} TO {r};"
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schemas} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r};"
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schemas} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {r};"
    )


async def grant(conn: asyncpg.Connection, spec: CloneSpec, role: str) -> None:
    async with conn.transaction():
        await conn.execute(grants_sql(spec, role))


_VERIFY = """
SELECT current_user AS who, current_database() AS db,
       (SELECT count(*) FROM unnest($1::text[], $2::text[]) AS t(s, n)
         WHERE to_regclass(format('%I.%I', s, n)) IS NOT NULL
           AND has_table_privilege(format('%I.%I', s, n), 'SELECT')
           AND has_table_privilege(format('%I.%I', s, n), 'INSERT')
           AND has_table_privilege(format('%I.%I', s, n), 'UPDATE')
           AND has_table_privilege(format('%I.%I', s, n), 'DELETE')) AS usable,
       (SELECT count(*) FROM pg_constraint WHERE conname = $3) AS pins,
       has_database_privilege(current_database(), 'CREATE') AS can_create
"""


async def verify(conn: asyncpg.Connection, tables: Sequence[QualifiedName], role: str, database: str) -> None:
    """Connected as the shop role: it is who it should be and sees exactly its tables, pinned."""
    row = await conn.fetchrow(
        _VERIFY, [t.schema for t in tables], [t.name for t in tables], PIN_CONSTRAINT
    )
    problems = []
    if row["who"] != role or row["db"] != database:
        problems.append(f"connected as {row['who']} to {row['db']}")
    if row["usable"] != len(tables):
        problems.append(f"{row['usable']} of {len(tables)} tenant tables usable")
    if row["pins"] != len(tables):
        problems.append(f"{row['pins']} of {len(tables)} tables pinned to the shop")
    if row["can_create"]:
        problems.append("the shop role may create schemas")
    if problems:
        raise ProvisioningError("verification failed: " + "; ".join(problems))


async def drop_database(admin: asyncpg.Connection, database: str, shop_id: int | None) -> bool:
    """Drop the database (terminating its sessions). With a shop id, only if it carries its marker."""
    exists, note = await _note(admin, "pg_database", database)
    if not exists:
        return False
    if shop_id is not None and note != marker(shop_id):
        raise ProvisioningError(
            f"database {database} exists but was not created by pgtenantproxy for shop {shop_id}: left alone"
        )
    await admin.execute(f"DROP DATABASE {ident(database)} WITH (FORCE)")
    return True


async def drop_role(admin: asyncpg.Connection, role: str, shop_id: int | None) -> bool:
    exists, note = await _note(admin, "pg_authid", role)
    if not exists:
        return False
    if shop_id is not None and note != marker(shop_id):
        raise ProvisioningError(
            f"role {role} exists but was not created by pgtenantproxy for shop {shop_id}: left alone"
        )
    await admin.execute(f"DROP ROLE {ident(role)}")
    return True
