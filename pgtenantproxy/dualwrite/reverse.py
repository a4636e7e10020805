"""Reverse mirroring: once a shop's writes go to its own database, unified keeps a current copy.

After the write cutover (phase ``tenant_primary``) the shop's tenant database
is the source of truth and unified the copy that a rollback returns to. The
machinery is the forward one pointed the other way:

* :func:`install_reverse_capture` installs capture (:mod:`.capture`: the
  dualwrite schema, outbox, triggers, write fence) on the tenant database, on
  the same tables (labels) unified captures, as the tenant server's admin.
  Until the cutover only the forward mirror writes there, with
  ``mirror_apply = on``, so nothing is captured yet.
  :func:`remove_reverse_capture` takes it away again (rollback, retirement);
  entries already queued stay in the tenant's outbox.
* :class:`ReverseMirrorWorker` (started by
  :class:`~pgtenantproxy.dualwrite.service.DualWriteService` next to the
  forward worker) reads, every poll, the shops in ``tenant_primary`` (also
  while ``degraded``/``failed`` from it) from ``shop_phases`` on unified. For
  each shop with due entries it connects to the tenant database as the tenant
  server's admin (database from the credential registry), takes the shop's
  *lease* there (session ``pg_try_advisory_lock(LEASE_LOCK, shop)`` on the
  source, as the forward worker does on unified: several proxy instances
  never drain one shop at once), and drains the outbox into unified with the
  same :class:`~pgtenantproxy.dualwrite.apply.Applier` (source tenant, target
  unified; the target session sets ``mirror_apply = on``, so unified's capture
  and write fence let the writes through and record nothing, and
  ``session_replication_role = replica``, so unified's own triggers and
  foreign key actions do not change what the tenant wrote; both need the
  control-plane role on unified to be allowed to set it: superuser, or
  ``GRANT SET ON PARAMETER session_replication_role``).
* Retries, dead letters and the degraded mark go to the tenant database's own
  dualwrite tables (the applier settles entries on the source). An
  unreachable unified backs the shop off and, after the retries, marks it
  degraded there; an unreachable tenant backs the shop off.
* :func:`reverse_pending` / :func:`wait_reverse_drained` read the tenant's
  queue (what a rollback waits for); the worker keeps the same figures per
  shop in its own :class:`~pgtenantproxy.dualwrite.stats.MirrorStats`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from pgtenantproxy.config import DualWriteSection
from pgtenantproxy.dualwrite.apply import Applier, ShopMoved
from pgtenantproxy.dualwrite.capture import CapturedTable, disable_capture, enable_capture
from pgtenantproxy.dualwrite.catalog import Catalog
from pgtenantproxy.dualwrite.errors import CaptureError, DualWriteError, TargetUnavailable, describe
from pgtenantproxy.dualwrite.outbox import MARK_DEGRADED, UNREACHABLE
from pgtenantproxy.dualwrite.retry import RetryPolicy
from pgtenantproxy.dualwrite.schema import LEASE_LOCK
from pgtenantproxy.dualwrite.stats import MirrorStats, ShopGauge
from pgtenantproxy.dualwrite.targets import TenantTargets
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from pgtenantproxy.tenancy.errors import PlacementError
from pgtenantproxy.tenancy.registry import ConnectionRegistry
from pgtenantproxy.tenancy.servers import ServerDirectory

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgtenantproxy-reverse-mirror"
MAX_BATCHES_PER_TURN = 20
PROBE_LIMIT = 100_000  # entries counted per probe, at most

#: The reverse applier's guard, checked on unified under the shop's apply fence (see Applier.guard).
STILL_PRIMARY_SQL = """SELECT EXISTS (SELECT 1 FROM pgtenantproxy.shop_phases
                      WHERE shop_id = $1 AND phase = 'tenant_primary')"""
PRIMARY_SQL = """
SELECT shop_id FROM pgtenantproxy.shop_phases
WHERE CASE WHEN phase IN ('degraded', 'failed') THEN resume_phase ELSE phase END = 'tenant_primary'
ORDER BY shop_id
"""
_PROBE = f"""
SELECT count(*) AS n, coalesce(extract(epoch FROM clock_timestamp() - min(captured_at)), 0)::float8 AS age_s,
       count(*) FILTER (WHERE next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp()) > 0 AS due
FROM (SELECT captured_at, next_attempt_at FROM pgtenantproxy.outbox WHERE shop_id = $1
      LIMIT {PROBE_LIMIT}) AS q
"""
_PENDING = """
SELECT (SELECT count(*) FROM pgtenantproxy.outbox WHERE shop_id = $1) AS n,
       coalesce(extract(epoch FROM clock_timestamp()
                         - (SELECT min(captured_at) FROM pgtenantproxy.outbox WHERE shop_id = $1)),
                0)::float8 AS age_s,
       (SELECT count(*) FROM pgtenantproxy.dead_letters WHERE shop_id = $1) AS dead,
       coalesce((SELECT degraded FROM pgtenantproxy.mirror_state WHERE shop_id = $1), false) AS degraded
