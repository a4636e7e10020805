"""Reference tables on unified: their definitions from the catalog, and the triggers that log their changes.

:func:`read_definitions` reads each ``[[tenancy.reference_tables]]`` table
from unified's catalog (``search_path = pg_catalog``: every type name that
``format_type`` prints is schema-qualified) into a :class:`ReferenceDef`: the
listed columns in unified's column order with their types, collations and
NOT NULL, the primary key, and a :attr:`~ReferenceDef.signature` of all that
plus the filter column. A table that cannot be copied (missing, not a plain
table, a listed column missing, no primary key, a key column not listed, still
captured as a tenant table: its mirror would write the shops' copies) gets
a :class:`ReferenceDefError` naming it and what to do; the other tables carry on.

:func:`install_capture` puts the capture triggers on exactly the tables given
(idempotent: a table whose triggers already carry the definition's signature
among their arguments is not touched, so no lock is taken when nothing
changed) and removes them from every other table, one table per transaction.
Each (re)install also logs a NULL key (a full refill) for the table, in the
same transaction: a change made while the triggers were missing or different
is never lost. The triggers call ``pgtenantproxy.capture_reference(label,
signature, key columns...)`` (control schema step 7), the update trigger only
when a listed column changed; they are made ``ENABLE ALWAYS`` (firing under
``session_replication_role = replica`` too) when the control-plane role owns
the table. Creating them needs the ``TRIGGER`` privilege on the table.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.config import ReferenceTable
from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.reference import (
    CAPTURE_FUNCTION,
    CHANGES,
    TRIGGER_ROW,
    TRIGGER_TRUNCATE,
    TRIGGER_UPDATE,
    TRIGGERS,
)
from pgtenantproxy.sqltext import QualifiedName, ident, literal

logger = logging.getLogger(__name__)

INSTALL_ATTEMPTS = 5
LOCK_TIMEOUT = "3s"
#: Advisory lock namespace (second int 0): one change of reference capture triggers at a time.
INSTALL_LOCK = 0x5047545D

_TABLES = """
SELECT t.label, c.oid, c.relkind::text AS relkind,
       ARRAY(SELECT a.attname::text FROM pg_index i
             JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord) AS pk
FROM unnest($1::text[], $2::text[], $3::text[]) AS t(label, nsp, rel)
LEFT JOIN pg_namespace n ON n.nspname = t.nsp
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel
"""
_COLUMNS = """
SELECT a.attrelid AS oid, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type_sql,
       a.attnotnull AS not_null,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END AS collation
FROM pg_attribute a
JOIN pg_type ty ON ty.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""
_TRIGGERS = """
SELECT n.nspname::text AS nsp, c.relname::text AS rel, t.tgname::text AS name, t.tgenabled::text AS enabled,
       t.tgargs AS args
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgname = ANY($1::text[]) AND NOT t.tgisinternal
"""


class ReferenceDefError(MigrationError):
    """A reference table that cannot be copied (the message names it and what to do)."""


@dataclass(frozen=True)
class CopyColumn:
    name: str
    type_sql: str  # format_type under search_path = pg_catalog
    not_null: bool
    collation: str | None


@dataclass(frozen=True)
class ReferenceDef:
    """A reference table as its copies are built: listed columns in unified's order, key, filter."""

    config: ReferenceTable
    name: QualifiedName
    columns: tuple[CopyColumn, ...]
    pk: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.config.table

    @property
    def shop_column(self) -> str | None:
        return self.config.shop_column

    @property
    def signature(self) -> str:
        """What a copy is built from: name, columns (type, collation, NOT NULL), key, filter column."""
        h = hashlib.sha256(self.label.encode() + b"\x00" + (self.shop_column or "").encode() + b"\x00")
        for c in self.columns:
            h.update(f"{c.name}\x01{c.type_sql}\x01{c.collation or ''}\x01{c.not_null}\x02".encode())
        h.update(("\x03" + "\x01".join(self.pk)).encode())
        return h.hexdigest()[:16]

    @property
    def info(self) -> TableInfo:
        """As verification and the key helpers take tables (``tenant_column``: the filter column or '')."""
        by_name = {c.name: ColumnInfo(c.name, c.type_sql) for c in self.columns}
        return TableInfo(self.label, self.name, self.shop_column or "", tuple(by_name.values()),
                         tuple(by_name[k] for k in self.pk))

    @property
    def column_list(self) -> str:
        return ", ".join(ident(c.name) for c in self.columns)

    def create_sql(self) -> str:
        """``CREATE TABLE`` of the copy (exactly the listed columns and the primary key)."""
        cols = []
        for c in self.columns:
            collate = f" COLLATE {c.collation}" if c.collation else ""
            cols.append(f"{ident(c.name)} {c.type_sql}{collate}{' NOT NULL' if c.not_null else ''}")
        cols.append(f"PRIMARY KEY ({', '.join(ident(k) for k in self.pk)})")
        return f"CREATE TABLE {self.name.sql} ({', '.join(cols)})"

    def marker(self) -> str:
        """The copy's table comment: it is pgtenantproxy's, and which definition built it."""
        return copy_marker(self.label, self.signature)


