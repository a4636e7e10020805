"""Connections to the shops' tenant databases, as each shop's own role, kept open between batches.

Credentials come from the tenancy registry (:func:`~pgtenantproxy.tenancy.registry.connect_tenant`,
which reloads them when a rotated password is refused); TLS follows the
shop's ``[[tenant_servers]]`` entry. The mirror writes as the shop role, which
can touch nothing but its own database. At most ``max_open`` connections stay
open; the least recently used idle one is closed first. A connection that
failed is discarded and opened afresh on the next batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from pgtenantproxy.dualwrite.errors import TargetUnavailable, describe
from pgtenantproxy.tenancy.errors import PlacementError
from pgtenantproxy.tenancy.registry import ConnectionRegistry, connect_tenant
from pgtenantproxy.tenancy.servers import ServerDirectory, asyncpg_ssl

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgtenantproxy-mirror"


class TenantTargets:
    def __init__(
        self,
        registry: ConnectionRegistry,
        servers: ServerDirectory,
        *,
        max_open: int = 32,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.registry = registry
        self.servers = servers
        self.max_open = max_open
        self.connect_timeout_s = connect_timeout_s
        self._open: OrderedDict[int, asyncpg.Connection] = OrderedDict()
        self._busy: set[int] = set()

    @asynccontextmanager
    async def lease(self, shop_id: int) -> AsyncIterator[asyncpg.Connection]:
        """The shop's connection for one batch; discarded if the batch found the target unavailable."""
        conn = await self._get(shop_id)
        self._busy.add(shop_id)
        try:
            yield conn
        except TargetUnavailable:
            await self.discard(shop_id)
            raise
        finally:
            self._busy.discard(shop_id)
        if conn.is_closed():
            self._open.pop(shop_id, None)

    async def _get(self, shop_id: int) -> asyncpg.Connection:
        conn = self._open.get(shop_id)
        if conn is not None and not conn.is_closed():
            self._open.move_to_end(shop_id)
            return conn
        self._open.pop(shop_id, None)
        conn = await self._connect(shop_id)
        self._open[shop_id] = conn
        await self._evict()
        return conn

    async def _connect(self, shop_id: int) -> asyncpg.Connection:
        try:
            creds = await self.registry.get(shop_id)
            ssl = asyncpg_ssl(self.servers.get(creds.server).section)
            return await asyncio.wait_for(
                connect_tenant(
                    self.registry, shop_id, timeout=self.connect_timeout_s, ssl=ssl,
                    server_settings={"application_name": APPLICATION_NAME},
                ),
                self.connect_timeout_s,
            )
        except (TimeoutError, PlacementError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise TargetUnavailable(shop_id, exc) from exc

    async def _evict(self) -> None:
        while len(self._open) > self.max_open:
            victim = next((s for s in self._open if s not in self._busy), None)
            if victim is None:
                return
            await _close(self._open.pop(victim))

    async def discard(self, shop_id: int) -> None:
        conn = self._open.pop(shop_id, None)
        if conn is not None:
            await _close(conn)

    async def close(self) -> None:
        while self._open:
            _, conn = self._open.popitem()
            await _close(conn)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception as exc:
        logger.debug("closing a tenant connection: %s", describe(exc))
        conn.terminate()