"""


class SourceUnavailable(DualWriteError):
    """The shop's tenant database (the reverse mirror's source) cannot be reached right now."""

    def __init__(self, shop_id: int, cause: BaseException) -> None:
        super().__init__(f"shop {shop_id}: tenant database unavailable: {describe(cause)}")
        self.shop_id = shop_id


# --- capture on the tenant database ------------------------------------------------
async def install_reverse_capture(
    conn: asyncpg.Connection, tables: Sequence[CapturedTable]
) -> list[CapturedTable]:
    """Capture (and the write fence) on a tenant database; ``conn``: its server's admin, ``tables``:
    unified's captured tables (:func:`~pgtenantproxy.dualwrite.capture.installed_tables`). Idempotent."""
    columns = {t.tenant_column for t in tables}
    if len(columns) != 1:
        raise CaptureError(f"reverse capture needs one tenant column; unified's tables: {sorted(columns)}")
    return await enable_capture(conn, [t.name for t in tables], columns.pop())


async def remove_reverse_capture(conn: asyncpg.Connection) -> list[QualifiedName]:
    """Remove capture from the tenant database (queued entries stay until drained or dropped)."""
    return await disable_capture(conn)


async def connect_tenant_admin(
    registry: ConnectionRegistry, servers: ServerDirectory, shop_id: int
) -> asyncpg.Connection:
    """The tenant server's admin on the shop's database (from the registry)."""
    creds = await registry.get(shop_id)
    kwargs = servers.get(creds.server).connect_kwargs(creds.database)
    kwargs["server_settings"] = {"application_name": APPLICATION_NAME}
    return await asyncpg.connect(**kwargs)


# --- the tenant's queue ------------------------------------------------------------
@dataclass(frozen=True)
class ReversePending:
    """A shop's reverse queue, read from its tenant database."""

    shop_id: int
    entries: int = 0
    oldest_age_s: float = 0.0
    dead_letters: int = 0
    degraded: bool = False

    @property
    def drained(self) -> bool:
        """Every captured write of the shop is on unified (nothing queued, nothing dead-lettered)."""
        return self.entries == 0 and self.dead_letters == 0


async def reverse_pending(conn: asyncpg.Connection, shop_id: int) -> ReversePending:
    """``conn``: the tenant database (admin). All zero when reverse capture was never installed."""
    if not await conn.fetchval("SELECT to_regclass('pgtenantproxy.outbox') IS NOT NULL"):
        return ReversePending(shop_id)
    r = await conn.fetchrow(_PENDING, shop_id)
    return ReversePending(shop_id, int(r["n"]), float(r["age_s"]), int(r["dead"]), bool(r["degraded"]))


async def wait_reverse_drained(
    conn: asyncpg.Connection, shop_id: int, *, timeout_s: float, poll_s: float = 0.05
) -> bool:
    """Wait until :attr:`ReversePending.drained`; False on timeout (dead letters never drain by
    themselves: replay them after the repair)."""
    deadline = time.monotonic() + timeout_s
    while not (await reverse_pending(conn, shop_id)).drained:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


