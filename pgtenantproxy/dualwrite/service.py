"""DualWriteService: write mirroring in one process (the proxy, ``pgtenantproxy mirror``, the CLI).

``svc = await DualWriteService.open(config)`` opens the control-plane pool
(through :class:`~pgtenantproxy.tenancy.service.TenancyService`), creates or
upgrades the control schema and the mirroring tables, and, when ``[dual_write]
enabled`` (or ``ENABLE_DUAL_WRITE=true``), installs capture on the tenant
tables. ``enabled = false`` removes nothing: capture is removed only by
``pgtenantproxy dual-write disable``, so restarting one proxy instance with an
older config cannot silently stop the capture the others rely on.

``await svc.start()`` starts the status poller (``svc.status``, the router's
API) and, with ``run_worker``, the mirror worker; ``await svc.close()`` stops
both (in-flight batches finish) and closes the pool.

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

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.capture import CapturedTable, disable_capture, enable_capture
from pgtenantproxy.dualwrite.schema import ensure_dualwrite_schema
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.dualwrite.status import MirrorStatus
from pgtenantproxy.dualwrite.targets import TenantTargets
from pgtenantproxy.dualwrite.worker import MirrorWorker
from pgtenantproxy.tenancy.control_schema import audit
from pgtenantproxy.tenancy.service import TenancyService
from pgtenantproxy.tenancy.sql import QualifiedName

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
        if run_worker:
            self.targets = TenantTargets(
                tenancy.registry, tenancy.servers, max_open=max(32, 4 * section.concurrency)
            )
            self.worker = MirrorWorker(tenancy.pool, self.targets, section, self.stats, eligible=eligible)
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
        tenancy = await TenancyService.open(
            config, need_key=worker, pool_size=config.dual_write.concurrency + 4
        )
        try:
            async with tenancy.pool.acquire() as conn:
                await ensure_dualwrite_schema(conn)
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
        try:
            await asyncio.wait_for(self.status.ready.wait(), ready_timeout_s)
        except TimeoutError:
            logger.warning("mirror status: no poll succeeded yet; reads stay on unified meanwhile")

    async def stop(self) -> None:
        self.status.stop()
        if self.worker is not None:
            self.worker.stop()
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
