"""Backfill: copy shops' rows from unified into their tenant databases, several shops at a time.

:func:`backfill_shops` is the entry point of the CLI (``pgtenantproxy
backfill``) and the admin API: it runs :func:`backfill_shop`
(:mod:`.backfill_shop` has the steps and the invariant) for each shop, at most
``jobs`` at once, all sharing one throttle (rows/s over the whole run). One
shop failing does not stop the others: every shop gets its
:class:`~.backfill_report.ShopResult`. With ``wait``, a shop that was copied
then waits for its mirror to drain what was written meanwhile
(:func:`.drain.wait_drained`, outside the ``jobs`` slots) and is moved on to
``mirroring`` (the proxy's phase keeper does the same by itself; whoever comes
second finds it done).

A shop that was copied also gets its reference copies filled
(:func:`.reference.sync_shop_references`; a failure there is logged and noted, it does not fail the
backfill: the phase keeper keeps trying).

Audit log (``migration_log``, action ``backfill``): ``started``, ``done`` (rows,
bytes, seconds) or ``failed`` (reason) per shop, besides the phase moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phase, read_phases, transition
from pgtenantproxy.migration import backfill_locks as locks
from pgtenantproxy.migration.backfill_report import (
    BACKFILLED,
    DONE_ALREADY,
    FAILED,
    MIRRORING,
    REFUSED,
    BackfillReport,
    ShopResult,
)
from pgtenantproxy.migration.backfill_shop import (
    ACTION,
    BackfillContext,
    captured_tables,
    connect_unified,
    copy_shop,
    elapsed,
    enter_backfilling,
    finish,
)
from pgtenantproxy.migration.drain import wait_drained
from pgtenantproxy.migration.progress import ESTIMATE, SHOP_DONE, ProgressEvent, ProgressFeed, Subscriber
from pgtenantproxy.migration.reference import sync_shop_references
from pgtenantproxy.migration.throttle import TokenBucket
from pgtenantproxy.sqltext import ident
from pgtenantproxy.tenancy.errors import describe
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)


async def backfill_shops(
    tenancy: TenancyService,
    shops: Sequence[int] | None,
    *,
    config: Config | None = None,
    jobs: int | None = None,
    throttle: int | None = None,
    progress: Subscriber | None = None,
    wait: bool = False,
    actor: str | None = None,
) -> BackfillReport:
    """Backfill ``shops`` (None: every shop waiting for one, see :func:`backfill_candidates`)."""
    config = config or tenancy.config
    started = time.monotonic()
    selected = list(dict.fromkeys(shops)) if shops is not None else await backfill_candidates(tenancy.pool)
    rate = config.migration.throttle_rows_per_s if throttle is None else throttle
    ctx = BackfillContext(tenancy, config, TokenBucket(rate), ProgressFeed(progress), actor)
    if progress is not None and selected:
        await _estimate(ctx, selected)
    slots = asyncio.Semaphore(jobs or config.migration.jobs)

    async def one(shop_id: int) -> ShopResult:
        async with slots:
            result = await backfill_shop(ctx, shop_id)
        ctx.feed.emit(ProgressEvent(SHOP_DONE, shop_id, rows=result.rows, status=result.status,
                                    detail=result.detail))
        if wait and result.status == BACKFILLED:
            await settle(ctx, result)
        return result

    results = await asyncio.gather(*(one(s) for s in selected))
    return BackfillReport(list(results), elapsed(started), rate, ctx.throttle.waited_s)


async def backfill_candidates(db: asyncpg.Pool | asyncpg.Connection) -> list[int]:
    """Shops in ``provisioned`` or ``backfilling``, or ``failed`` while backfilling (``--all``)."""
    return [
        shop for shop, record in (await read_phases(db)).items()
        if record.phase in (ph.PROVISIONED, ph.BACKFILLING)
        or (record.phase == ph.FAILED and record.resume_phase == ph.BACKFILLING)
    ]


async def backfill_shop(ctx: BackfillContext, shop_id: int) -> ShopResult:
    """One shop, start to ``backfilled`` (or refused / failed, with the reason)."""
    started = time.monotonic()
    try:
        conn = await connect_unified(ctx.config)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return ShopResult(shop_id, FAILED, detail=f"cannot connect to unified: {describe(exc)}")
    try:  # closing the connection releases both advisory locks, whatever happened
        return await _backfill_locked(ctx, conn, shop_id, started)
    finally:
        await conn.close()


async def _backfill_locked(
    ctx: BackfillContext, conn: asyncpg.Connection, shop_id: int, started: float
) -> ShopResult:
    try:
        await locks.claim_backfill(conn, shop_id)
        tables = await captured_tables(ctx.tenancy)
        record = await enter_backfilling(ctx, shop_id)
    except MigrationError as exc:
        return ShopResult(shop_id, REFUSED, seconds=elapsed(started), detail=str(exc))
    except Exception as exc:
        return ShopResult(shop_id, FAILED, seconds=elapsed(started), detail=describe(exc))
    if record is None:
        phase = (await read_phase(ctx.pool, shop_id)).phase
        return ShopResult(shop_id, DONE_ALREADY, detail=f"already backfilled (phase {phase}): nothing to do")
    await audit(ctx.pool, shop_id=shop_id, action=ACTION, step="copy", status="started",
                detail=f"{len(tables)} tables", actor=ctx.actor)
    try:
        copied = await copy_shop(ctx, conn, shop_id, tables)
    except Exception as exc:
        reason = f"backfill failed: {exc if isinstance(exc, MigrationError) else describe(exc)}"
        logger.warning("shop %s: %s", shop_id, reason)
        await _fail(ctx, shop_id, record.version, reason)
        return ShopResult(shop_id, FAILED, seconds=elapsed(started), detail=reason)
    seconds = elapsed(started)
    try:
        await finish(ctx, shop_id, record.version, ph.BACKFILLED, None)
    except MigrationError as exc:  # someone moved the shop meanwhile (an operator's force)
        return ShopResult(shop_id, FAILED, copied.rows, copied.bytes, copied.tables, seconds, str(exc))
    detail = f"{copied.rows} rows, {copied.bytes} bytes, {copied.tables} tables in {seconds:.1f}s"
    await audit(ctx.pool, shop_id=shop_id, action=ACTION, step="copy", status="done", detail=detail,
                actor=ctx.actor)
    logger.info("shop %s backfilled: %s", shop_id, detail)
    return ShopResult(shop_id, BACKFILLED, copied.rows, copied.bytes, copied.tables, seconds,
                      await _fill_references(ctx, shop_id))


async def _fill_references(ctx: BackfillContext, shop_id: int) -> str | None:
    """The shop's reference copies filled now; a note when that failed (None when all went well)."""
    if not ctx.config.tenancy.reference_tables:
        return None
    try:
        errors = (await sync_shop_references(ctx.tenancy, shop_id, config=ctx.config)).errors()
    except Exception as exc:
        errors = [describe(exc)]
    for error in errors:
        logger.warning("shop %s: reference copies not filled: %s", shop_id, error)
    return f"reference copies not filled: {errors[0]}" if errors else None


