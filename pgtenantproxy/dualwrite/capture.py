"""Installing and removing write capture: the triggers that fill the outbox.

``enable`` checks every table first (it exists, has the tenant column and a
primary key) and refuses the whole request, naming the tables at fault, before
changing anything. It then installs, in one transaction (all tables or none),
on each table:

* ``pgtenantproxy_capture_ins`` / ``_upd`` / ``_del``: ``AFTER INSERT`` /
  ``UPDATE`` / ``DELETE ... REFERENCING NEW|OLD TABLE ... FOR EACH STATEMENT``
  (one trigger per event: a transition table belongs to one event), calling
  the table's generated function ``pgtenantproxy.capture_<hash>()``, which
  appends the statement's keys to the outbox in one ``INSERT ... SELECT``.
  Statement triggers: one call per statement, not per row (measured: about as
  cheap as a row trigger for one-row statements, half the cost per row for
  multi-row ones); cascaded deletes and updates are statements of their own,
  captured the same way; ``INSERT ... ON CONFLICT`` and ``MERGE`` fire the
  triggers of the events they perform;
* ``pgtenantproxy_capture_key``: ``AFTER UPDATE FOR EACH ROW WHEN (the key or
  the tenant column changed)``, ``capture_key_change(...)``;
* ``pgtenantproxy_capture_truncate``: ``BEFORE TRUNCATE``, refused.

and records the table in ``capture_tables``. Tables recorded earlier but no
longer asked for lose their triggers in the same transaction. ``CREATE
TRIGGER`` briefly locks each table against writes; the transaction gives up
after ``lock_timeout`` and is retried a few times rather than queueing the
application behind it.

``disable`` drops the triggers (and generated functions) of every table
that has them and marks the tables inactive (their keys stay known); the
outbox is left for the mirror worker to drain. Every capture function also
checks the write fence of its statement's shops (``fence_check``, see
:mod:`.fence`); ``enable`` again, or :func:`upgrade_functions`, brings the
functions of an older install up to date. From the commit of ``enable``
on, every committed write of those tables is in the outbox, in the writer's
own transaction; a rolled back write never is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.dualwrite.errors import CaptureError
from pgtenantproxy.dualwrite.schema import APPLY_SETTING, SCHEMA_LOCK, ensure_dualwrite_schema
from pgtenantproxy.sqltext import QualifiedName, ident, literal

logger = logging.getLogger(__name__)

TRIGGER_INSERT = "pgtenantproxy_capture_ins"
TRIGGER_UPDATE = "pgtenantproxy_capture_upd"
TRIGGER_DELETE = "pgtenantproxy_capture_del"
TRIGGER_KEY = "pgtenantproxy_capture_key"
TRIGGER_TRUNCATE = "pgtenantproxy_capture_truncate"
TRIGGERS = (TRIGGER_INSERT, TRIGGER_UPDATE, TRIGGER_DELETE, TRIGGER_KEY, TRIGGER_TRUNCATE)
INSTALL_ATTEMPTS = 5
LOCK_TIMEOUT = "3s"

_DESCRIBE = """
SELECT c.oid IS NOT NULL AS found,
       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = $2
               AND a.attnum > 0 AND NOT a.attisdropped) AS has_tenant_column,
       ARRAY(SELECT a.attname FROM pg_index i
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord) AS pk
FROM (SELECT to_regclass($1) AS oid) AS c
"""


@dataclass(frozen=True)
class CapturedTable:
    """A table capture is installed on: its label (``schema.table``), tenant column and key."""

    name: QualifiedName
    tenant_column: str
    pk_columns: tuple[str, ...]

    @property
    def label(self) -> str:
        return str(self.name)


async def describe_tables(
    conn: asyncpg.Connection, tables: Sequence[QualifiedName], tenant_column: str
) -> list[CapturedTable]:
    """Each table's key; raises CaptureError naming every table that cannot be captured."""
    problems: list[str] = []
    described: list[CapturedTable] = []
    for table in tables:
        row = await conn.fetchrow(_DESCRIBE, table.sql, tenant_column)
        if not row["found"]:
            problems.append(f"{table}: no such table")
        elif not row["has_tenant_column"]:
            problems.append(f"{table}: has no column {tenant_column!r}")
        elif not row["pk"]:
            problems.append(
                f"{table}: has no primary key (the mirror syncs rows by primary key: add one, "
                "or leave the table out of [tenancy] tenant_tables)"
            )
        else:
            described.append(CapturedTable(table, tenant_column, tuple(row["pk"])))
    if problems:
        raise CaptureError("write capture cannot be enabled: " + "; ".join(problems))
    if not described:
        raise CaptureError("write capture cannot be enabled: no tenant tables")
    return described


