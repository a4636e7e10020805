"""Refilling id blocks: a shop that writes on its own database gets its next block before one runs out.

At cutover each tenant-owned sequence gets a block of ids (:mod:`.id_blocks`);
a shop that uses it up would get PostgreSQL's "reached maximum value of
sequence" error. :func:`refill_id_blocks` checks, for a shop in
``tenant_primary`` or ``retired`` (or ``degraded``/``failed`` from one of
them), every sequence its database owns: when more than ``[migration]
id_block_refill_at`` of its current block (the recorded block holding the
sequence's position) has been used, the next block is

1. claimed on unified exactly as at cutover (``setval(shared, nextval(shared) +
   id_block)``; the tenant takes the upper half of the gap);
2. recorded in ``pgtenantproxy.id_blocks`` (before the tenant can draw from it:
   an id the tenant hands out is always inside a recorded block of its shop);
3. applied on the tenant: ``ALTER SEQUENCE own MAXVALUE last RESTART WITH
   first``. The ids left in the old block are skipped, never reused: unified's
   sequence is already past them.

Interrupted between two steps, nothing collides: a claimed but unrecorded
block only burns ids of unified's sequence, a recorded but unapplied one is
never drawn from. One refill of a shop runs at a time (session advisory lock
``(REFILL_LOCK, shop)`` on unified; a second caller skips the shop).

:class:`IdBlockRefiller` checks every such shop (at most :data:`PARALLEL` at
a time); the phase keeper (:mod:`.keeper`) runs it every ``[migration]
id_block_refill_interval_s`` while it leads. A sequence whose current block was
never recorded (a cutover made before blocks were recorded) is left alone with
a warning: without its first id the share used is unknown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.lifecycle.keys import IdBlockRecord, read_id_blocks
from pgtenantproxy.lifecycle.store import read_phase, read_phases
from pgtenantproxy.migration.backfill_sequences import OWNED_SEQUENCES
from pgtenantproxy.migration.id_blocks import (
    IdBlock,
    apply_block,
    claim_block,
    record_blocks,
    sequence_name,
    shared_sequence,
)
from pgtenantproxy.migration.reverse_link import tenant_admin
from pgtenantproxy.migration.tables import ordered_tables
from pgtenantproxy.sqltext import QualifiedName
from pgtenantproxy.tenancy.control_schema import shop_lock_key
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

#: Advisory lock namespace (first int; the second is the shop's lock key): one refill per shop at a time.
REFILL_LOCK = 0x50475459
#: Shops checked at the same time (each holds a connection of the pool the mirror workers share).
PARALLEL = 2
_UNRECORDED: set[tuple[int, str, str]] = set()
FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, MigrationError,
            TenancyError)


async def refill_id_blocks(
    tenancy: TenancyService, shop_id: int, *, config: Config | None = None
) -> list[IdBlock]:
    """Give each sequence of ``shop_id``'s database that used more than ``id_block_refill_at`` of its
    block the next block (see the module doc); the new blocks (empty: nothing was due)."""
    section = (config or tenancy.config).migration
    async with tenancy.pool.acquire() as control:
        key = shop_lock_key(shop_id)
        if not await control.fetchval("SELECT pg_try_advisory_lock($1, $2)", REFILL_LOCK, key):
            logger.debug("shop %s: id blocks are being refilled elsewhere", shop_id)
            return []
        try:
            if (await read_phase(control, shop_id)).effective not in ph.OWN_DATABASE:
                return []
            try:
                tables = await ordered_tables(control, purpose="refill id blocks of")
            except MigrationError:
                return []
            recorded = [b for b in await read_id_blocks(control) if b.shop_id == shop_id]
            tenant = await tenant_admin(tenancy, shop_id)
            try:
                return await _refill(control, tenant, shop_id, tables, recorded, section.id_block,
                                     section.id_block_refill_at)
            finally:
                await tenant.close(timeout=2.0)
        finally:
            await control.execute("SELECT pg_advisory_unlock($1, $2)", REFILL_LOCK, key)


async def _refill(
    control: asyncpg.Connection, tenant: asyncpg.Connection, shop_id: int, tables: Sequence[TableInfo],
    recorded: list[IdBlockRecord], block: int, refill_at: float,
) -> list[IdBlock]:
    new: list[IdBlock] = []
    for table in tables:
        for row in await tenant.fetch(OWNED_SEQUENCES, table.name.sql):
            column = row["attname"]
            shared = await shared_sequence(control, table, column)
            if shared is None:
                continue  # unified draws no ids for this column: the cutover reserved no block either
            own = await sequence_name(tenant, row["seq"])
            current, used = await _usage(tenant, own, shop_id, table, column, recorded)
            if current is None or used <= refill_at * current.size:
                continue
            claimed = await claim_block(control, tenant, table, column, shared, block)
            await record_blocks(control, shop_id, [claimed])
            await apply_block(tenant, own, claimed)
            logger.info("shop %s: %s.%s: %d of the %d ids of block %d..%d used; next block %d..%d reserved "
                        "and recorded", shop_id, table.label, column, used, current.size, current.first,
                        current.last, claimed.first, claimed.last)
            new.append(claimed)
    return new


async def _usage(
    tenant: asyncpg.Connection, own: QualifiedName, shop_id: int, table: TableInfo, column: str,
    recorded: list[IdBlockRecord],
) -> tuple[IdBlock | None, int]:
    """The recorded block the tenant's sequence draws from now, and how many of its ids were drawn."""
    state = await tenant.fetchrow(f"SELECT last_value, is_called FROM {own.sql}")
    maximum = await tenant.fetchval("SELECT seqmax FROM pg_sequence WHERE seqrelid = $1::regclass", own.sql)
    assert state is not None
    position = int(state["last_value"])
    mine = [b for b in recorded if b.table == table.label and b.column == column]
    current = (next((b for b in mine if b.holds(position)), None)
               or next((b for b in mine if b.last == int(maximum)), None))
    if current is None:
        if (shop_id, table.label, column) not in _UNRECORDED:  # once per process, not every round
            _UNRECORDED.add((shop_id, table.label, column))
            logger.warning("shop %s: %s.%s: the block its sequence draws from is not recorded in "
                           "pgtenantproxy.id_blocks (a cutover made before blocks were recorded?); "
                           "not refilled", shop_id, table.label, column)
        return None, 0
    drawn = max(0, position - current.first + (1 if state["is_called"] else 0))
    return IdBlock(current.table, current.column, current.first, current.last), drawn


class IdBlockRefiller:
    """Refills the id blocks of every shop whose writes are on its own database (see the module doc)."""

    def __init__(self, tenancy: TenancyService, config: Callable[[], Config] | None = None) -> None:
        self.tenancy = tenancy
        self._config = config or (lambda: tenancy.config)
        self.refilled = 0

    @property
    def interval_s(self) -> float:
        return float(self._config().migration.id_block_refill_interval_s)

    async def run_once(self) -> list[IdBlock]:
        """One check of every shop in ``tenant_primary`` or ``retired``; the blocks reserved."""
        config = self._config()
        phases = await read_phases(self.tenancy.pool)
        shops = [s for s, r in phases.items() if r.effective in ph.OWN_DATABASE]
        slots = asyncio.Semaphore(min(config.migration.jobs, PARALLEL))

        async def one(shop: int) -> list[IdBlock]:
            async with slots:
                try:
                    return await refill_id_blocks(self.tenancy, shop, config=config)
                except FAILURES as exc:
                    logger.warning("shop %s: id blocks not refilled: %s: %s", shop, type(exc).__name__, exc)
                    return []

        new = [b for found in await asyncio.gather(*(one(s) for s in shops)) for b in found]
        self.refilled += len(new)
        return new
