"""Everything routing needs at run time, built from one config snapshot, and swapped on change.

Routing is on when the config lists ``[[tenant_servers]]``: the proxy then
opens the control plane (tenancy service on unified; the encryption key is
required to read tenant credentials), starts the catalog refresher (and its
LISTEN connection for routing changes) and the tenant pools, and gives the
sessions a :class:`Dispatcher`. Without tenant servers the proxy is a plain
session relay to unified.

The effective read strategy is the admin API's (``routing_state`` in the
control schema) when there is one, else ``[routing]`` of the config
(:mod:`.routing_state`). Two things change it while clients stay connected,
and both end in one :meth:`Dispatcher.use_router` call with a new immutable
:class:`Router` (sharing the analysis cache): a config reload
(:meth:`RoutingRuntime.apply_config`, which also swaps the pool, fallback and
shadow settings) and a catalog change that carries another API state
(:meth:`RoutingRuntime._on_catalog`). Sessions keep their connections and
their per-session routing state; the next unit is decided by the new router.

The runtime also starts and stops the readiness recorder's flusher
(:class:`~pgtenantproxy.dispatch.conflicts.ConflictRecorder`, the dispatcher's
``conflicts``; a last flush at stop) and gives the dispatcher the longest wait
for a cutover hold (``[routing] write_hold_timeout_ms``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pgtenantproxy.config import Config, TenantServerSection
from pgtenantproxy.dispatch.catalog import CatalogSnapshot, TenantCatalog
from pgtenantproxy.dispatch.dispatcher import Dispatcher, MirrorView
from pgtenantproxy.dispatch.federation import Federator
from pgtenantproxy.dispatch.items import unit_items
from pgtenantproxy.dispatch.key_directory import KeyDirectory
from pgtenantproxy.dispatch.routing_state import EffectiveStrategy, RoutingState, effective, effective_routing
from pgtenantproxy.dispatch.shadow import ShadowReader
from pgtenantproxy.lifecycle.instances import forget
from pgtenantproxy.pools.connection import ServerTarget
from pgtenantproxy.pools.pool import PoolManager, TenantPool
from pgtenantproxy.routing import Router
from pgtenantproxy.tenancy.registry import connect_tenant
from pgtenantproxy.tenancy.servers import unified_connect_kwargs
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

SHADOW_SHOP = 0  # the unified side of shadow reads, in its own pool manager


@dataclass
class RoutingRuntime:
    config: Config
    tenancy: TenancyService
    catalog: TenantCatalog
    pools: PoolManager
    unified_pools: PoolManager
    dispatcher: Dispatcher
    shadow: ShadowReader | None
    #: The API state the current router was built with.
    applied_state: RoutingState | None = field(default=None)

    @classmethod
    async def start(
        cls, config: Config, *, mirror: MirrorView | None = None, listen: bool = True
    ) -> RoutingRuntime:
        tenancy = await TenancyService.open(config, need_key=True, pool_size=4)
        pools, unified_pools = _pool_managers(config, tenancy)
        references = {t.table: t.shop_column for t in config.tenancy.reference_tables}
        catalog = TenantCatalog(config.tenancy, interval=config.routing.catalog_refresh_ms / 1000,
                                reference_max_lag_s=config.dual_write.max_lag_ms / 1000,
                                reference_tables=references)
        async with tenancy.pool.acquire() as conn:
            await catalog.refresh(conn)
        catalog.start(tenancy.pool)
        pools.start()
        unified_pools.start()
        state = catalog.snapshot.routing
        dispatcher = Dispatcher(
            _router(config, state, None),
            catalog,
            pools,
            tenant_timeout=config.routing.tenant_timeout_ms / 1000,
            mirror=mirror,
            max_lag_ms=config.dual_write.max_lag_ms,
            log_inconsistencies=config.routing.log_inconsistencies,
            fallback_enabled=config.routing.enable_fallback,
        )
        dispatcher.hold_timeout = config.routing.write_hold_timeout_ms / 1000
        catalog.acknowledgeable = dispatcher.acknowledgeable
        dispatcher.conflicts.start(tenancy.pool)
        dispatcher.keys = await _key_directory(config, tenancy)
        dispatcher.federator = Federator(max_shops=config.federation.max_shops_per_query,
                                         tenant_column=config.tenancy.tenant_column)
        runtime = cls(config, tenancy, catalog, pools, unified_pools, dispatcher, None, state)
        runtime._apply_shadow(config)
        catalog.on_change.append(runtime._on_catalog)
        if listen:
            kwargs = unified_connect_kwargs(config)
            catalog.listen(lambda: asyncpg.connect(**kwargs))
        now = runtime.effective()
        logger.info(
            "routing on: strategy %s (from the %s), %d tenant tables, %d shops ready",
            now.name, _origin(now), len(catalog.snapshot.tenant_tables), len(catalog.snapshot.ready),
        )
        return runtime

    def pool(self, shop_id: int) -> TenantPool:
        return self.pools.pool(shop_id)

    # --- the effective strategy --------------------------------------------------------
    def effective(self) -> EffectiveStrategy:
        return effective(self.config, self.applied_state)

    def watched_shops(self) -> set[int]:
        """Shops operators watch: the shop-list and canary shops, and per-shop activations."""
        now = self.effective()
        return {*now.shop_ids, *now.canary_shop_ids, *self.catalog.snapshot.activated}

    async def refresh_now(self) -> CatalogSnapshot:
        """Re-read the catalog at once (after this instance changed the routing state)."""
        async with self.tenancy.pool.acquire() as conn:
            return await self.catalog.refresh(conn)

    def _on_catalog(self, snapshot: CatalogSnapshot) -> None:
        if snapshot.routing != self.applied_state:
            self._swap(self.config, snapshot.routing)

    def _swap(self, config: Config, state: RoutingState | None) -> None:
        before = self.effective()
        self.dispatcher.use_router(_router(config, state, self.dispatcher.router))
        self.config, self.applied_state = config, state
        now = self.effective()
        if (before.name, before.percentage, before.shop_ids, before.canary_shop_ids, before.source) != (
            now.name, now.percentage, now.shop_ids, now.canary_shop_ids, now.source,
        ):
            logger.warning(
                "read strategy now %s%s (from the %s)", now.name,
                f" {now.percentage}%" if now.name == "percentage" else "", _origin(now),
            )

    # --- config reload -----------------------------------------------------------------
    def apply_config(self, config: Config) -> None:
        """Swap in a reloaded config: router, pools, fallback, shadow reads (restart keys aside)."""
        state = self.catalog.snapshot.routing
        if state is not None and config.routing.strategy != self.config.routing.strategy:
            logger.warning(
                "config strategy %s noted, but the strategy set through the admin API (%s, by %s) "
                "stays in force until use-config-strategy",
                config.routing.strategy, state.strategy, state.actor,
            )
        self._swap(config, state)
        d = self.dispatcher
        d.tenant_timeout = config.routing.tenant_timeout_ms / 1000
        d.max_lag_ms = config.dual_write.max_lag_ms
        d.log_inconsistencies = config.routing.log_inconsistencies
        d.fallback_enabled = config.routing.enable_fallback
        d.hold_timeout = config.routing.write_hold_timeout_ms / 1000
        if d.federator is not None:
            d.federator.max_shops = config.federation.max_shops_per_query
        if d.keys is not None:
            d.keys.cache_size = config.routing.key_cache_size
            d.keys.timeout = config.routing.key_lookup_timeout_ms / 1000
            d.keys.confirm_limit = config.routing.key_confirm_limit
        self.pools.config = config.pools
        self.pools.ban_ms = config.routing.fallback_ban_ms
        self.unified_pools.config = config.pools
        self.catalog.interval = config.routing.catalog_refresh_ms / 1000
        self.catalog.reference_max_lag_s = config.dual_write.max_lag_ms / 1000
        self._apply_shadow(config)

    def _apply_shadow(self, config: Config) -> None:
        routing = config.routing
        rate = routing.verify_sample_rate if routing.verify_consistency else 0.0
        timeout = routing.tenant_timeout_ms / 1000
        if self.shadow is not None:
            self.shadow.sample_rate = rate
            self.shadow.timeout = timeout
        elif rate > 0:
            self.shadow = ShadowReader(
                tenant_pool=self.pools.pool,
                unified_pool=lambda: self.unified_pools.pool(SHADOW_SHOP),
                sample_rate=rate,
                timeout=timeout,
                on_result=self.dispatcher.shadow_result,
            )
        self.dispatcher.shadow = self.shadow if rate > 0 else None

    # --- helpers for the metrics layer -------------------------------------------------
    def fingerprint(self, unit: Any, facts: Any) -> str:
        """SQL fingerprints of what a unit executes (constants removed: safe for logs)."""
        items = unit_items(unit, facts.statements)
        if not items:
            return "?"
        analyser = self.dispatcher.router.analyser
        return " ".join(analyser.analyse(item.sql).fingerprint or "?" for item in items)

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.close()
        await self.catalog.stop()
        await self.dispatcher.conflicts.stop(self.tenancy.pool)
        try:
            await asyncio.wait_for(forget(self.tenancy.pool, self.catalog.instance_id), 2.0)
        except Exception as exc:  # it stops heartbeating anyway: cutovers stop waiting for it soon
            logger.info("could not remove this instance from proxy_instances: %s", exc)
        await self.pools.close()
        await self.unified_pools.close()
        if self.dispatcher.keys is not None:
            await self.dispatcher.keys.close()
        await self.tenancy.close()


def _origin(now: EffectiveStrategy) -> str:
    return f"admin API, set by {now.set_by}" if now.source == "api" else "config file"


def _router(config: Config, state: RoutingState | None, old: Router | None) -> Router:
    routing = effective_routing(config.routing, state)
    return Router.from_config(
        dataclasses.replace(config, routing=routing), analyser=old.analyser if old is not None else None
    )


async def _key_directory(config: Config, tenancy: TenancyService) -> KeyDirectory:
    """Routing by key: lookups on unified on a small pool of their own (no reset query between
    lookups: they leave no session state); confirmations on a cut-over shop's database connect as
    the shop's own role."""
    routing = config.routing
    pool = await asyncpg.create_pool(**unified_connect_kwargs(config), min_size=0, max_size=4,
                                     reset=_no_reset)
    return KeyDirectory(
        unified=pool.acquire,
        pool=pool,
        tenant_connect=lambda shop: connect_tenant(tenancy.registry, shop),
        tenant_column=config.tenancy.tenant_column,
        cache_size=routing.key_cache_size,
        timeout=routing.key_lookup_timeout_ms / 1000,
        confirm_limit=routing.key_confirm_limit,
    )


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