def function_name(table: CapturedTable | QualifiedName) -> QualifiedName:
    """The table's generated capture function (named after a hash of its label: stable, short)."""
    label = table.label if isinstance(table, CapturedTable) else str(table)
    return QualifiedName("pgtenantproxy", "capture_" + hashlib.sha256(label.encode()).hexdigest()[:16])


def function_sql(table: CapturedTable) -> str:
    """The table's capture function: one ``INSERT ... SELECT`` from the statement's transition table.

    Generated per table so that the key and the tenant column are plain column
    references (measured: a generic function that finds them through
    ``to_jsonb(row)`` and ``TG_ARGV`` costs the writer 30-100% more per captured
    statement, and more on wide rows; see ``docs/dualwrite.md``).
    """
    name = function_name(table).sql
    body = "$pgtp_capture$" + function_body(table) + "$pgtp_capture$"
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body};
COMMENT ON FUNCTION {name}() IS {literal("pgtenantproxy write capture of " + table.label)};
"""


def function_body(table: CapturedTable) -> str:
    """The capture function's body (``pg_proc.prosrc``): skip the mirror's writes, check the write
    fence of the statement's shops (:mod:`.fence`), append the statement's keys to the outbox."""
    tenant = ident(table.tenant_column)

    def shops(alias: str, relation: str) -> str:
        return (
            f"PERFORM pgtenantproxy.fence_check(ARRAY(SELECT DISTINCT {alias}.{tenant}::bigint"
            f" FROM {relation} AS {alias} WHERE {alias}.{tenant} IS NOT NULL));"
        )

    def insert(alias: str, relation: str, op: str) -> str:
        keys = ", ".join(f"{alias}.{ident(c)}" for c in table.pk_columns)
        return (
            "INSERT INTO pgtenantproxy.outbox (shop_id, tbl, pk, op)"
            f" SELECT {alias}.{tenant}::bigint, {literal(table.label)}, jsonb_build_array({keys}), {op}"
            f" FROM {relation} AS {alias} WHERE {alias}.{tenant} IS NOT NULL;"
        )

    return f"""