def copy_marker(label: str, sig: str) -> str:
    return f"pgtenantproxy reference copy of {label} ({sig})"


def is_copy_marker(note: str | None, label: str) -> bool:
    return bool(note) and str(note).startswith(f"pgtenantproxy reference copy of {label} (")


async def read_definitions(
    conn: asyncpg.Connection | asyncpg.Pool, tables: Sequence[ReferenceTable]
) -> dict[str, ReferenceDef | ReferenceDefError]:
    """Each configured table's definition, or the reason it cannot be copied (by label, in config order)."""
    if not tables:
        return {}
    names = {t.table: QualifiedName.parse(t.table) for t in tables}
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _read(c, tables, names)
    return await _read(conn, tables, names)


async def _read(conn: asyncpg.Connection, tables: Sequence[ReferenceTable],
                names: dict[str, QualifiedName]) -> dict[str, ReferenceDef | ReferenceDefError]:
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL search_path = pg_catalog")
        found = {r["label"]: r for r in await conn.fetch(
            _TABLES, list(names), [n.schema for n in names.values()], [n.name for n in names.values()])}
        oids = [r["oid"] for r in found.values() if r["oid"] is not None]
        columns: dict[int, list[asyncpg.Record]] = {}
        for r in await conn.fetch(_COLUMNS, oids):
            columns.setdefault(r["oid"], []).append(r)
        captured: set[str] = set()
        if await conn.fetchval("SELECT to_regclass('pgtenantproxy.capture_tables') IS NOT NULL"):
            captured = {r["tbl"] for r in await conn.fetch(
                "SELECT tbl FROM pgtenantproxy.capture_tables WHERE active AND tbl = ANY($1::text[])",
                list(names))}
    out: dict[str, ReferenceDef | ReferenceDefError] = {}
    for ref in tables:
        row = found.get(ref.table)
        if ref.table in captured:
            out[ref.table] = ReferenceDefError(
                f"reference table {ref.table}: write capture is on for it as a tenant table (its rows are "
                "mirrored to the shops' databases): run `pgtenantproxy dual-write enable` first, which takes "
                "capture off the tables that are no longer tenant tables")
            continue
        try:
            mine = columns.get(row["oid"], []) if row else []
            out[ref.table] = _definition(ref, names[ref.table], row, mine)
        except ReferenceDefError as exc:
            out[ref.table] = exc
    return out


def _definition(ref: ReferenceTable, name: QualifiedName, row: asyncpg.Record | None,
                columns: list[asyncpg.Record]) -> ReferenceDef:
    where = f"reference table {ref.table}"
    if row is None or row["oid"] is None:
        raise ReferenceDefError(f"{where}: no such table in the unified database "
                                "([[tenancy.reference_tables]])")
    if row["relkind"] != "r":
        raise ReferenceDefError(f"{where}: not a plain table (relkind {row['relkind']!r}); only tables "
                                "can be copied")
    by_name = {c["name"]: c for c in columns}
    missing = [c for c in ref.columns if c not in by_name]
    if missing:
        raise ReferenceDefError(f"{where}: no column {', '.join(repr(c) for c in missing)} on unified "
                                "(fix [[tenancy.reference_tables]] columns)")
    pk = tuple(row["pk"])
    if not pk:
        raise ReferenceDefError(f"{where}: has no primary key; a reference table needs one (its copies are "
                                "kept current key by key)")
    unlisted = [k for k in pk if k not in ref.columns]
    if unlisted:
        raise ReferenceDefError(f"{where}: its primary key column(s) {', '.join(unlisted)} are not listed in "
                                "columns: add them to [[tenancy.reference_tables]] columns")
    listed = set(ref.columns)
    copy = tuple(CopyColumn(c["name"], c["type_sql"], bool(c["not_null"]), c["collation"])
                 for c in columns if c["name"] in listed)
    return ReferenceDef(ref, name, copy, pk)


# --- capture triggers on unified ---------------------------------------------------------------
def trigger_args(defn: ReferenceDef) -> tuple[str, ...]:
    """The capture function's arguments: the label, the definition's signature, the key columns."""
    return (defn.label, defn.signature, *defn.pk)


