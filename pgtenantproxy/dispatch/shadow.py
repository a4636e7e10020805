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

from pgtenantproxy.net.endpoint import ConnectionClosed
from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.digest import ResultDigest, Summary
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.session.statements import PreparedStatements
from pgtenantproxy.session.tenant_unit import Outcome, TenantUnit

logger = logging.getLogger(__name__)


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
        """Run the unit on a connection of ``pool`` (the same request a routed unit makes) and digest it."""
        try:
            conn = await pool.acquire()
        except (ProxyError, OSError, TimeoutError) as exc:
            logger.info("shadow read did not complete: connect: %s", exc)
            return None
        work = TenantUnit(request.unit, request.statements, request.settings)
        digest = ResultDigest(ordered=request.ordered)
        reusable = False
        try:
            async with asyncio.timeout(self.timeout):
                conn.endpoint.write(work.request(conn))
                while not work.done:
                    digest.feed(work.feed(await conn.endpoint.receive()))
            reusable = work.status == c.TX_IDLE
        except (ProxyError, OSError, ConnectionClosed, TimeoutError) as exc:
            logger.info("shadow read did not complete: %s", exc)
            return None
        finally:
            pool.release(conn, reusable=reusable)
        if work.outcome() is not Outcome.DONE:
            logger.info("shadow read did not complete: %s", work.prep_failed or "tenant error")
            return None
        digest.feed(work.release())
        return digest.summary() if digest.done else None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
