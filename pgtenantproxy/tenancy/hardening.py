"""``pgtenantproxy harden``: the seed's security fixes, installed on the unified database.

1. On every tenant table (and ``users``, if it has the tenant column), a
   ``BEFORE UPDATE OF <tenant column>`` row trigger, fired only ``WHEN (OLD.col
   IS DISTINCT FROM NEW.col)``, that rejects the change (SQLSTATE 23000): a row
   belongs to one shop for life. Updates that do not touch the column do not
   even call the function.
2. When ``users`` has a ``role`` column: a partial unique index (one owner per
   shop) and a check that owners have a shop.

Rows that already break rule 2 are looked up first; the rule they break is not
installed and the report lists them (by primary key, never other columns) so
they can be fixed, after which ``harden`` is run again. Everything is
idempotent. The index is built ``CONCURRENTLY`` and the check is added ``NOT
VALID`` then validated, so the app keeps writing to ``users`` meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.sqltext import QualifiedName, ident, literal

TRIGGER = "pgtenantproxy_tenant_immutable"
OWNER_INDEX = "pgtenantproxy_one_owner_per_shop"
OWNER_CHECK = "pgtenantproxy_owner_has_shop"
VIOLATION_SAMPLE = 100

FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION pgtenantproxy.reject_tenant_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'changing column % of an existing row of %.% is not allowed', TG_ARGV[0],
        TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation',
              HINT = 'A row belongs to one shop for life: insert a new row for the other shop instead.';
END
$fn$;
"""


@dataclass(frozen=True)
class Violation:
    rule: str
    shop_id: int | None
    keys: tuple[str, ...]

    def __str__(self) -> str:
        where = f"shop {self.shop_id}" if self.shop_id is not None else "no shop"
        return f"{self.rule}: {where}: users with key {', '.join(self.keys)}"


@dataclass
class HardenReport:
    protected_tables: list[QualifiedName] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.skipped


async def harden(
    conn: asyncpg.Connection, tables: Sequence[QualifiedName], tenant_column: str
) -> HardenReport:
    """Install the triggers and the ``users`` rules; returns what was done and what was not."""
    report = HardenReport()
    users = await _users_table(conn, tables, tenant_column)
    targets = list(tables) + ([users] if users is not None and users not in tables else [])
    col = ident(tenant_column)
    async with conn.transaction():
        await conn.execute(FUNCTION_SQL)
        for table in targets:
            await conn.execute(
                f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table.sql};"
                f"CREATE TRIGGER {TRIGGER} BEFORE UPDATE OF {col} ON {table.sql} FOR EACH ROW"
                f" WHEN (OLD.{col} IS DISTINCT FROM NEW.{col})"
                f" EXECUTE FUNCTION pgtenantproxy.reject_tenant_change({literal(tenant_column)})"
            )
    report.protected_tables = targets
    if users is not None and await _has_column(conn, users, "role"):
        await _owner_rules(conn, users, tenant_column, report)
    await audit(conn, shop_id=None, action="harden", status="done" if report.ok else "incomplete",
                detail=f"{len(targets)} tables protected; installed {report.installed}; "
                f"violations {len(report.violations)}; skipped {report.skipped}")
    return report


async def _has_column(conn: asyncpg.Connection, table: QualifiedName, column: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2"
        " AND attnum > 0 AND NOT attisdropped)",
        table.sql, column,
    ))


async def _users_table(
    conn: asyncpg.Connection, tables: Sequence[QualifiedName], tenant_column: str
) -> QualifiedName | None:
    """The ``users`` table: a tenant table of that name, else ``public.users`` with the tenant column."""
    for table in tables:
        if table.name == "users":
            return table
    candidate = QualifiedName("public", "users")
    return candidate if await _has_column(conn, candidate, tenant_column) else None


async def _key_expression(conn: asyncpg.Connection, table: QualifiedName) -> str:
    """SQL text naming a row by its primary key (ctid when there is none)."""
    columns = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass($1) AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        table.sql,
    )
    if not columns:
        return "ctid::text"
    return "concat_ws(',', " + ", ".join(f"{ident(r['attname'])}::text" for r in columns) + ")"


async def _owner_rules(
    conn: asyncpg.Connection, users: QualifiedName, tenant_column: str, report: HardenReport
) -> None:
    col, key = ident(tenant_column), await _key_expression(conn, users)
    try:
        duplicates = await conn.fetch(
            f"SELECT {col} AS shop, array_agg({key} ORDER BY {key}) AS keys FROM {users.sql}"
            f" WHERE role = 'owner' AND {col} IS NOT NULL GROUP BY {col} HAVING count(*) > 1"
            f" ORDER BY 1 LIMIT {VIOLATION_SAMPLE}"
        )
        shopless = await conn.fetch(
            f"SELECT {key} AS key FROM {users.sql} WHERE role = 'owner' AND {col} IS NULL"
            f" ORDER BY 1 LIMIT {VIOLATION_SAMPLE}"
        )
    except asyncpg.DataError:
        report.skipped.append(f"{users}.role has no 'owner' value: owner rules not installed")
        return
    report.violations += [Violation("one owner per shop", r["shop"], tuple(r["keys"])) for r in duplicates]
    if shopless:
        report.violations.append(Violation("owners have a shop", None, tuple(r["key"] for r in shopless)))
    if not duplicates:
        await _owner_index(conn, users, col, report)
    if not shopless:
        await _owner_check(conn, users, col, report)


async def _owner_index(
    conn: asyncpg.Connection, users: QualifiedName, col: str, report: HardenReport
) -> None:
    index = QualifiedName(users.schema, OWNER_INDEX)
    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index.sql
    )
    if valid:
        report.present.append(OWNER_INDEX)
        return
    if valid is not None:  # left invalid by an interrupted CREATE INDEX CONCURRENTLY
        await conn.execute(f"DROP INDEX CONCURRENTLY {index.sql}")
    await conn.execute(
        f"CREATE UNIQUE INDEX CONCURRENTLY {ident(OWNER_INDEX)} ON {users.sql} ({col}) WHERE role = 'owner'"
    )
    report.installed.append(OWNER_INDEX)


async def _owner_check(
    conn: asyncpg.Connection, users: QualifiedName, col: str, report: HardenReport
) -> None:
    exists = await conn.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2",
        users.sql, OWNER_CHECK,
    )
    if exists:
        report.present.append(OWNER_CHECK)
        return
    if exists is None:
        await conn.execute(
            f"ALTER TABLE {users.sql} ADD CONSTRAINT {ident(OWNER_CHECK)}"
            f" CHECK (role <> 'owner' OR {col} IS NOT NULL) NOT VALID"
        )
    await conn.execute(f"ALTER TABLE {users.sql} VALIDATE CONSTRAINT {ident(OWNER_CHECK)}")
    report.installed.append(OWNER_CHECK)