def _pool_managers(config: Config, tenancy: TenancyService) -> tuple[PoolManager, PoolManager]:
    servers = {s.name or f"{s.host}:{s.port}": s for s in config.tenant_servers}

    async def tenant_target(shop_id: int, refresh: bool) -> ServerTarget:
        registry = tenancy.registry
        creds = await (registry.refresh(shop_id) if refresh else registry.get(shop_id))
        server = servers.get(creds.server)
        return _target(creds.host, creds.port, creds.database, creds.user, creds.password, server, config)

    async def unified_target(shop_id: int, refresh: bool) -> ServerTarget:
        u = config.unified
        return ServerTarget(
            u.host, u.port, u.database, u.admin_user, u.admin_password or "",
            sslmode=u.sslmode, sslrootcert=u.sslrootcert, connect_timeout_ms=u.connect_timeout_ms,
        )

    pools = PoolManager(config.pools, tenant_target, ban_ms=config.routing.fallback_ban_ms)
    return pools, PoolManager(config.pools, unified_target)


def _target(
    host: str, port: int, database: str, user: str, password: str,
    server: TenantServerSection | None, config: Config,
) -> ServerTarget:
    return ServerTarget(
        host, port, database, user, password,
        sslmode=server.sslmode if server else "prefer",
        sslrootcert=server.sslrootcert if server else None,
        connect_timeout_ms=config.pools.connection_timeout_ms,
    )