def install_sql(defn: ReferenceDef) -> str:
    """The statements that (re)install the capture triggers of one table, and log a full refill."""
    t = defn.name.sql
    call = f"EXECUTE FUNCTION {CAPTURE_FUNCTION}({', '.join(literal(a) for a in trigger_args(defn))})"
    old = ", ".join(f"OLD.{ident(c.name)}" for c in defn.columns)
    new = ", ".join(f"NEW.{ident(c.name)}" for c in defn.columns)
    return (
        f"CREATE OR REPLACE TRIGGER {TRIGGER_ROW} AFTER INSERT OR DELETE ON {t} FOR EACH ROW {call};"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_UPDATE} AFTER UPDATE ON {t} FOR EACH ROW"
        f" WHEN (ROW({old})::text IS DISTINCT FROM ROW({new})::text) {call};"
        f"CREATE OR REPLACE TRIGGER {TRIGGER_TRUNCATE} AFTER TRUNCATE ON {t} FOR EACH STATEMENT {call};"
        f"INSERT INTO {CHANGES} (tbl, key) VALUES ({literal(defn.label)}, NULL);"
    )


def remove_sql(name: QualifiedName) -> str:
    return "".join(f"DROP TRIGGER IF EXISTS {trigger} ON {name.sql};" for trigger in TRIGGERS)


@dataclass
class CaptureChange:
    """What :func:`install_capture` did: tables (re)installed, removed, and those it could not touch."""

    installed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Failed tables that have no working capture trigger at all (their copies cannot be kept current).
    uncaptured: list[str] = field(default_factory=list)


async def install_capture(conn: asyncpg.Connection, defs: Sequence[ReferenceDef]) -> CaptureChange:
    """Capture on exactly ``defs`` (idempotent, one transaction per table: a table that cannot be changed
    is reported in ``failed`` and the others carry on)."""
    current = await _installed(conn)
    wanted = {d.label for d in defs}
    done = CaptureChange()
    work: list[tuple[str, str, bool]] = [(label, remove_sql(QualifiedName.parse(label)), False)
                                         for label in sorted(current) if label not in wanted]
    work += [(d.label, install_sql(d), True) for d in defs
             if current.get(d.label) != {(t, _tgargs(d)) for t in TRIGGERS}]
    for label, sql, install in work:
        try:
            await _change_triggers(conn, label, sql, always=install)
        except (MigrationError, asyncpg.PostgresError) as exc:
            text = str(exc) if isinstance(exc, MigrationError) else f"{exc.sqlstate}: {exc}"
            done.failed[label] = f"reference table {label}: its capture triggers could not be changed: {text}"
            if install and len(current.get(label, ())) < len(TRIGGERS):
                done.uncaptured.append(label)
            continue
        (done.installed if install else done.removed).append(label)
    return done


async def _change_triggers(conn: asyncpg.Connection, label: str, sql: str, *, always: bool) -> None:
    """``sql`` in one transaction under the install lock, retried on lock timeouts; the new triggers set
    ``ENABLE ALWAYS`` where the role may (the table's owner; otherwise they stay ``ORIGIN`` triggers)."""
    name = QualifiedName.parse(label)
    for attempt in range(1, INSTALL_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({INSTALL_LOCK}, 0);"
                                   f"SET LOCAL lock_timeout = {literal(LOCK_TIMEOUT)}")
                await conn.execute(sql)
                if always:
                    try:
                        async with conn.transaction():
                            await conn.execute("".join(f"ALTER TABLE {name.sql} ENABLE ALWAYS TRIGGER {t};"
                                                       for t in TRIGGERS))
                    except asyncpg.InsufficientPrivilegeError:
                        logger.info("%s: reference capture triggers left as ORIGIN triggers (not the "
                                    "table's owner): writes made with session_replication_role = replica "
                                    "are not seen", label)
            return
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            if attempt == INSTALL_ATTEMPTS:
                raise MigrationError(f"could not lock it ({exc.sqlstate}): long transactions hold it; "
                                     "trying again next round") from None
            await asyncio.sleep(0.2 * attempt)


def _tgargs(defn: ReferenceDef) -> bytes:
    """``pg_trigger.tgargs`` of the triggers :func:`install_sql` makes (each argument NUL-terminated)."""
    return b"".join(a.encode() + b"\x00" for a in trigger_args(defn))


async def _installed(conn: asyncpg.Connection) -> dict[str, set[tuple[str, bytes]]]:
    """label -> {(trigger, its arguments)} of every table with a reference capture trigger (a disabled
    trigger counts as missing)."""
    out: dict[str, set[tuple[str, bytes]]] = {}
    for r in await conn.fetch(_TRIGGERS, list(TRIGGERS)):
        entry = out.setdefault(f"{r['nsp']}.{r['rel']}", set())
        if r["enabled"] in ("O", "A"):
            entry.add((r["name"], bytes(r["args"])))
    return out
