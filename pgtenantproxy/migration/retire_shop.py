"""Retiring one shop that passed the gate: archive its rows, delete them from unified, phase ``retired``.

On one unified connection:

1. take the shop's *apply fence* as a session lock (``pg_advisory_lock(FENCE_LOCK,
   shop)``: the lock every mirror applier holds while it writes the shop's rows
   into unified), so the reverse mirror cannot change the shop's rows between
   the archive and the delete;
2. one REPEATABLE READ transaction (its snapshot is taken after the lock):
   ``SET LOCAL pgtenantproxy.mirror_apply = on`` (capture does not record the
   deletes and the write fence lets them through) and ``session_replication_role
   = replica`` (application triggers and foreign key actions stay quiet: what
   leaves is exactly the shop's rows, nothing cascades to other rows);
   archive every table (:mod:`.archive`), write the manifest, re-read every file
   against its checksum, record the files in ``retirement_archives``; write
   the shop's keys into the key directory (:mod:`.key_directory`: integer keys
   as ranges of islands, other single-column keys one by one), so routing by
   key still finds the shop of a key once its rows are gone; delete
   the shop's rows, referencing tables first, each table's count checked
   against the rows archived; move the phase ``tenant_primary -> retired``
   (fenced on the version the gate read). Anything failing rolls all of it
   back: nothing is deleted unless the archive is complete and checked, and
   the rows leave unified exactly when the phase says so;
3. release the lock, then remove reverse capture from the tenant database
   (the reverse worker only serves ``tenant_primary`` shops; a failure here is
   a warning: the shop is retired either way).

Every step is in the audit log (action ``retire``); a shop the gate let
through with ``--force`` past refused statements gets a row with status
``forced`` (step ``gate``, naming them) first.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.schema import APPLY_SETTING, FENCE_LOCK
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import transition
from pgtenantproxy.migration import archive as ar
from pgtenantproxy.migration.key_directory import write_key_directory
from pgtenantproxy.migration.readiness import forced_detail
from pgtenantproxy.migration.retire_report import FAILED, RETIRED, ShopRetirement
from pgtenantproxy.migration.reverse_link import remove_reverse_capture, tenant_admin
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from pgtenantproxy.tenancy.service import TenancyService

ACTION = "retire"
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, MigrationError)

_RECORD = """
INSERT INTO pgtenantproxy.retirement_archives (shop_id, tbl, path, format, rows, bytes, sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (shop_id, tbl) DO UPDATE SET path = excluded.path, format = excluded.format,
    rows = excluded.rows, bytes = excluded.bytes, sha256 = excluded.sha256,
    archived_at = clock_timestamp(), deleted_at = NULL, restored_at = NULL
"""
_FORGET = "DELETE FROM pgtenantproxy.retirement_archives WHERE shop_id = $1"
_DELETED = "UPDATE pgtenantproxy.retirement_archives SET deleted_at = clock_timestamp() WHERE shop_id = $1"


def source_of(config: Config) -> dict[str, object]:
    """Where the archive came from (never a password)."""
    u = config.unified
    return {"host": u.host, "port": u.port, "database": u.database}


async def quiet_session(conn: asyncpg.Connection) -> None:
    """Inside a transaction: the mirror's own writes (not captured, not fenced, no triggers or FK actions)."""
    await conn.execute(f"SET LOCAL {APPLY_SETTING} = on; SET LOCAL session_replication_role = replica")


async def delete_rows(conn: asyncpg.Connection, tables: list[TableInfo], shop_id: int) -> dict[str, int]:
    """Delete the shop's rows, referencing tables first (in the caller's quiet transaction)."""
    deleted: dict[str, int] = {}
    for table in reversed(tables):
        status = await conn.execute(f"DELETE FROM {table.name.sql} WHERE {ar.shop_condition(table, shop_id)}")
        deleted[table.label] = int(status.split()[-1])
    return deleted


class ShopRetirer:
    """Retires shops one at a time (see the module docstring)."""

    def __init__(self, tenancy: TenancyService, tables: list[TableInfo], config: Config,
                 *, actor: str | None = None) -> None:
        self.tenancy = tenancy
        self.tables = tables
        self.config = config
        self.actor = actor

    async def retire(self, out: ShopRetirement, version: int) -> None:
        started = time.monotonic()
        shop = out.shop_id
        if out.forced:
            await self._audit(shop, "gate", "forced", forced_detail(
                out.refused_statements, "refused while it was tenant_primary, refused once retired too"))
        await self._audit(shop, "started", "running", f"{out.total_rows} rows in unified")
        try:
            async with self.tenancy.pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock($1, $2)", FENCE_LOCK, shop_lock_key(shop))
                try:
                    await self._archive_and_delete(conn, out, version)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", FENCE_LOCK, shop_lock_key(shop))
        except FAILURES as exc:
            out.status = FAILED
            out.reasons.append(f"{type(exc).__name__}: {exc}; nothing was deleted and the phase did not move")
            await self._audit(shop, "failed", "failed", out.reasons[-1])
            out.seconds = time.monotonic() - started
            return
        out.status = RETIRED
        await self._stop_reverse(out)
        out.seconds = time.monotonic() - started
        await self._audit(shop, "done", "done", f"{out.total_rows} rows, {out.bytes} bytes archived in "
                          f"{out.archive or 'no archive'}; {out.seconds:.2f} s")

    async def _archive_and_delete(self, conn: asyncpg.Connection, out: ShopRetirement, version: int) -> None:
        shop = out.shop_id
        async with conn.transaction(isolation="repeatable_read"):
            await quiet_session(conn)
            manifest = await self._archive(conn, out) if self.config.migration.archive_before_delete else None
            out.key_directory = (await write_key_directory(conn, self.tables, shop)).as_dict()
            deleted = await delete_rows(conn, self.tables, shop)
            if manifest is not None:
                archived = {t.table: t.rows for t in manifest.tables}
                wrong = [f"{label}: deleted {n}, archived {archived[label]}"
                         for label, n in deleted.items() if n != archived[label]]
                if wrong:
                    raise MigrationError(f"shop {shop}: the rows deleted differ from the rows archived "
                                         f"({'; '.join(wrong)})")
                await conn.execute(_DELETED, shop)
            else:
                await conn.execute(_FORGET, shop)
            out.rows = {t.label: deleted[t.label] for t in self.tables}
            await transition(conn, shop, ph.RETIRED, expect=[ph.TENANT_PRIMARY], expect_version=version,
                             reason=f"legacy rows retired ({out.total_rows} rows)", actor=self.actor,
                             action=ACTION)

    async def _archive(self, conn: asyncpg.Connection, out: ShopRetirement) -> ar.Manifest:
        """Archive every table (in the caller's snapshot), write and check the manifest, record the files."""
        directory = ar.shop_dir(self.config.migration.archive_dir, out.shop_id)
        directory.mkdir(parents=True, exist_ok=True)
        entries = tuple([await ar.archive_table(conn, t, out.shop_id, directory) for t in self.tables])
        created = dt.datetime.now(dt.UTC).isoformat()
        manifest = ar.Manifest(out.shop_id, created, source_of(self.config), entries)
        ar.write_manifest(directory, manifest)
        ar.check_files(directory, ar.read_manifest(directory, out.shop_id))
        for e in entries:
            await conn.execute(_RECORD, out.shop_id, e.table, str(Path(directory) / e.file), e.format, e.rows,
                               e.bytes, e.sha256)
        out.archive = str(directory)
        out.bytes = manifest.bytes
        await self._audit(out.shop_id, "archived", "done",
                          f"{manifest.rows} rows, {manifest.bytes} bytes in {directory}, checksums checked")
        return manifest

    async def _stop_reverse(self, out: ShopRetirement) -> None:
        try:
            conn = await tenant_admin(self.tenancy, out.shop_id)
            try:
                removed = await remove_reverse_capture(conn)
            finally:
                await conn.close(timeout=2.0)
            await self._audit(out.shop_id, "reverse capture removed", "done", f"{len(removed)} tables")
        except FAILURES as exc:
            out.warnings.append(f"reverse capture could not be removed from its tenant database: {exc}")
            await self._audit(out.shop_id, "reverse capture removed", "failed", out.warnings[-1])

    async def _audit(self, shop: int, step: str, status: str, detail: str | None) -> None:
        await audit(self.tenancy.pool, shop_id=shop, action=ACTION, step=step, status=status, detail=detail,
                    actor=self.actor)
