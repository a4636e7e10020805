"""What routing needs from the control plane, kept fresh in the background.

* the tenant tables (``[tenancy] tenant_tables``, "auto" = discovered);
* the shops whose tenant database may serve reads: phase ``mirroring``,
  ``reads_on_tenant`` or ``tenant_primary`` (:mod:`pgtenantproxy.lifecycle.phases`),
  with every shop's phase for status pages;
* per-shop read overrides (``pgtenantproxy reads activate|deactivate``);
* the strategy set through the admin API (:mod:`.routing_state`), if any.

Refreshed every ``interval`` seconds on one control-plane connection, and at
once when a ``NOTIFY pgtenantproxy_routing`` arrives (:meth:`TenantCatalog.listen`
keeps one connection LISTENing, reconnecting with backoff); the routing path
only reads immutable snapshots (frozensets swapped whole). Listeners
registered in :attr:`TenantCatalog.on_change` are called, synchronously, right
after a changed snapshot is installed. A failed refresh keeps the last good
snapshot and logs why: a control-plane hiccup never turns routing off or on
by itself. Until the first refresh succeeds nothing is eligible, so every
read goes to unified.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.dispatch.copy_columns import CopyColumns, read_copy_columns
from pgtenantproxy.dispatch.key_facts import KeyFacts, read_key_facts
from pgtenantproxy.dispatch.routing_state import CHANNEL, RoutingState, read_state
from pgtenantproxy.lifecycle.federation import read_columns, read_federation, signature
from pgtenantproxy.lifecycle.instances import heartbeat, new_instance_id
from pgtenantproxy.lifecycle.phases import ShopPhase
from pgtenantproxy.lifecycle.reference import reference_lag
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.routing.federation import FederationFacts
from pgtenantproxy.routing.reference import ReferenceFacts
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
    #: The strategy set through the admin API (None: the config file's applies).
    routing: RoutingState | None = None
    #: Every recorded shop's phase (shops absent are in ``unified``); do not mutate.
    phases: dict[int, ShopPhase] = field(default_factory=dict)
    #: Shops whose writes a cutover or rollback holds right now.
    holding: frozenset[int] = frozenset()
    #: The newest phase epoch in this snapshot (acknowledged in ``proxy_instances``).
    epoch: int = 0
    #: Key columns, consistent foreign keys and id blocks (routing by key).
    keys: KeyFacts = field(default_factory=KeyFacts)
    #: Where the tenant column is in a COPY without a column list, per tenant table.
    copy_columns: CopyColumns = field(default_factory=CopyColumns)
    #: The tenant tables' columns and the shops whose foreign tables match them (federated reads).
    federation: FederationFacts = field(default_factory=FederationFacts)
    #: The reference tables and the shops whose copies of them are current.
    reference: ReferenceFacts = field(default_factory=ReferenceFacts)

    def same_content(self, other: CatalogSnapshot) -> bool:
        same = (self.tenant_tables, self.ready, self.activated, self.deactivated, self.routing,
                self.phases, self.keys) == (other.tenant_tables, other.ready, other.activated,
                                            other.deactivated, other.routing, other.phases, other.keys)
        return same and (self.copy_columns, self.federation, self.reference) == (
            other.copy_columns, other.federation, other.reference)

    def phase(self, shop_id: int) -> ShopPhase:
        return self.phases.get(shop_id) or ShopPhase(shop_id)


@dataclass
class TenantCatalog:
    tenancy: TenancySection
    interval: float = 1.0
    snapshot: CatalogSnapshot = field(default_factory=CatalogSnapshot)
    failures: int = 0
    #: Successful refreshes so far (readiness: at least one).
    refreshes: int = 0
    on_change: list[Callable[[CatalogSnapshot], None]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _listen_task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: This proxy process in ``pgtenantproxy.proxy_instances`` (heartbeat and epoch seen).
    instance_id: str = field(default_factory=new_instance_id)
    #: A shop's reference copies are current while their lag is under this (``[dual_write] max_lag_ms``).
    reference_max_lag_s: float = 1.0
    #: The reference tables: label -> the copies' shop column (``[[tenancy.reference_tables]]``).
    reference_tables: dict[str, str | None] = field(default_factory=dict)
    #: The newest epoch this proxy may acknowledge, given the newest it has seen (the dispatcher holds it
    #: back while writes decided under an older one are in flight).
    acknowledgeable: Callable[[int], int] = field(default=lambda epoch: epoch)

    async def refresh(self, conn: asyncpg.Connection) -> CatalogSnapshot:
        tables = frozenset(str(t) for t in await discover_tenant_tables(conn, self.tenancy))
        phases = await read_phases(conn)
        ready = frozenset(shop for shop, record in phases.items() if record.routable)
        activated, deactivated = await _overrides(conn)
        routing = await read_state(conn)
        old = self.snapshot
        holding = frozenset(shop for shop, record in phases.items() if record.holding)
        epoch = max((record.epoch for record in phases.values()), default=0)
        keys = await read_key_facts(conn, tables)
        copy_columns = await read_copy_columns(conn, tables, self.tenancy.tenant_column)
        federation = await read_federation_facts(conn, tables)
        reference = await read_reference_facts(conn, self.reference_tables, self.reference_max_lag_s)
        new = CatalogSnapshot(tables, ready, activated, deactivated, old.version, routing, phases,
                              holding, epoch, keys, copy_columns=copy_columns, federation=federation,
                              reference=reference)
        changed = not new.same_content(old)
        if changed:
            new = dataclasses.replace(new, version=old.version + 1)
        self.snapshot = new
        self.refreshes += 1
        await heartbeat(conn, self.instance_id, self.acknowledgeable(epoch))
        if changed:
            for listener in self.on_change:
                try:
                    listener(new)
                except Exception:
                    logger.exception("catalog change listener failed")
        return new

    def start(self, pool: asyncpg.Pool) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(pool))

    def wake(self) -> None:
        """Refresh now (a NOTIFY arrived), not at the end of the interval."""
        self._wake.set()

    async def _run(self, pool: asyncpg.Pool) -> None:
        while True:
            self._wake.clear()
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
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass

    def listen(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        """Keep one connection LISTENing on ``pgtenantproxy_routing``; each notification wakes the refresh."""
        if self._listen_task is None:
            self._listen_task = asyncio.get_running_loop().create_task(self._listen(connect))

    async def _listen(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        backoff = 0.25
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *_args: self.wake())
                if backoff > 0.25:
                    logger.info("listening for routing changes again")
                backoff = 0.25
                self.wake()  # whatever changed while nobody listened
                await lost.wait()
                logger.warning("routing change notifications: connection lost; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if backoff == 0.25:
                    logger.warning("routing change notifications unavailable (%s); relying on the "
                                   "periodic refresh until they are back", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    await _close_quietly(conn)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def stop(self) -> None:
        for task in (self._task, self._listen_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._listen_task = None


async def read_federation_facts(conn: asyncpg.Connection, tables: frozenset[str]) -> FederationFacts:
    """The tenant tables' columns on unified, and the shops whose foreign tables were built from them."""
    columns = await read_columns(conn, tables)
    current = signature(columns)
    built = await read_federation(conn)
    return FederationFacts({t: tuple(name for name, _type in cols) for t, cols in columns.items()},
                           frozenset(shop for shop, sig in built.items() if sig == current))


async def read_reference_facts(conn: asyncpg.Connection, tables: dict[str, str | None],
                               max_lag_s: float) -> ReferenceFacts:
    """The reference tables, and the shops whose copies of all of them are within ``max_lag_s``."""
    if not tables:
        return ReferenceFacts()
    read_at = time.monotonic()
    lags = await reference_lag(conn, sorted(tables))
    current = frozenset(shop for shop, lag in lags.items() if lag <= max_lag_s)
    return ReferenceFacts(dict(tables), current, read_at)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception:
        conn.terminate()


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
