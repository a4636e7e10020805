"""Shadow reads: a sample of reads run on both sides, off the client's path.

For a sampled read of shop N, the same unit (as the client sent it, with its
prepared statements and session settings) runs on the shop's tenant database
and on the unified database (as the control-plane role), in a background task;
the two answers are reduced to :class:`ResultDigest` summaries (row count and
an order-insensitive digest, order-sensitive when the query has ORDER BY) and
compared. The client never waits for it. At most ``max_inflight`` shadow reads
run at once; when that many are busy a sample is skipped (sampling is
best-effort by nature; reads themselves are never affected).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.digest import ResultDigest, Summary
from pgtenantproxy.server.endpoint import FlowPeer
from pgtenantproxy.server.statements import PreparedStatements
from pgtenantproxy.server.tenant_batch import Outcome, TenantBatch

logger = logging.getLogger(__name__)


class Collector:
    """An answer sink that only digests what it receives."""

    def __init__(self, *, ordered: bool) -> None:
        self.digest = ResultDigest(ordered=ordered)
        self.peer: FlowPeer | None = None

    def write(self, data: bytes) -> None:
        self.digest.feed(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@dataclass(frozen=True)
class ShadowRequest:
    """One sampled read to run on both sides, with what identifies it in logs."""

    unit: Unit
    statements: PreparedStatements
    settings: dict[str, str]
    shop_id: int
    ordered: bool
    tables: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class ShadowResult:
    shop_id: int
    tables: tuple[str, ...]
    fingerprint: str
    tenant: Summary | None
    unified: Summary | None

    @property
    def compared(self) -> bool:
        return self.tenant is not None and self.unified is not None

    @property
    def matches(self) -> bool:
        return self.compared and self.tenant == self.unified


class ShadowReader:
    def __init__(
        self,
        *,
        tenant_pool: Callable[[int], TenantPool],
        unified_pool: Callable[[], TenantPool],
        sample_rate: float,
        timeout: float,
        on_result: Callable[[ShadowResult], None],
        max_inflight: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self._tenant_pool = tenant_pool
        self._unified_pool = unified_pool
        self.sample_rate = sample_rate
        self.timeout = timeout
        self._on_result = on_result
        self._max_inflight = max_inflight
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self.skipped = 0

    def sample(self) -> bool:
        return self.sample_rate > 0 and self._rng.random() < self.sample_rate

    def submit(
        self,
        unit: Unit,
        statements: PreparedStatements,
        settings: dict[str, str],
        *,
        shop_id: int,
        ordered: bool,
        tables: tuple[str, ...],
        fingerprint: str,
    ) -> None:
        if len(self._tasks) >= self._max_inflight:
            self.skipped += 1
            return
        request = ShadowRequest(
            unit, statements.copy(), dict(settings), shop_id, ordered, tables, fingerprint
        )
        task = asyncio.get_running_loop().create_task(self._compare(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(self, request: ShadowRequest) -> None:
        tenant, unified = await asyncio.gather(
            self._run(self._tenant_pool(request.shop_id), request),
            self._run(self._unified_pool(), request),
        )
        result = ShadowResult(request.shop_id, request.tables, request.fingerprint, tenant, unified)
        try:
            self._on_result(result)
        except Exception:
            logger.exception("shadow-read result handler failed")

    async def _run(self, pool: TenantPool, request: ShadowRequest) -> Summary | None:
        sink = Collector(ordered=request.ordered)
        batch = TenantBatch(
            sink, pool, request.unit, request.statements, request.settings, timeout=self.timeout
        )
        try:
            outcome = await batch.run()
        except Exception:
            logger.debug("shadow read failed", exc_info=True)
            return None
        if outcome is not Outcome.DONE or not sink.digest.done:
            logger.info("shadow read did not complete: %s", batch.error or outcome.value)
            return None
        return sink.digest.summary()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
