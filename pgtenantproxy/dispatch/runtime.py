"""Everything routing needs at run time, built from one config snapshot.

Routing is on when the config lists ``[[tenant_servers]]``: the proxy then
opens the control plane (tenancy service on unified; the encryption key is
required to read tenant credentials), starts the catalog refresher and the
tenant pools, and gives the sessions a :class:`Dispatcher`. Without tenant
servers the proxy is a plain session relay to unified.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pgtenantproxy.config import Config, TenantServerSection
from pgtenantproxy.dispatch.catalog import TenantCatalog
from pgtenantproxy.dispatch.dispatcher import Dispatcher, MirrorView
from pgtenantproxy.pools.connection import ServerTarget
from pgtenantproxy.pools.pool import PoolManager, TenantPool
from pgtenantproxy.routing import Router
from pgtenantproxy.server.shadow import ShadowReader
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

    @classmethod
    async def start(cls, config: Config, *, mirror: MirrorView | None = None) -> RoutingRuntime:
        tenancy = await TenancyService.open(config, need_key=True, pool_size=4)
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
        unified_pools = PoolManager(config.pools, unified_target)
        catalog = TenantCatalog(config.tenancy, interval=config.routing.catalog_refresh_ms / 1000)
        async with tenancy.pool.acquire() as conn:
            await catalog.refresh(conn)
        catalog.start(tenancy.pool)
        pools.start()
        unified_pools.start()
        timeout = config.routing.tenant_timeout_ms / 1000
        dispatcher = Dispatcher(
            Router.from_config(config),
            catalog,
            pools,
            tenant_timeout=timeout,
            mirror=mirror,
            max_lag_ms=config.dual_write.max_lag_ms,
            log_inconsistencies=config.routing.log_inconsistencies,
            fallback_enabled=config.routing.enable_fallback,
        )
        shadow = None
        if config.routing.verify_consistency:
            shadow = ShadowReader(
                tenant_pool=pools.pool,
                unified_pool=lambda: unified_pools.pool(SHADOW_SHOP),
                sample_rate=config.routing.verify_sample_rate,
                timeout=timeout,
                on_result=dispatcher.shadow_result,
            )
            dispatcher.shadow = shadow
        logger.info(
            "routing on: strategy %s, %d tenant tables, %d shops ready",
            config.routing.strategy, len(catalog.snapshot.tenant_tables), len(catalog.snapshot.ready),
        )
        return cls(config, tenancy, catalog, pools, unified_pools, dispatcher, shadow)

    def pool(self, shop_id: int) -> TenantPool:
        return self.pools.pool(shop_id)

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.close()
        await self.catalog.stop()
        await self.pools.close()
        await self.unified_pools.close()
        await self.tenancy.close()


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
