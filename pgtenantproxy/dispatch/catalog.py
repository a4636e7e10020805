"""What routing needs from the control plane, kept fresh in the background.

* the tenant tables (``[tenancy] tenant_tables``, "auto" = discovered);
* the shops whose tenant database is ready (provisioned);
* per-shop read overrides (``pgtenantproxy reads activate|deactivate``).

Refreshed every ``interval`` seconds on one control-plane connection; the
routing path only reads immutable snapshots (frozensets swapped whole). A
failed refresh keeps the last good snapshot and logs why: a control-plane
hiccup never turns routing off or on by itself. Until the first refresh
succeeds nothing is eligible, so every read goes to unified.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.tenancy.schema_clone import discover_tenant_tables

logger = logging.getLogger(__name__)

OVERRIDES_DDL = """
CREATE TABLE IF NOT EXISTS pgtenantproxy.read_overrides (
    shop_id     bigint PRIMARY KEY,
    active      boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL DEFAULT current_user
)
"""


@dataclass(frozen=True)
class CatalogSnapshot:
    tenant_tables: frozenset[str] = frozenset()
    ready: frozenset[int] = frozenset()
    activated: frozenset[int] = frozenset()
    deactivated: frozenset[int] = frozenset()
    version: int = 0


@dataclass
class TenantCatalog:
    tenancy: TenancySection
    interval: float = 1.0
    snapshot: CatalogSnapshot = field(default_factory=CatalogSnapshot)
    failures: int = 0
    _task: asyncio.Task[None] | None = None

    async def refresh(self, conn: asyncpg.Connection) -> CatalogSnapshot:
        tables = frozenset(str(t) for t in await discover_tenant_tables(conn, self.tenancy))
        ready = frozenset(
            int(r["shop_id"])
            for r in await conn.fetch(
                "SELECT shop_id FROM pgtenantproxy.tenant_provisions WHERE state = 'provisioned'"
            )
        )
        activated, deactivated = await _overrides(conn)
        old = self.snapshot
        new = CatalogSnapshot(tables, ready, activated, deactivated, old.version)
        if (new.tenant_tables, new.ready, new.activated, new.deactivated) != (
            old.tenant_tables, old.ready, old.activated, old.deactivated,
        ):
            new = CatalogSnapshot(tables, ready, activated, deactivated, old.version + 1)
        self.snapshot = new
        return new

    def start(self, pool: asyncpg.Pool) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(pool))

    async def _run(self, pool: asyncpg.Pool) -> None:
        while True:
            try:
                async with pool.acquire() as conn:
                    await self.refresh(conn)
                if self.failures:
                    logger.info("control-plane catalog refreshed again after %d failures", self.failures)
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    logger.warning("control-plane catalog refresh failed (%s); keeping the last one", exc)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


async def _overrides(conn: asyncpg.Connection) -> tuple[frozenset[int], frozenset[int]]:
    exists = await conn.fetchval("SELECT to_regclass('pgtenantproxy.read_overrides') IS NOT NULL")
    if not exists:
        return frozenset(), frozenset()
    rows = await conn.fetch("SELECT shop_id, active FROM pgtenantproxy.read_overrides")
    activated = frozenset(int(r["shop_id"]) for r in rows if r["active"])
    deactivated = frozenset(int(r["shop_id"]) for r in rows if not r["active"])
    return activated, deactivated


async def set_override(conn: asyncpg.Connection, shop_id: int, active: bool | None) -> None:
    """Activate (True), deactivate (False) or clear (None) a shop's tenant reads."""
    await conn.execute(OVERRIDES_DDL)
    if active is None:
        await conn.execute("DELETE FROM pgtenantproxy.read_overrides WHERE shop_id = $1", shop_id)
        return
    await conn.execute(
        """INSERT INTO pgtenantproxy.read_overrides (shop_id, active) VALUES ($1, $2)
           ON CONFLICT (shop_id) DO UPDATE
           SET active = EXCLUDED.active, updated_at = now(), actor = current_user""",
        shop_id,
        active,
    )