BEGIN
    IF current_setting({literal(APPLY_SETTING)}, true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        {shops("o", "pgtenantproxy_old")}
        {insert("o", "pgtenantproxy_old", "'D'")}
    ELSE
        {shops("n", "pgtenantproxy_new")}
        {insert("n", "pgtenantproxy_new", "left(TG_OP, 1)")}
    END IF;
    RETURN NULL;
END
"""


def install_sql(table: CapturedTable) -> str:
    """The statements that (re)install capture on one table."""
    t = table.name.sql
    args = ", ".join(literal(a) for a in (table.tenant_column, table.label, *table.pk_columns))
    watched = [*table.pk_columns, table.tenant_column]
    old = ", ".join(f"OLD.{ident(c)}" for c in watched)
    new = ", ".join(f"NEW.{ident(c)}" for c in watched)
    statement = f"FOR EACH STATEMENT EXECUTE FUNCTION {function_name(table).sql}()"
    return function_sql(table) + (
        f"CREATE OR REPLACE TRIGGER {TRIGGER_INSERT} AFTER INSERT ON {t}"
        f" REFERENCING NEW TABLE AS pgtenantproxy_new {statement};"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_UPDATE} AFTER UPDATE ON {t}"
        f" REFERENCING NEW TABLE AS pgtenantproxy_new {statement};"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_DELETE} AFTER DELETE ON {t}"
        f" REFERENCING OLD TABLE AS pgtenantproxy_old {statement};"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_KEY} AFTER UPDATE ON {t}"
        f" FOR EACH ROW WHEN ((({old})) IS DISTINCT FROM (({new})))"
        f" EXECUTE FUNCTION pgtenantproxy.capture_key_change({args});"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_TRUNCATE} BEFORE TRUNCATE ON {t}"
        f" FOR EACH STATEMENT EXECUTE FUNCTION pgtenantproxy.reject_truncate({literal(table.label)});"
    )


def remove_sql(name: QualifiedName) -> str:
    drops = "".join(f"DROP TRIGGER IF EXISTS {trigger} ON {name.sql};" for trigger in TRIGGERS)
    return drops + f"DROP FUNCTION IF EXISTS {function_name(name).sql}();"


async def enable_capture(
    conn: asyncpg.Connection, tables: Sequence[QualifiedName], tenant_column: str
) -> list[CapturedTable]:
    """Install capture on exactly ``tables`` (idempotent); returns them with their keys."""
    await ensure_dualwrite_schema(conn)
    described = await describe_tables(conn, tables, tenant_column)
    wanted = {t.label for t in described}

    async def install(c: asyncpg.Connection) -> None:
        for table in await installed_tables(c):
            if table.label not in wanted:
                await c.execute(remove_sql(table.name))
        for table in described:
            await c.execute(install_sql(table))
        await c.execute(
            "UPDATE pgtenantproxy.capture_tables SET active = false, removed_at = now()"
            " WHERE active AND NOT (tbl = ANY($1::text[]))",
            list(wanted),
        )
        await c.executemany(
            "INSERT INTO pgtenantproxy.capture_tables"
            " (tbl, schema_name, table_name, tenant_column, pk_columns) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (tbl) DO UPDATE SET schema_name = excluded.schema_name,"
            " table_name = excluded.table_name, tenant_column = excluded.tenant_column,"
            " pk_columns = excluded.pk_columns, active = true, installed_at = now(), removed_at = NULL",
            [(t.label, t.name.schema, t.name.name, t.tenant_column, list(t.pk_columns)) for t in described],
        )

    await _with_retries(conn, install)
    logger.info("write capture enabled on %d tables", len(described))
    return described


async def disable_capture(conn: asyncpg.Connection) -> list[QualifiedName]:
    """Remove capture from every table that has it; the outbox stays for the worker to drain."""
    await ensure_dualwrite_schema(conn)
    removed: list[QualifiedName] = []

    async def remove(c: asyncpg.Connection) -> None:
        removed.clear()
        names = {t.name for t in await installed_tables(c)} | set(await _tables_with_triggers(c))
        for name in sorted(names):
            await c.execute(remove_sql(name))
            removed.append(name)
        await c.execute(
            "UPDATE pgtenantproxy.capture_tables SET active = false, removed_at = now() WHERE active"
        )

    await _with_retries(conn, remove)
    logger.info("write capture disabled on %d tables", len(removed))
    return removed


async def upgrade_functions(conn: asyncpg.Connection) -> int:
    """Re-create the installed capture functions whose body is not this version's; returns how many.

    Only ``CREATE OR REPLACE FUNCTION`` (no trigger change, so no table lock):
    running writers pick the new body up at their next statement. Run after a
    schema upgrade so that a process that does not ``enable`` capture (a proxy
    with ``enabled = false``) still brings every table's function up to date.
    """
    await ensure_dualwrite_schema(conn)
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK}, 1)")
        current = {
            r["proname"]: r["prosrc"]
            for r in await conn.fetch(
                "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'pgtenantproxy' AND p.proname LIKE 'capture\\_%'"
            )
        }
        stale = [
            t for t in await installed_tables(conn)
            if function_name(t).name in current and current[function_name(t).name] != function_body(t)
        ]
        for table in stale:
            await conn.execute(function_sql(table))
    if stale:
        logger.info("capture functions of %d tables upgraded", len(stale))
    return len(stale)


async def installed_tables(conn: asyncpg.Connection) -> list[CapturedTable]:
    """The tables capture is installed on (empty when the mirroring tables do not exist yet)."""
    if not await conn.fetchval("SELECT to_regclass('pgtenantproxy.capture_tables') IS NOT NULL"):
        return []
    rows = await conn.fetch(
        "SELECT schema_name, table_name, tenant_column, pk_columns FROM pgtenantproxy.capture_tables"
        " WHERE active ORDER BY tbl"
    )
    return [
        CapturedTable(
            QualifiedName(r["schema_name"], r["table_name"]), r["tenant_column"], tuple(r["pk_columns"])
        )
        for r in rows
    ]


async def _tables_with_triggers(conn: asyncpg.Connection) -> list[QualifiedName]:
    rows = await conn.fetch(
        "SELECT DISTINCT n.nspname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = ANY($1::text[])",
        list(TRIGGERS),
    )
    return [QualifiedName(r["nspname"], r["relname"]) for r in rows]


Work = Callable[[asyncpg.Connection], Awaitable[None]]


async def _with_retries(conn: asyncpg.Connection, work: Work) -> None:
    """Run ``work(conn)`` in one transaction under the install lock; retry on lock timeouts and deadlocks."""
    for attempt in range(1, INSTALL_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(
                    f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK}, 1);"
                    f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
                )
                await work(conn)
            return
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            if attempt == INSTALL_ATTEMPTS:
                raise CaptureError(
                    f"could not lock the tenant tables to change their triggers ({exc.sqlstate}): "
                    "the application holds long transactions on them; try again"
                ) from None
            logger.info("changing capture triggers: %s, retrying", exc.sqlstate)
            await asyncio.sleep(0.2 * attempt)
