"""``pgtenantproxy restore --shop N``: a retired shop's legacy rows back into unified, from its archive.

Steps, each refusing with nothing changed when its check fails:

1. the shop is ``retired``;
2. its archive is whole: the manifest exists, every file matches its size and
   sha256, and the manifest matches ``pgtenantproxy.retirement_archives`` (a
   replaced manifest is caught too); every archived table is still captured;
3. the shop has no row left in unified (a restore never merges);
4. reverse capture goes back on in its tenant database first, so writes made
   from now on are queued for the reverse mirror;
5. one transaction on unified, the mirror's own writes (``mirror_apply = on``,
   ``session_replication_role = replica``: not captured, no triggers), loads
   every file, referenced tables first, each file's row count checked;
6. catch-up (:mod:`.catch_up`): what the shop wrote to its tenant database
   since it was retired (nothing captured it) is found by comparing every row
   on both sides and synced into unified, key by key, with the mirror's
   applier;
7. verification of the shop against its tenant database. If it still differs
   (e.g. the tenant kept being written during the restore and the keys are
   unsettled), the loaded rows are deleted again and reverse capture removed:
   the shop stays ``retired``, the archive untouched, and the report says
   which tables differ;
8. phase ``retired -> tenant_primary`` (the reverse worker resumes the shop),
   ``restored_at`` recorded and the shop's key directory rows removed
   (:mod:`.key_directory`), in one transaction: from then on unified has its
   keys again.

Every step is in the audit log (action ``restore``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import IllegalTransition, MigrationError
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration import archive as ar
from pgtenantproxy.migration.catch_up import catch_up
from pgtenantproxy.migration.key_directory import forget_key_directory
from pgtenantproxy.migration.retire_gate import shop_rows
from pgtenantproxy.migration.retire_shop import FAILURES, delete_rows, quiet_session
from pgtenantproxy.migration.reverse_link import install_reverse_capture, remove_reverse_capture, tenant_admin
from pgtenantproxy.migration.tables import ordered_tables
from pgtenantproxy.migration.verify import ShopVerifier
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

ACTION = "restore"
_RECORDED = "SELECT tbl, sha256, rows FROM pgtenantproxy.retirement_archives WHERE shop_id = $1"
_RESTORED = "UPDATE pgtenantproxy.retirement_archives SET restored_at = clock_timestamp() WHERE shop_id = $1"


@dataclass
class RestoreResult:
    shop_id: int
    archive: str
    rows: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    verification: str | None = None
    seconds: float = 0.0
    #: Keys the shop wrote to its tenant database after retirement, synced into unified.
    caught_up: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "status": "restored", "archive": self.archive, "rows": self.rows,
                "total_rows": self.total_rows, "bytes": self.bytes, "verification": self.verification,
                "caught_up_keys": self.caught_up,
                "seconds": round(self.seconds, 3)}


async def restore_shop(
    tenancy: TenancyService, shop_id: int, *, config: Config | None = None, actor: str | None = None
) -> RestoreResult:
    """Restore a retired shop's rows into unified; :class:`MigrationError` (nothing changed) on refusal."""
    config = config or tenancy.config
    started = time.monotonic()
    directory = ar.shop_dir(config.migration.archive_dir, shop_id)
    try:
        phase, tables, manifest = await _checked(tenancy, shop_id, directory)
    except MigrationError as exc:
        await _audit(tenancy, shop_id, "refused", "failed", str(exc), actor)
        raise
    result = RestoreResult(shop_id, str(directory), bytes=manifest.bytes)
    await _audit(tenancy, shop_id, "started", "running", f"{manifest.rows} rows from {directory}", actor)
    try:
        await _reverse_capture(tenancy, shop_id, tables, on=True)
        result.rows = await _load(tenancy, directory, manifest, tables)
        await _audit(tenancy, shop_id, "loaded", "done", f"{result.total_rows} rows", actor)
        result.caught_up = await _catch_up(tenancy, shop_id, tables, config)
        await _audit(tenancy, shop_id, "caught up", "done",
                     f"{result.caught_up} keys written on the tenant since retirement synced", actor)
        result.verification = await _verify(tenancy, tables, config, phase, actor)
        async with tenancy.pool.acquire() as conn, conn.transaction():
            await transition(conn, shop_id, ph.TENANT_PRIMARY, expect=[ph.RETIRED],
                             expect_version=phase.version, reason=f"restored from {directory}", actor=actor,
                             action=ACTION)
            await conn.execute(_RESTORED, shop_id)
            await forget_key_directory(conn, shop_id)  # its keys are in unified again
    except FAILURES as exc:
        await _undo(tenancy, shop_id, tables, bool(result.rows))
        await _audit(tenancy, shop_id, "failed", "failed", str(exc), actor)
        raise MigrationError(f"restore of shop {shop_id} failed: {exc}; the shop stays retired "
                             "and its archive is unchanged") from exc
    result.seconds = time.monotonic() - started
    await _audit(tenancy, shop_id, "done", "done", f"{result.total_rows} rows in {result.seconds:.2f} s",
                 actor)
    return result


