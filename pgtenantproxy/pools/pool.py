"""Lazy per-shop pools of tenant connections, under one global cap.

* A shop's pool opens connections on demand, up to ``max_pool_size``; idle
  ones are reused newest first and closed after ``idle_timeout_ms``.
* A connection idle for more than :data:`HEALTH_CHECK_AFTER` seconds is
  pinged before it is lent.
* Connecting retries with a short exponential backoff within
  ``connection_timeout_ms``; a login refused for a bad password refreshes the
  credentials once (they may just have been rotated).
* Across all shops at most ``max_total_connections`` exist; at the cap an idle
  connection of the least recently used other pool is evicted, else the
  borrower waits.
* Waiters are served first come, first served, and give up after
  ``connection_timeout_ms`` with an error the router treats as a tenant failure.
* A shop whose tenant keeps failing is banned for ``ban_ms``: the router
  reads it from unified meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pgtenantproxy.config import PoolsSection
from pgtenantproxy.pools.connection import ServerConnection, ServerRefusedLogin, ServerTarget
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProxyError

logger = logging.getLogger(__name__)

HEALTH_CHECK_AFTER = 5.0
CONNECT_BACKOFF = (0.05, 0.1, 0.2, 0.4)
FAILURES_BEFORE_BAN = 3

TargetProvider = Callable[[int, bool], Awaitable[ServerTarget]]  # (shop_id, refresh)


class PoolTimeout(ProxyError):
    def __init__(self, shop_id: int) -> None:
        super().__init__(
            errors.CONNECTION_FAILURE,
            f"pgtenantproxy: timed out waiting for a connection to the database of shop {shop_id}",
            severity="ERROR",
        )


@dataclass
class PoolStats:
    opened: int = 0
    failed: int = 0
    waits: int = 0
    wait_seconds: float = 0.0


class TenantPool:
    def __init__(self, shop_id: int, manager: PoolManager) -> None:
        self.shop_id = shop_id
        self.manager = manager
        self.idle: deque[ServerConnection] = deque()
        self.in_use = 0
        self.opening = 0
        self.waiters: deque[asyncio.Future[ServerConnection | None]] = deque()
        self.stats = PoolStats()
        self.last_used = time.monotonic()
        self.consecutive_failures = 0
        self.banned_until = 0.0

    @property
    def size(self) -> int:
        return len(self.idle) + self.in_use + self.opening

    @property
    def banned(self) -> bool:
        return time.monotonic() < self.banned_until

    async def acquire(self) -> ServerConnection:
        cfg = self.manager.config
        deadline = time.monotonic() + cfg.connection_timeout_ms / 1000
        self.last_used = time.monotonic()
        while True:
            conn = await self._take_idle()
            if conn is not None:
                return conn
            if self.size < cfg.max_pool_size and self.manager.reserve(self):
                return await self._open(deadline)
            conn = await self._wait(deadline)
            if conn is not None:
                return conn

    def try_acquire_now(self) -> ServerConnection | None:
        """A warm idle connection (used within :data:`HEALTH_CHECK_AFTER`) at once, else None."""
        now = time.monotonic()
        idle = self.idle
        while idle:
            conn = idle[-1]
            if not conn.usable:
                idle.pop()
                self._discard(conn)
                continue
            if now - conn.last_used > HEALTH_CHECK_AFTER or self.waiters:
                return None
            idle.pop()
            self.in_use += 1
            self.last_used = now
            return conn
        return None

    async def _take_idle(self) -> ServerConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.usable:
                self._discard(conn)
                continue
            self.in_use += 1
            if time.monotonic() - conn.last_used > HEALTH_CHECK_AFTER:
                try:
                    await conn.ping()
                except Exception:
                    self.in_use -= 1
                    self._discard(conn)
                    continue
            return conn
        return None

    async def _open(self, deadline: float) -> ServerConnection:
        self.opening += 1
        try:
            conn = await self._connect_with_retry(deadline)
        except BaseException:
            self.opening -= 1
            self.manager.unreserve()
            self._wake_one(None)
            raise
        self.opening -= 1
        self.in_use += 1
        self.stats.opened += 1
        self.consecutive_failures = 0
        return conn

    async def _connect_with_retry(self, deadline: float) -> ServerConnection:
        refresh = False
        for attempt, pause in enumerate((*CONNECT_BACKOFF, None)):
            remaining = deadline - time.monotonic()
            try:
                target = await self.manager.target(self.shop_id, refresh)
                async with asyncio.timeout(max(remaining, 0.001)):
                    return await ServerConnection.open(target)
            except ServerRefusedLogin as exc:
                self._note_failure(exc)
                if exc.sqlstate != "28P01" or refresh:
                    raise
                refresh = True
            except (ProxyError, OSError, TimeoutError) as exc:
                self._note_failure(exc)
                if pause is None or time.monotonic() + pause >= deadline:
                    raise self._as_error(exc) from None
                logger.debug("shop %s: connect attempt %d failed: %s", self.shop_id, attempt + 1, exc)
                await asyncio.sleep(pause)
        raise PoolTimeout(self.shop_id)

    def _as_error(self, exc: BaseException) -> ProxyError:
        if isinstance(exc, ProxyError):
            return exc
        return PoolTimeout(self.shop_id)

    def _note_failure(self, exc: BaseException) -> None:
        self.stats.failed += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= FAILURES_BEFORE_BAN:
            self.banned_until = time.monotonic() + self.manager.ban_ms / 1000
            logger.warning(
                "shop %s: tenant database failing (%s); reads go to unified for %.0f s",
                self.shop_id, exc, self.manager.ban_ms / 1000,
            )

    async def _wait(self, deadline: float) -> ServerConnection | None:
        fut: asyncio.Future[ServerConnection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        self.manager.waiting.append(self)
        started = time.monotonic()
        self.stats.waits += 1
        try:
            async with asyncio.timeout(max(deadline - started, 0.001)):
                conn = await fut
        except TimeoutError:
            raise PoolTimeout(self.shop_id) from None
        finally:
            self.stats.wait_seconds += time.monotonic() - started
            if fut in self.waiters:
                self.waiters.remove(fut)
            if self in self.manager.waiting:
                self.manager.waiting.remove(self)
        if conn is not None:
            self.in_use += 1
        return conn

    def release(self, conn: ServerConnection, *, reusable: bool = True) -> None:
        """Give a connection back; ``reusable=False`` closes it (state unknown)."""
        self.in_use -= 1
        conn.last_used = time.monotonic()
        if not reusable or not conn.usable:
            self._discard(conn)
            return
        if self._wake_one(conn):
            return
        self.idle.append(conn)

    def mark_failed(self, exc: BaseException) -> None:
        """A lent connection failed mid-batch: count it towards the ban."""
        self._note_failure(exc)

    def _wake_one(self, conn: ServerConnection | None) -> bool:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _discard(self, conn: ServerConnection) -> None:
        conn.close()
        self.manager.unreserve()
        self._wake_one(None)

    def close_idle(self, older_than: float | None = None) -> int:
        """Close idle connections (all, or those idle longer than ``older_than`` s)."""
        now = time.monotonic()
        keep: deque[ServerConnection] = deque()
        closed = 0
        for conn in self.idle:
            if older_than is None or now - conn.last_used > older_than:
                conn.close()
                self.manager.unreserve()
                closed += 1
            else:
                keep.append(conn)
        self.idle = keep
        return closed


class PoolManager:
    """All tenant pools, the global connection cap, and idle maintenance."""

    def __init__(self, config: PoolsSection, target: TargetProvider, *, ban_ms: int = 30000) -> None:
        self.config = config
        self.target = target
        self.ban_ms = ban_ms
        self.pools: dict[int, TenantPool] = {}
        self.total = 0
        self.waiting: deque[TenantPool] = deque()
        self._maintenance: asyncio.Task[None] | None = None

    def pool(self, shop_id: int) -> TenantPool:
        pool = self.pools.get(shop_id)
        if pool is None:
            pool = self.pools[shop_id] = TenantPool(shop_id, self)
        return pool

    def reserve(self, requester: TenantPool) -> bool:
        """Count a new connection against the global cap, evicting an idle one if needed."""
        if self.total >= self.config.max_total_connections and not self._evict_for(requester):
            return False
        self.total += 1
        return True

    def unreserve(self) -> None:
        self.total -= 1
        while self.waiting:
            pool = self.waiting.popleft()
            if pool._wake_one(None):
                return

    def _evict_for(self, requester: TenantPool) -> bool:
        candidates = [p for p in self.pools.values() if p is not requester and p.idle]
        if not candidates:
            return False
        victim = min(candidates, key=lambda p: p.last_used)
        conn = victim.idle.popleft()
        conn.close()
        self.total -= 1
        return True

    def start(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        idle_s = self.config.idle_timeout_ms / 1000
        while True:
            await asyncio.sleep(min(1.0, idle_s / 2))
            for shop_id, pool in list(self.pools.items()):
                pool.close_idle(older_than=idle_s)
                if pool.size == 0 and not pool.waiters and time.monotonic() - pool.last_used > idle_s:
                    del self.pools[shop_id]

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        for pool in self.pools.values():
            pool.close_idle()

    def stats(self) -> dict[int, dict[str, float]]:
        return {
            shop: {
                "size": p.size,
                "idle": len(p.idle),
                "in_use": p.in_use,
                "waiting": len(p.waiters),
                "opened": p.stats.opened,
                "failed": p.stats.failed,
                "wait_seconds": p.stats.wait_seconds,
            }
            for shop, p in self.pools.items()
        }
