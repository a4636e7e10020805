"""The backfill of one shop: unified's rows of the shop copied into its tenant database.

Steps (:func:`backfill_shop`):

1. Take the shop's backfill lock (one run per shop), check that write capture
   is on for every tenant table (else refuse: writes made during the copy would
   be lost), move the shop to ``backfilling`` through :func:`.store.transition`
   (from ``provisioned``, or from ``failed`` to resume; a shop already in
   ``backfilling`` resumes as is; a shop past it is done already).
2. Take the shop's mirror lease (:mod:`.backfill_locks`) and, after it, open
   one ``REPEATABLE READ READ ONLY`` transaction on unified: every table of the
   shop is read from that one snapshot.
3. Per table in foreign key order, unless its checkpoint says ``done``: one
   tenant transaction that clears the table and copies it chunk by chunk
   (:mod:`.copier`), checkpoints updated on the side; the checkpoint becomes
   ``done`` once the tenant committed.
4. The tenant's sequences are moved past the copied ids (:mod:`.backfill_sequences`).
5. The lease is released and the shop moves to ``backfilled``; the mirror then
   applies what was written during the copy. On any failure after step 1 the
   shop moves to ``failed`` with the reason (a re-run resumes).

INVARIANT: a tenant table is cleared and re-copied only under the shop's
mirror lease, from a snapshot taken after the lease was acquired. Every mirror
write that reached the tenant before was applied from data at least as old as
that snapshot, and none can land while the lease is held, so no mirror write
newer than the snapshot can be wiped out; writes committed after the snapshot
are in the outbox (capture is on) and are applied after the lease is released.
(The worker also skips shops in ``backfilling``.) The snapshot transaction
stays open for the whole shop: it holds back VACUUM on unified meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.catalog import read_tables
from pgtenantproxy.dualwrite.sqlgen import TableInfo, dependency_order
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.migration import backfill_locks as locks
from pgtenantproxy.migration import checkpoints
from pgtenantproxy.migration.backfill_sequences import sync_sequences
from pgtenantproxy.migration.copier import TablePlan, copy_table, plan_table
from pgtenantproxy.migration.progress import CHUNK, SHOP_STARTED, TABLE_DONE, ProgressEvent, ProgressFeed
from pgtenantproxy.migration.throttle import TokenBucket
from pgtenantproxy.tenancy.servers import unified_connect_kwargs
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

APPLICATION_NAME = "pgtenantproxy-backfill"
ACTION = "backfill"
#: Phases a shop has reached once its backfill is complete (also when degraded or failed later on).
PAST_BACKFILL = frozenset({ph.BACKFILLED, ph.MIRRORING, ph.READS_ON_TENANT, ph.TENANT_PRIMARY, ph.RETIRED})


@dataclass
class BackfillContext:
    """What every shop of one run shares."""

    tenancy: TenancyService
    config: Config
    throttle: TokenBucket
    feed: ProgressFeed = field(default_factory=ProgressFeed)
    actor: str | None = None
    lease_timeout_s: float = 60.0

    @property
    def pool(self) -> asyncpg.Pool:
        return self.tenancy.pool


@dataclass
class Copied:
    rows: int = 0
    bytes: int = 0
    tables: int = 0


async def captured_tables(tenancy: TenancyService) -> list[TableInfo]:
    """The tenant tables in foreign key order; refuses unless capture is active on every one."""
    wanted = [str(t) for t in await tenancy.tenant_tables()]
    if not wanted:
        raise MigrationError("there are no tenant tables to backfill ([tenancy] tenant_tables)")
    async with tenancy.pool.acquire() as conn:
        active: set[str] = set()
        if await conn.fetchval("SELECT to_regclass('pgtenantproxy.capture_tables') IS NOT NULL"):
            active = {r["tbl"] for r in await conn.fetch(
                "SELECT tbl FROM pgtenantproxy.capture_tables WHERE active")}
        missing = [t for t in wanted if t not in active]
        if missing:
            raise MigrationError(
                f"write capture is not on for {', '.join(missing)}: run `pgtenantproxy dual-write enable` "
                "first (without capture, writes made during the copy would be lost)"
            )
        infos = {label: t for label, t in (await read_tables(conn)).items() if label in wanted}
    gone = sorted(set(wanted) - set(infos))
    if gone:
        raise MigrationError(f"{', '.join(gone)}: changed since capture was enabled; "
                             "run `pgtenantproxy dual-write enable` again")
    return [infos[label] for label in dependency_order(infos)]


async def enter_backfilling(ctx: BackfillContext, shop_id: int) -> ph.ShopPhase | None:
    """Move the shop to ``backfilling`` (None: its backfill is complete already)."""
    async with ctx.pool.acquire() as conn:
        current = await read_phase(conn, shop_id)
        if current.effective in PAST_BACKFILL:
            return None
        if current.phase == ph.BACKFILLING:
            return current
        async with conn.transaction():
            record = await transition(conn, shop_id, ph.BACKFILLING, expect={current.phase},
                                      expect_version=current.version, actor=ctx.actor, action=ACTION)
            if current.effective != ph.BACKFILLING:  # a fresh start: old checkpoints mean nothing
                await checkpoints.forget(conn, shop_id)
        return record


async def copy_shop(
    ctx: BackfillContext, conn: asyncpg.Connection, shop_id: int, tables: Sequence[TableInfo]
) -> Copied:
    """Steps 2-4 under the lease; ``conn`` is the backfill's own unified connection."""
    await locks.take_lease(conn, shop_id, timeout_s=ctx.lease_timeout_s)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            plans, copied = await _plan(ctx, conn, shop_id, tables)
            target = await connect_target(ctx, shop_id)
            try:
                for plan in plans:
                    await _copy_one(ctx, conn, target, shop_id, plan, copied)
                await sync_sequences(conn, target, tables)
            finally:
                await target.close()
    finally:
        if not conn.is_closed():
            await locks.release_lease(conn, shop_id)
    return copied