async def _checked(tenancy: TenancyService, shop_id: int,
                   directory: Path) -> tuple[ph.ShopPhase, list[TableInfo], ar.Manifest]:
    """Steps 1-3 (see the module docstring)."""
    async with tenancy.pool.acquire() as conn:
        phase = await read_phase(conn, shop_id)
        if phase.phase != ph.RETIRED:
            raise IllegalTransition(f"shop {shop_id} is in phase {phase.phase}; "
                                    "only a retired shop is restored")
        tables = await ordered_tables(conn, purpose="restore")
        recorded = {r["tbl"]: (r["sha256"], int(r["rows"])) for r in await conn.fetch(_RECORDED, shop_id)}
        manifest = ar.read_manifest(directory, shop_id)
        ar.check_files(directory, manifest)
        listed = {e.table: (e.sha256, e.rows) for e in manifest.tables}
        if listed != recorded:
            raise ar.ArchiveError(f"the manifest in {directory} does not match the archive recorded at "
                                  "retirement (pgtenantproxy.retirement_archives); nothing was changed")
        unknown = sorted(set(listed) - {t.label for t in tables})
        if unknown:
            raise MigrationError("the archive holds tables that are not captured any more: "
                                 + ", ".join(unknown))
        present = {k: n for k, n in (await shop_rows(conn, tables, shop_id)).items() if n}
        if present:
            raise MigrationError(f"shop {shop_id} already has rows in unified ("
                                 + ", ".join(f"{k}: {n}" for k, n in present.items())
                                 + "); restore never merges: nothing was changed")
    return phase, tables, manifest


async def _load(tenancy: TenancyService, directory: Path, manifest: ar.Manifest,
                tables: list[TableInfo]) -> dict[str, int]:
    entries = ar.by_table(manifest.tables)
    loaded: dict[str, int] = {}
    async with tenancy.pool.acquire() as conn, conn.transaction():
        await quiet_session(conn)
        for table in tables:
            if table.label in entries:
                loaded[table.label] = await ar.load_table(conn, directory, entries[table.label], table)
    return loaded


async def _verify(tenancy: TenancyService, tables: list[TableInfo], config: Config, phase: ph.ShopPhase,
                  actor: str | None) -> str:
    result = await ShopVerifier(tenancy, tables, config.migration, actor=actor).verify(phase)
    if not result.identical:
        raise MigrationError(
            f"the restored rows differ from its tenant database ({result.status}: {result.summary()}); "
            "the shop wrote to its tenant database after it was retired, so its archive is out of date"
        )
    return f"{result.status}: {result.summary()}"


async def _catch_up(tenancy: TenancyService, shop_id: int, tables: list[TableInfo], config: Config) -> int:
    tenant = await tenant_admin(tenancy, shop_id)
    try:
        async with tenancy.pool.acquire() as unified:
            return await catch_up(unified, tenant, tables, shop_id, config.dual_write)
    finally:
        await tenant.close(timeout=2.0)


async def _reverse_capture(
    tenancy: TenancyService, shop_id: int, tables: list[TableInfo], *, on: bool
) -> None:
    conn = await tenant_admin(tenancy, shop_id)
    try:
        if on:
            await install_reverse_capture(conn, tables)
        else:
            await remove_reverse_capture(conn)
    finally:
        await conn.close(timeout=2.0)


async def _undo(tenancy: TenancyService, shop_id: int, tables: list[TableInfo], loaded: bool) -> None:
    """Back to "retired": the loaded rows out of unified again, reverse capture off."""
    if loaded:
        async with tenancy.pool.acquire() as conn, conn.transaction():
            await quiet_session(conn)
            await delete_rows(conn, tables, shop_id)
    try:
        await _reverse_capture(tenancy, shop_id, tables, on=False)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # the reverse worker ignores a retired shop; capture is removed again at its next retirement
        logger.warning("shop %s: reverse capture could not be removed after a failed restore: %s",
                       shop_id, exc)


async def _audit(tenancy: TenancyService, shop_id: int, step: str, status: str, detail: str | None,
                 actor: str | None) -> None:
    await audit(tenancy.pool, shop_id=shop_id, action=ACTION, step=step, status=status, detail=detail,
                actor=actor)
