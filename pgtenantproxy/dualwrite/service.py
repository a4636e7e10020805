"""DualWriteService: write mirroring in one process (the proxy, ``pgtenantproxy mirror``, the CLI).

``svc = await DualWriteService.open(config)`` opens the control-plane pool
(through :class:`~pgtenantproxy.tenancy.service.TenancyService`), creates or
upgrades the control schema and the mirroring tables, and, when ``[dual_write]
enabled`` (or ``ENABLE_DUAL_WRITE=true``), installs capture on the tenant
tables. ``enabled = false`` removes nothing: capture is removed only by
``pgtenantproxy dual-write disable``, so restarting one proxy instance with an
older config cannot silently stop the capture the others rely on.

``await svc.start()`` starts the status poller (``svc.status``, the router's
API) and, with ``run_worker``, the mirror worker and the reverse mirror worker
(``svc.reverse``: tenant databases of ``tenant_primary`` shops into unified,
:mod:`.reverse`, with its own stats ``svc.reverse_stats``); ``await
svc.close()`` stops them (in-flight batches finish) and closes the pool.
Opening also brings the capture functions of an older install up to date
(:func:`~.capture.upgrade_functions`: the write fence), enabled or not.
The reverse-mirroring calls of a cutover and a rollback
(:meth:`install_reverse`, :meth:`remove_reverse`, :meth:`reverse_pending`,
:meth:`wait_reverse_drained`) need the encryption key (the registry).

How the proxy wires it (``app.run_proxy``)::

    mirror = await DualWriteService.open(config)   # run_worker from [dual_write] run_worker
    await mirror.start()
    ...  # router: mirror.status.readable(shop_id, marker) and friends
    await mirror.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite import reverse as rev
from pgtenantproxy.dualwrite.capture import (
    CapturedTable,
    disable_capture,
    enable_capture,
    installed_tables,
    upgrade_functions,
)
from pgtenantproxy.dualwrite.schema import ensure_dualwrite_schema
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.dualwrite.status import MirrorStatus
from pgtenantproxy.dualwrite.targets import TenantTargets
from pgtenantproxy.dualwrite.worker import MirrorWorker
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)


class DualWriteService:
    def __init__(
        self,
        config: Config,
        tenancy: TenancyService,
        *,
        run_worker: bool,
        eligible: Callable[[int], bool] | None = None,
    ) -> None:
        section = config.dual_write
        self.config = config
        self.tenancy = tenancy
        self.stats = MirrorStats()
        self.status = MirrorStatus(
            tenancy.pool, interval_s=section.status_interval_ms / 1000, max_lag_ms=section.max_lag_ms,
            stats=self.stats,
        )
        self.targets: TenantTargets | None = None
        self.worker: MirrorWorker | None = None
        self.reverse_stats = MirrorStats()
        self.reverse: rev.ReverseMirrorWorker | None = None
        if run_worker:
            self.targets = TenantTargets(
                tenancy.registry, tenancy.servers, max_open=max(32, 4 * section.concurrency)
            )
            self.worker = MirrorWorker(tenancy.pool, self.targets, section, self.stats, eligible=eligible)
            self.reverse = rev.ReverseMirrorWorker(
                tenancy.pool, tenancy.registry, tenancy.servers, section, self.reverse_stats
            )
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        run_worker: bool | None = None,
        eligible: Callable[[int], bool] | None = None,
    ) -> DualWriteService:
        worker = config.dual_write.run_worker if run_worker is None else run_worker
        # The forward worker holds one connection per shop it drains, the reverse one per batch.
        pool_size = config.dual_write.concurrency * (2 if worker else 1) + 4
        tenancy = await TenancyService.open(config, need_key=worker, pool_size=pool_size)
        try:
            async with tenancy.pool.acquire() as conn:
                await ensure_dualwrite_schema(conn)
                await upgrade_functions(conn)
            service = cls(config, tenancy, run_worker=worker, eligible=eligible)
            if config.dual_write.enabled:
                await service.enable()
        except BaseException:
            await tenancy.close()
            raise
        return service

    # --- capture ------------------------------------------------------------
    async def tenant_tables(self) -> list[QualifiedName]:
        return await self.tenancy.tenant_tables()

    async def enable(self) -> list[CapturedTable]:
        tables = await self.tenant_tables()
        async with self.tenancy.pool.acquire() as conn:
            captured = await enable_capture(conn, tables, self.config.tenancy.tenant_column)
            await audit(conn, shop_id=None, action="dual-write enable", status="done",
                        detail=f"capture on {len(captured)} tables")
        return captured

    async def disable(self) -> list[QualifiedName]:
        async with self.tenancy.pool.acquire() as conn:
            removed = await disable_capture(conn)
            await audit(conn, shop_id=None, action="dual-write disable", status="done",
                        detail=f"capture removed from {len(removed)} tables; the outbox drains")
        return removed

    # --- running ------------------------------------------------------------
    async def start(self, *, ready_timeout_s: float = 10.0) -> None:
        """Start the status poller (and the worker); waits for the first poll, up to the timeout."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.status.run(), name="mirror-status"))
        if self.worker is not None:
            self._tasks.append(loop.create_task(self.worker.run(), name="mirror-worker"))
        if self.reverse is not None:
            self._tasks.append(loop.create_task(self.reverse.run(), name="reverse-mirror-worker"))
        try:
            await asyncio.wait_for(self.status.ready.wait(), ready_timeout_s)
        except TimeoutError:
            logger.warning("mirror status: no poll succeeded yet; reads stay on unified meanwhile")

    async def stop(self) -> None:
        self.status.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.reverse is not None:
            self.reverse.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.targets is not None:
            await self.targets.close()

    async def close(self) -> None:
        await self.stop()
        await self.tenancy.close()

    async def __aenter__(self) -> DualWriteService:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def pending(self) -> int:
        """Entries in the outbox right now (every shop)."""
        return int(await self.tenancy.pool.fetchval("SELECT count(*) FROM pgtenantproxy.outbox"))

    async def wait_drained(self, *, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Wait until the outbox is empty; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while await self.pending():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll_s)
        return True

    # --- reverse mirroring (a cutover, a rollback) -----------------------------------
    async def _tenant_admin(self, shop_id: int) -> asyncpg.Connection:
        return await rev.connect_tenant_admin(self.tenancy.registry, self.tenancy.servers, shop_id)

    async def install_reverse(self, shop_id: int) -> list[CapturedTable]:
        """Reverse capture on the shop's tenant database, on the tables unified captures (idempotent)."""
        async with self.tenancy.pool.acquire() as conn:
            tables = await installed_tables(conn)
        admin = await self._tenant_admin(shop_id)
        try:
            captured = await rev.install_reverse_capture(admin, tables)
        finally:
            await admin.close()
        await audit(self.tenancy.pool, shop_id=shop_id, action="reverse capture install", status="done",
                    detail=f"capture on {len(captured)} tables of the tenant database")
        return captured

    async def remove_reverse(self, shop_id: int) -> list[QualifiedName]:
        """Remove reverse capture from the shop's tenant database (queued entries stay)."""
        admin = await self._tenant_admin(shop_id)
        try:
            removed = await rev.remove_reverse_capture(admin)
        finally:
            await admin.close()
        await audit(self.tenancy.pool, shop_id=shop_id, action="reverse capture remove", status="done",
                    detail=f"capture removed from {len(removed)} tables of the tenant database")
        return removed

    async def reverse_pending(self, shop_id: int) -> rev.ReversePending:
        admin = await self._tenant_admin(shop_id)
        try:
            return await rev.reverse_pending(admin, shop_id)
        finally:
            await admin.close()

    async def wait_reverse_drained(self, shop_id: int, *, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until the shop's reverse queue is empty (no dead letters either); False on timeout."""
        admin = await self._tenant_admin(shop_id)
        try:
            return await rev.wait_reverse_drained(admin, shop_id, timeout_s=timeout_s, poll_s=poll_s)
        finally:
            await admin.close()