async def _fail(ctx: BackfillContext, shop_id: int, version: int, reason: str) -> None:
    try:
        await audit(ctx.pool, shop_id=shop_id, action=ACTION, step="copy", status="failed", detail=reason,
                    actor=ctx.actor)
        await finish(ctx, shop_id, version, ph.FAILED, reason)
    except Exception as exc:  # unified gone too: the shop stays in backfilling, a re-run resumes
        logger.warning("shop %s: could not record the failure: %s", shop_id, describe(exc))


async def settle(ctx: BackfillContext, result: ShopResult) -> None:
    """Wait for the shop's mirror to drain, then move it to ``mirroring`` (if the keeper has not)."""
    timeout = ctx.config.migration.drain_timeout_s
    result.drained = await wait_drained(ctx.pool, result.shop_id, timeout_s=timeout)
    if not result.drained:
        result.detail = (f"the mirror had not caught up after {timeout}s (is a mirror worker running?); "
                         "the proxy moves the shop to mirroring once it has")
        return
    try:
        async with ctx.pool.acquire() as conn:
            await transition(conn, result.shop_id, ph.MIRRORING, expect={ph.BACKFILLED}, actor=ctx.actor,
                             action=ACTION)
        result.status = MIRRORING
    except MigrationError as exc:
        phase = (await read_phase(ctx.pool, result.shop_id)).phase
        if phase == ph.MIRRORING:
            result.status = MIRRORING  # the keeper was first
        else:
            result.detail = f"drained, but not moved to mirroring: {exc}"


async def _estimate(ctx: BackfillContext, shops: list[int]) -> None:
    """Rows per shop in unified right now (for the progress bars' totals before each shop starts)."""
    try:
        tables = await captured_tables(ctx.tenancy)
        totals = dict.fromkeys(shops, 0)
        for table in tables:
            rows = await ctx.pool.fetch(
                f"SELECT {ident(table.tenant_column)}::bigint AS shop, count(*) AS n FROM {table.name.sql}"
                f" WHERE {ident(table.tenant_column)}::bigint = ANY($1::bigint[]) GROUP BY 1",
                shops,
            )
            for r in rows:
                totals[int(r["shop"])] += int(r["n"])
    except Exception as exc:  # every shop reports the cause itself
        logger.debug("backfill estimate skipped: %s", describe(exc))
        return
    for shop, rows in totals.items():
        ctx.feed.emit(ProgressEvent(ESTIMATE, shop, rows_total=rows))