async def _plan(
    ctx: BackfillContext, source: asyncpg.Connection, shop_id: int, tables: Sequence[TableInfo]
) -> tuple[list[TablePlan], Copied]:
    marks = await checkpoints.read(ctx.pool, shop_id)
    done = [marks[t.label] for t in tables if t.label in marks and marks[t.label].status == checkpoints.DONE]
    every = ctx.throttle.chunk_rows(ctx.config.migration.chunk_rows)
    finished = {m.table for m in done}
    plans = [await plan_table(source, t, shop_id, every) for t in tables if t.label not in finished]
    await checkpoints.plan(ctx.pool, shop_id, [(p.label, p.rows_total) for p in plans])
    already = sum(m.rows_copied for m in done)
    ctx.feed.emit(ProgressEvent(
        SHOP_STARTED, shop_id, rows_total=already + sum(p.rows_total for p in plans), rows_done=already,
        tables_total=len(tables), tables_done=len(done),
    ))
    if done:
        logger.info("shop %s: resuming; %d of %d tables were copied before", shop_id, len(done), len(tables))
    return plans, Copied(tables=len(done))


async def _copy_one(
    ctx: BackfillContext, source: asyncpg.Connection, target: asyncpg.Connection, shop_id: int,
    plan: TablePlan, copied: Copied,
) -> None:
    seen = [0, 0]

    async def on_chunk(rows: int, nbytes: int) -> None:
        await checkpoints.copying(ctx.pool, shop_id, plan.label, rows, nbytes)
        ctx.feed.emit(ProgressEvent(CHUNK, shop_id, plan.label, rows=rows - seen[0], bytes=nbytes - seen[1]))
        seen[:] = [rows, nbytes]

    async with target.transaction():
        await target.execute("SET LOCAL session_replication_role = replica")
        rows, nbytes = await copy_table(source, target, plan, shop_id, throttle=ctx.throttle,
                                        on_chunk=on_chunk)
    await checkpoints.done(ctx.pool, shop_id, plan.label, rows, nbytes)
    copied.rows += rows
    copied.bytes += nbytes
    copied.tables += 1
    ctx.feed.emit(ProgressEvent(TABLE_DONE, shop_id, plan.label, rows_total=rows))


async def connect_unified(config: Config) -> asyncpg.Connection:
    """The backfill's own connection (locks and snapshot), never idle-timed-out mid-copy."""
    kwargs: dict[str, Any] = unified_connect_kwargs(config)
    kwargs["server_settings"] = {**kwargs.get("server_settings", {}), "application_name": APPLICATION_NAME,
                                 "idle_in_transaction_session_timeout": "0", "statement_timeout": "0"}
    return await asyncpg.connect(**kwargs)


async def connect_target(ctx: BackfillContext, shop_id: int) -> asyncpg.Connection:
    """The shop's tenant database, as its tenant server's admin (needed for session_replication_role)."""
    creds = await ctx.tenancy.credentials(shop_id)
    server = ctx.tenancy.servers.get(creds.server)
    if server.section.admin_password is None:
        raise MigrationError(
            f"tenant server {server.name}: {server.section.admin_password_env} "
            "(its admin password) is not set"
        )
    kwargs = server.connect_kwargs(creds.database)
    kwargs["server_settings"] = {"application_name": APPLICATION_NAME, "statement_timeout": "0"}
    return await asyncpg.connect(**kwargs)


async def finish(ctx: BackfillContext, shop_id: int, version: int, target: str, reason: str | None) -> None:
    """Move the shop on from ``backfilling`` (fenced on the version the run started with)."""
    async with ctx.pool.acquire() as conn:
        await transition(conn, shop_id, target, reason=reason, expect={ph.BACKFILLING},
                         expect_version=version, actor=ctx.actor, action=ACTION)


def elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)
