"""Verification of the reference copies: does each shop's copy hold exactly unified's (filtered) rows?

Per shop and ``[[tenancy.reference_tables]]`` table, :meth:`CopyVerifier.verify`
compares ``(count, sum of row hashes)`` of the listed columns on unified
(filtered tables: the shop's rows) with the shop's copy, read on the
verification's own tenant connection (the shop's role: the copy's ``SELECT``
grant is exercised too), under the comparison settings of :mod:`.checksums`.
When they differ, the shop's copies are synced first (a copy that merely lags
is no difference), then the keys are compared as for tenant tables
(:mod:`.keydiff`: unified, the copy, unified again): a key whose copy row
matches neither unified read is missing, extra or changed; one that unified
changed meanwhile is unsettled. Each table is one
:class:`~.verify_report.TableVerification` of one range, listed with the
tenant tables. Reference tables are small (``[tenancy] reference_max_rows``),
so the whole table is one range and its keys are compared in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.migration import checksums as cs
from pgtenantproxy.migration.keydiff import classify
from pgtenantproxy.migration.keyranges import KeyRange
from pgtenantproxy.migration.reference import FAILURES, sync_shop_references
from pgtenantproxy.migration.reference_catalog import ReferenceDef, ReferenceDefError, read_definitions
from pgtenantproxy.migration.verify_report import TableVerification
from pgtenantproxy.tenancy.errors import describe
from pgtenantproxy.tenancy.service import TenancyService

logger = logging.getLogger(__name__)

WHOLE = KeyRange()


class CopyVerifier:
    """Compares one shop's reference copies with unified (shared by the shops of one verification)."""

    def __init__(self, tenancy: TenancyService, config: Config,
                 defs: Mapping[str, ReferenceDef | ReferenceDefError]) -> None:
        self.tenancy = tenancy
        self.config = config
        self.defs = defs

    @classmethod
    async def load(cls, tenancy: TenancyService, config: Config) -> CopyVerifier:
        return cls(tenancy, config, await read_definitions(tenancy.pool, config.tenancy.reference_tables))

    async def verify(self, unified: asyncpg.Connection, tenant: asyncpg.Connection,
                     shop_id: int) -> list[TableVerification]:
        out: list[TableVerification] = []
        synced = False
        for label, defn in self.defs.items():
            result = TableVerification(label, ranges=1)
            out.append(result)
            if not isinstance(defn, ReferenceDef):
                result.error = str(defn)
                continue
            table, who = defn.info, (shop_id if defn.shop_column else None)
            try:
                async with cs.comparable(unified):
                    mine = await cs.range_sums(unified, table, WHOLE, who)
                async with tenant.transaction(readonly=True):
                    theirs = await cs.range_sums(tenant, table, WHOLE, None)
                result.rows_unified, result.rows_tenant = mine[0], theirs[0]
                if mine == theirs:
                    continue
                result.differing_ranges.add(str(WHOLE))
                if not synced:
                    synced = True
                    await self._sync(shop_id)
                result.rechecks = 1
                async with cs.comparable(unified):
                    before = await cs.range_hashes(unified, table, WHOLE, who)
                async with tenant.transaction(readonly=True):
                    copy = await cs.range_hashes(tenant, table, WHOLE, None)
                async with cs.comparable(unified):
                    after = await cs.range_hashes(unified, table, WHOLE, who)
                result.rows_unified, result.rows_tenant = len(after), len(copy)
                result.record(classify(before, copy, after))
            except asyncpg.PostgresError as exc:  # this table only (the copy missing, a grant revoked)
                result.error = f"{label}: {type(exc).__name__}: {exc}"
        return out

    async def _sync(self, shop_id: int) -> None:
        try:
            report = await sync_shop_references(self.tenancy, shop_id, config=self.config)
        except FAILURES as exc:
            logger.warning("shop %s: reference copies not synced before the comparison: %s", shop_id,
                           describe(exc))
            return
        for error in report.errors():
            logger.warning("shop %s: reference copies before the comparison: %s", shop_id, error)
