"""Verification: does each shop's tenant database hold exactly its rows of unified?

Per shop (at most ``[migration] jobs`` at a time), per captured table in
dependency order:

1. wait for the shop's mirror to drain (:func:`~.drain.wait_drained`);
2. unified, in one REPEATABLE READ READ ONLY transaction: one pass over the
   shop's rows in key order giving the key ranges (``verify_chunk_rows`` rows
   each, the last one open-ended) and each range's checksum (:mod:`.checksums`);
3. wait for the drain again (so the tenant holds at least that snapshot), then
   the same ranges' checksums on the tenant, in one REPEATABLE READ transaction;
4. for the ranges whose checksums differ, ``{key: row hash}`` of those ranges
   on unified, the tenant and unified again (with a drain before the tenant
   read), classified key by key (:mod:`.keydiff`): settled, missing on the
   tenant, extra on the tenant, changed, or in flight. For a shop whose writes
   land on its own database (cut over), the other way round: the tenant,
   unified after its *reverse* mirror drained, the tenant again, so the app's
   writes during a retirement's verification raise no false alarm;
5. the keys not settled are read again the same way (by primary-key probes)
   up to ``verify_rechecks`` times, a short pause and a drain before each, so
   writes in flight during the first look do not raise false alarms.

Nothing is written to either side and nothing is locked: the application
carries on. Both sides read under the same text-form settings
(:data:`~.checksums.SESSION_SETTINGS`). The tenant is read as the shop's own
role, with credentials from the encrypted registry (as the mirror writes).
Each shop's outcome goes to the audit log (action ``verify``).

Each shop's reference copies (``[[tenancy.reference_tables]]``) are compared too, listed with its
tables (:mod:`.reference_verify`: counts and checksums of the listed columns, the differing keys).

Once per run, after the shops, the foreign keys between tenant tables are
proved on unified (:mod:`.fk_proofs`: rows that reference another shop's row,
with sample keys) and recorded; the report lists them. A cross-shop reference
does not change any shop's verdict (it means routing cannot follow that
foreign key); a proof that fails is reported as ``foreign_keys_error``.

Which shops: ``shops=None`` means every shop whose (effective) phase is in
:data:`ELIGIBLE`; shops named explicitly may also be ``provisioned``
(verification then shows what a backfill still has to copy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import asyncpg

from pgtenantproxy.config import Config, MigrationSection
from pgtenantproxy.dualwrite.reverse import wait_reverse_drained
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration import checksums as cs
from pgtenantproxy.migration.drain import mirror_health, wait_drained
from pgtenantproxy.migration.fk_proofs import prove_foreign_keys
from pgtenantproxy.migration.keydiff import classify, differing_ranges
from pgtenantproxy.migration.keyranges import KeyRange
from pgtenantproxy.migration.reference_verify import CopyVerifier
from pgtenantproxy.migration.reverse_link import tenant_admin
from pgtenantproxy.migration.tables import ordered_tables
from pgtenantproxy.migration.verify_report import ShopVerification, TableVerification, VerificationReport
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.registry import connect_tenant
from pgtenantproxy.tenancy.servers import asyncpg_ssl
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

ELIGIBLE = frozenset({ph.BACKFILLED, ph.MIRRORING, ph.READS_ON_TENANT, ph.TENANT_PRIMARY})
EXPLICIT = ELIGIBLE | {ph.PROVISIONED}
APPLICATION_NAME = "pgtenantproxy-verify"
RECHECK_PAUSE_S = 0.2
RANGES_PER_LOOK = 8  # differing ranges whose rows are held in memory at once
AFTER_TIMEOUT_S = 1.0  # drain wait once one wait of the shop timed out already
CONNECT_TIMEOUT_S = 10.0
_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, TenancyError)


async def verify_shops(
    tenancy: TenancyService,
    shops: Sequence[int] | None,
    *,
    config: Config | None = None,
    actor: str | None = None,
) -> VerificationReport:
    """Verify ``shops`` (None: every eligible shop); the report, one entry per shop, in shop order.

    Raises :class:`MigrationError` (nothing verified) when a named shop is in a
    phase with nothing to compare or capture was never set up.
    """
    config = config or tenancy.config
    started = time.monotonic()
    async with tenancy.pool.acquire() as conn:
        selected = select_shops(await read_phases(conn), shops)
        tables = await ordered_tables(conn, purpose="verify")
    verifier = ShopVerifier(tenancy, tables, config.migration, actor=actor,
                            copies=await CopyVerifier.load(tenancy, config))
    slots = asyncio.Semaphore(config.migration.jobs)

    async def one(phase: ph.ShopPhase) -> ShopVerification:
        async with slots:
            return await verifier.verify(phase)

    results = await asyncio.gather(*(one(p) for p in selected))
    report = VerificationReport(list(results))
    try:
        async with tenancy.pool.acquire() as conn:
            report.foreign_keys = await prove_foreign_keys(conn, config.tenancy)
    except (*_FAILURES, MigrationError) as exc:
        report.foreign_keys_error = f"{type(exc).__name__}: {exc}"
        logger.warning("foreign keys not proved: %s", report.foreign_keys_error)
    report.seconds = time.monotonic() - started
    return report


def select_shops(phases: Mapping[int, ph.ShopPhase], shops: Sequence[int] | None) -> list[ph.ShopPhase]:
    """The shops to verify, by phase; named shops in another phase are refused, all of them at once."""
    if shops is None:
        return [p for _, p in sorted(phases.items()) if p.effective in ELIGIBLE]
    chosen = [phases.get(s, ph.ShopPhase(s)) for s in sorted(set(shops))]
    refused = [p for p in chosen if p.effective not in EXPLICIT]
    if refused:
        listed = ", ".join(f"shop {p.shop_id} is in phase {p.phase}" for p in refused)
        raise MigrationError(
            f"nothing to verify: {listed}; verification needs a provisioned tenant database "
            f"(phases {', '.join(sorted(EXPLICIT))})"
        )
    return chosen


class ShopVerifier:
    """Verifies one shop at a time (safe to share between concurrent shops: it holds no per-shop state)."""

    def __init__(self, tenancy: TenancyService, tables: list[TableInfo], section: MigrationSection,
                 *, actor: str | None = None, copies: CopyVerifier | None = None) -> None:
        self.tenancy = tenancy
        self.tables = tables
        self.section = section
        self.copies = copies
        self.actor = actor

    async def verify(self, phase: ph.ShopPhase) -> ShopVerification:
        shop = ShopVerification(phase.shop_id, phase.phase)
        started = time.monotonic()
        try:
            async with (self.tenancy.pool.acquire() as conn, self._tenant(phase.shop_id) as tenant,
                        self._reverse(phase) as reverse):
                await self._drain(conn, shop)
                for table in self.tables:
                    shop.tables.append(await self._table(conn, tenant, table, shop, reverse))
                if self.copies is not None:
                    shop.tables += await self.copies.verify(conn, tenant, phase.shop_id)
                health = await mirror_health(conn, phase.shop_id)
            shop.degraded, shop.degraded_reason, shop.dead_letters = (
                health.degraded, health.reason, health.dead_letters)
        except _FAILURES as exc:
            shop.error = f"shop {phase.shop_id}: {type(exc).__name__}: {exc}"
            logger.warning("verification of shop %s failed: %s", phase.shop_id, shop.error)
        shop.seconds = time.monotonic() - started
        logger.info("shop %s: %s (%s)", shop.shop_id, shop.status, shop.summary())
        try:
            await audit(self.tenancy.pool, shop_id=shop.shop_id, action="verify", status=shop.status,
                        detail=shop.summary(), actor=self.actor)
        except _FAILURES as exc:
            logger.warning("shop %s: could not write the audit log: %s", shop.shop_id, exc)
        return shop

    @asynccontextmanager
    async def _tenant(self, shop_id: int) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the shop's tenant database as its role, with the comparison settings."""
        registry = self.tenancy.registry
        creds = await registry.get(shop_id)
        ssl = asyncpg_ssl(self.tenancy.servers.get(creds.server).section)
        conn = await connect_tenant(
            registry, shop_id, timeout=CONNECT_TIMEOUT_S, ssl=ssl,
            server_settings={"application_name": APPLICATION_NAME, **cs.SESSION_SETTINGS},
        )
        try:
            yield conn
        finally:
            await conn.close(timeout=2.0)

    @asynccontextmanager
    async def _reverse(self, phase: ph.ShopPhase) -> AsyncIterator[asyncpg.Connection | None]:
        """For a shop whose writes land on its own database (cut over): an admin connection there, to wait
        for its reverse mirror; None otherwise."""
        if phase.effective not in ph.OWN_DATABASE:
            yield None
            return
        admin = await tenant_admin(self.tenancy, phase.shop_id)
        try:
            yield admin
        finally:
            await admin.close(timeout=2.0)

    async def _drain_reverse(self, admin: asyncpg.Connection, shop: ShopVerification) -> None:
        await self._wait(wait_reverse_drained, admin, shop, "reverse mirror")

    async def _drain(self, conn: asyncpg.Connection, shop: ShopVerification) -> None:
        await self._wait(wait_drained, conn, shop, "mirror")

    async def _wait(self, drained: Callable[..., Awaitable[bool]], conn: asyncpg.Connection,
                    shop: ShopVerification, what: str) -> None:
        """Wait for a mirror to drain (the full timeout once; after one timed out, briefly)."""
        timeout = self.section.drain_timeout_s if shop.drained else AFTER_TIMEOUT_S
        if not await drained(conn, shop.shop_id, timeout_s=timeout):
            if shop.drained:
                logger.warning("shop %s: the %s did not drain within %ss; comparing anyway",
                               shop.shop_id, what, timeout)
            shop.drained = False

    async def _table(self, conn: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo,
                     shop: ShopVerification, reverse: asyncpg.Connection | None) -> TableVerification:
        out = TableVerification(table.label)
        try:
            async with cs.comparable(conn, repeatable=True):
                cut, unified = await cs.unified_pass(
                    conn, table, shop.shop_id, self.section.verify_chunk_rows)
            await self._drain(conn, shop)
            async with tenant.transaction(isolation="repeatable_read", readonly=True):
                theirs = [await cs.range_sums(tenant, table, rng, None) for rng in cut]
            out.ranges = len(cut)
            out.rows_unified = sum(n for n, _ in unified)
            out.rows_tenant = sum(n for n, _ in theirs)
            differing = [cut[i] for i in differing_ranges(unified, theirs)]
            for rng in differing:
                out.differing_ranges.add(str(rng))
            verdicts: dict[str, str] = {}
            for at in range(0, len(differing), RANGES_PER_LOOK):
                verdicts |= await self._look(conn, tenant, table, shop, differing[at:at + RANGES_PER_LOOK],
                                             reverse)
            out.record(await self._recheck(conn, tenant, table, shop, verdicts, out, reverse))
        except asyncpg.PostgresError as exc:  # this table only (e.g. a column missing on the tenant)
            out.error = f"{table.label}: {type(exc).__name__}: {exc}"
        return out

    async def _look(self, conn: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo,
                    shop: ShopVerification, rngs: list[KeyRange],
                    reverse: asyncpg.Connection | None) -> dict[str, str]:
        """Key verdicts of whole ranges: the side the writes land on, (drain) the other, the first again."""
        async def unified() -> dict[str, int | None]:
            found: dict[str, int | None] = {}
            async with cs.comparable(conn):
                for rng in rngs:
                    found.update(await cs.range_hashes(conn, table, rng, shop.shop_id))
            return found

        async def tenants() -> dict[str, int | None]:
            found: dict[str, int | None] = {}
            for rng in rngs:
                found.update(await cs.range_hashes(tenant, table, rng, None))
            return found

        return await self._three_reads(conn, shop, unified, tenants, reverse)

    async def _three_reads(self, conn: asyncpg.Connection, shop: ShopVerification,
                           unified: Callable[[], Awaitable[dict[str, int | None]]],
                           tenants: Callable[[], Awaitable[dict[str, int | None]]],
                           reverse: asyncpg.Connection | None) -> dict[str, str]:
        """Before a cutover unified is the source: unified, (forward drain) tenant, unified again. After
        it the shop's database is: tenant, (reverse drain) unified, tenant again. A key is settled when
        the other side equals either look at the source."""
        if reverse is None:
            before = await unified()
            await self._drain(conn, shop)
            return classify(before, await tenants(), await unified())
        before = await tenants()
        await self._drain_reverse(reverse, shop)
        return classify(before, await unified(), await tenants())

    async def _recheck(self, conn: asyncpg.Connection, tenant: asyncpg.Connection, table: TableInfo,
                       shop: ShopVerification, verdicts: dict[str, str],
                       out: TableVerification, reverse: asyncpg.Connection | None) -> dict[str, str]:
        """The keys not settled, read again up to ``verify_rechecks`` times; the last verdicts."""
        for _ in range(self.section.verify_rechecks):
            if not verdicts:
                break
            out.rechecks += 1
            await asyncio.sleep(RECHECK_PAUSE_S)
            keys = sorted(verdicts)

            async def unified(keys: list[str] = keys) -> dict[str, int | None]:
                async with cs.comparable(conn):
                    return await cs.key_hashes(conn, table, keys, shop.shop_id)

            async def tenants(keys: list[str] = keys) -> dict[str, int | None]:
                return await cs.key_hashes(tenant, table, keys, None)

            verdicts = await self._three_reads(conn, shop, unified, tenants, reverse)
        return verdicts


