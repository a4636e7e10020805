"""The retirement gate: may a shop's legacy rows leave unified? (Read only: it changes nothing.)

A shop passes only when all of these hold, checked in this order (a failed
check stops the rest, and every reason is reported):

1. its phase is ``tenant_primary`` (its writes go to its tenant database) and
   no cutover or rollback holds its writes;
2. its reverse mirror is drained: the tenant database's outbox holds no entry
   of the shop (waited for up to ``[migration] drain_timeout_s``), so unified
   has every write the shop made (:mod:`.reverse_link`);
3. no statement touching it (its id, or ``-1``: naming no shop) was refused by
   the proxies within ``[migration] readiness_window_s`` (kind ``refused`` in
   the readiness recorder, :mod:`.readiness`). Routing treats ``tenant_primary``
   and ``retired`` shops alike, so those are exactly the statements that would
   be refused once it is retired, when a rollback would first need a restore.
   With ``force`` the shop passes anyway and is marked ``forced`` (the retirer
   audits it); either way the report names the statements;
4. with ``verify_before_retirement`` (the default), verification finds its
   tenant database identical to its rows in unified (:mod:`.verify`): any
   missing, extra or changed key, or a verification error, blocks it.

The gate also counts the shop's rows per table in unified (the dry run's plan).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from pgtenantproxy.config import MigrationSection
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.migration.archive import shop_condition
from pgtenantproxy.migration.readiness import recorded_statements, tally, window_text
from pgtenantproxy.migration.retire_report import ShopRetirement
from pgtenantproxy.migration.reverse_link import reverse_pending, tenant_admin, wait_reverse_drained
from pgtenantproxy.migration.verify import ShopVerifier
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.service import TenancyService

_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, TenancyError)


async def shop_rows(conn: asyncpg.Connection | asyncpg.Pool, tables: Sequence[TableInfo],
                    shop_id: int) -> dict[str, int]:
    """The shop's rows per table in unified."""
    counts: dict[str, int] = {}
    for table in tables:
        sql = f"SELECT count(*) FROM {table.name.sql} WHERE {shop_condition(table, shop_id)}"
        counts[table.label] = int(await conn.fetchval(sql))
    return counts


class RetirementGate:
    def __init__(self, tenancy: TenancyService, tables: list[TableInfo], section: MigrationSection,
                 *, actor: str | None = None, force: bool = False) -> None:
        self.tenancy = tenancy
        self.tables = tables
        self.section = section
        self.force = force
        self.verifier = ShopVerifier(tenancy, tables, section, actor=actor)

    async def check(self, phase: ph.ShopPhase) -> ShopRetirement:
        """The shop's gate result (status ``would retire`` or ``blocked``, with the reasons)."""
        out = ShopRetirement(phase.shop_id, phase.phase)
        if phase.phase != ph.TENANT_PRIMARY:
            out.block(f"phase {phase.phase}: {ph.NEEDS[ph.RETIRED]}")
            return out
        if phase.holding:
            out.block("a cutover or rollback is holding its writes right now")
            return out
        try:
            out.rows = await shop_rows(self.tenancy.pool, self.tables, phase.shop_id)
            await self._reverse(out)
        except _FAILURES as exc:
            out.block(f"could not check its reverse mirror: {type(exc).__name__}: {exc}")
        if out.reasons:
            return out
        try:
            await self._refused(out)
        except _FAILURES as exc:
            out.block(f"could not read the statements the proxies refused: {type(exc).__name__}: {exc}")
        if out.reasons:
            return out
        await self._verify(phase, out)
        return out

    async def _reverse(self, out: ShopRetirement) -> None:
        conn = await tenant_admin(self.tenancy, out.shop_id)
        try:
            timeout = float(self.section.drain_timeout_s)
            if not await wait_reverse_drained(conn, out.shop_id, timeout_s=timeout):
                pending = await reverse_pending(conn, out.shop_id)
                out.block(f"its reverse mirror is not drained: {pending.entries} writes made on its tenant "
                          f"database are not in unified yet, {pending.dead_letters} dead-lettered "
                          f"(waited {timeout:g} s)")
        finally:
            await conn.close(timeout=2.0)

    async def _refused(self, out: ShopRetirement) -> None:
        shop, window = out.shop_id, self.section.readiness_window_s
        found = (await recorded_statements(self.tenancy.pool, [shop], window_s=window))[shop].refused
        out.refused_statements = found
        if not found:
            return
        what = (f"{tally(found)} touching shop {shop} were refused by the proxies (0A000) in the last "
                f"{window_text(window)}")
        if self.force:
            out.forced = True
            out.warnings.append(f"--force: {what}; they stay refused once it is retired")
            return
        out.block(f"{what}: they would be refused after its retirement too, when a rollback needs a restore "
                  f"first; see retire --shop {shop} --check, or --force")

    async def _verify(self, phase: ph.ShopPhase, out: ShopRetirement) -> None:
        if not self.section.verify_before_retirement:
            out.verification = "skipped (verify_before_retirement = false)"
            return
        result = await self.verifier.verify(phase)
        out.verification = f"{result.status}: {result.summary()}"
        if not result.identical:
            details = [f"{t.table}: {t.error or ', '.join(f'{t.count(c)} {c}' for c in t.keys if t.count(c))}"
                       for t in result.tables if not t.identical]
            out.block(f"verification found its tenant database {result.status} from unified"
                      + (f" ({'; '.join(details)})" if details else f" ({result.summary()})"))