class TenantSources(TenantTargets):
    """Admin connections to the shops' tenant databases, kept open between turns (LRU)."""

    async def _connect(self, shop_id: int) -> asyncpg.Connection:
        try:
            return await asyncio.wait_for(
                connect_tenant_admin(self.registry, self.servers, shop_id), self.connect_timeout_s
            )
        except (TimeoutError, PlacementError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise SourceUnavailable(shop_id, exc) from exc


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0
    marked: bool = False


class ReverseMirrorWorker:
    """Drains the tenant databases' outboxes of ``tenant_primary`` shops into unified (``pool``)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: ConnectionRegistry,
        servers: ServerDirectory,
        section: DualWriteSection,
        stats: MirrorStats | None = None,
    ) -> None:
        self.pool = pool
        self.section = section
        self.stats = stats or MirrorStats()
        self.policy = RetryPolicy.from_config(section)
        self.sources = TenantSources(registry, servers, max_open=max(32, 4 * section.concurrency))
        self._appliers: dict[int, Applier] = {}
        self._seen: set[int] = set()  # shops with something kept (a connection, a catalog, a gauge)
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._backoff: dict[int, _Backoff] = {}
        self._stopping = asyncio.Event()
        self._last_started = -1  # the shop whose turn started last (round-robin)

    # --- lifecycle ----------------------------------------------------------------
    async def run(self) -> None:
        """Drain until :meth:`stop`; in-flight turns finish first, then the connections close."""
        self._stopping.clear()
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    shops = await self.primary_shops()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    logger.warning("reverse mirror: unified unavailable (%s)", describe(exc))
                    await self._pause(self.policy.delay_ms(failures) / 1000)
                    continue
                await self._forget_others(shops)
                self._dispatch(shops)
                await self._pause(self.section.poll_interval_ms / 1000)
        finally:
            if self._inflight:
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
            await self.sources.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def primary_shops(self) -> list[int]:
        return [int(r["shop_id"]) for r in await self.pool.fetch(PRIMARY_SQL)]

    async def _forget_others(self, shops: list[int]) -> None:
        """Drop what is kept for shops that left ``tenant_primary`` (connections, catalogs, gauges)."""
        keep = set(shops)
        for shop_id in [s for s in self._seen if s not in keep and s not in self._inflight]:
            self._seen.discard(shop_id)
            self._appliers.pop(shop_id, None)
            self._backoff.pop(shop_id, None)
            self.stats.shops.pop(shop_id, None)
            await self.sources.discard(shop_id)

    def _dispatch(self, shops: list[int]) -> None:
        """Start turns for the shops, round-robin from where the last round stopped (a fixed order
        would hand every free slot to the first shops of the list and starve the others)."""
        now = time.monotonic()
        start = next((i for i, shop in enumerate(shops) if shop > self._last_started), 0)
        for shop_id in shops[start:] + shops[:start]:
            if len(self._inflight) >= self.section.concurrency:
                return
            if shop_id in self._inflight or self._backoff.get(shop_id, _Backoff()).until > now:
                continue
            self._last_started = shop_id
            self._seen.add(shop_id)
            self._inflight[shop_id] = asyncio.get_running_loop().create_task(
                self._drain_shop(shop_id), name=f"reverse-mirror-shop-{shop_id}"
            )

    # --- one shop -------------------------------------------------------------------
    def applier(self, shop_id: int) -> Applier:
        """The shop's applier (its own catalog: each tenant database is read on its own)."""
        applier = self._appliers.get(shop_id)
        if applier is None:
            applier = self._appliers[shop_id] = Applier(
                Catalog(), self.policy, self.stats, batch_size=self.section.batch_size, replica=True,
                guard=STILL_PRIMARY_SQL,
            )
        return applier

    async def _drain_shop(self, shop_id: int) -> None:
        try:
            await self._drain_leased(shop_id)
            self._recovered(shop_id)
        except ShopMoved as exc:  # retired or rolled back while this batch waited for the fence
            logger.info("%s", exc)
        except TargetUnavailable as exc:
            await self._unified_unavailable(shop_id, exc)
        except Exception as exc:
            if isinstance(exc, SourceUnavailable | OSError | asyncpg.InterfaceError):
                logger.warning("shop %s: reverse mirror: %s", shop_id, describe(exc))
            else:
                logger.exception("shop %s: reverse mirroring failed", shop_id)
            await self.sources.discard(shop_id)
            self._back_off(shop_id)
        finally:
            self._inflight.pop(shop_id, None)

    async def _drain_leased(self, shop_id: int) -> None:
        async with self.sources.lease(shop_id) as source:
            if not await self._probe(source, shop_id):
                return
            key = shop_lock_key(shop_id)
            if not await source.fetchval("SELECT pg_try_advisory_lock($1, $2)", LEASE_LOCK, key):
                return  # another worker drains this shop right now
            try:
                await self._batches(source, shop_id)
            finally:
                if not source.is_closed():
                    await source.execute("SELECT pg_advisory_unlock($1, $2)", LEASE_LOCK, key)
            await self._probe(source, shop_id)

    async def _batches(self, source: asyncpg.Connection, shop_id: int) -> None:
        applier = self.applier(shop_id)
        for _ in range(MAX_BATCHES_PER_TURN):
            async with self.pool.acquire() as target:
                result = await applier.run_batch(source, target, shop_id)
            if result.claimed < self.section.batch_size or self._stopping.is_set():
                return

    async def _probe(self, source: asyncpg.Connection, shop_id: int) -> bool:
        """Refresh the shop's gauge from its tenant's outbox; True when an entry is due."""
        try:
            row = await source.fetchrow(_PROBE, shop_id)
        except asyncpg.UndefinedTableError:
            logger.debug("shop %s: no reverse capture installed on its tenant database", shop_id)
            return False
        if row["n"]:
            self.stats.shops[shop_id] = ShopGauge(int(row["n"]), float(row["age_s"]))
        else:
            self.stats.shops.pop(shop_id, None)
        return bool(row["due"])

    def _back_off(self, shop_id: int) -> _Backoff:
        state = self._backoff.setdefault(shop_id, _Backoff())
        state.failures += 1
        state.until = time.monotonic() + self.policy.delay_ms(state.failures) / 1000
        return state

    def _recovered(self, shop_id: int) -> None:
        state = self._backoff.pop(shop_id, None)
        if state is not None and state.failures:
            logger.info("shop %s: reverse mirror works again after %d failures", shop_id, state.failures)

    async def _unified_unavailable(self, shop_id: int, exc: TargetUnavailable) -> None:
        """Back off; after the retries, mark the shop degraded in its tenant database."""
        self.stats.target_unavailable += 1
        state = self._back_off(shop_id)
        logger.warning("reverse mirror: %s (failure %d)", exc, state.failures)
        if not self.policy.exhausted(state.failures) or state.marked:
            return
        try:
            async with self.sources.lease(shop_id) as source:
                await source.execute(MARK_DEGRADED, shop_id, UNREACHABLE, f"unified: {exc}"[:2000])
            state.marked = True
        except Exception as err:
            logger.warning("shop %s: could not record the degraded state: %s", shop_id, describe(err))
