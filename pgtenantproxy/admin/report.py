"""The migration status: per shop, where it stands and where its reads go. Shared by the API and the CLI.

Everything is read from the control schema in one go (provisioning state,
per-shop overrides, the API's strategy, and, once write mirroring was set
up, the outbox, dead letters and degraded shops), so every proxy instance
and ``pgtenantproxy status`` give the same answer. The read decision per
shop applies the routing rule to that shared state: the effective strategy
(API state, else the config file) with the per-shop overrides, and
eligibility = phase ``mirroring`` or later (:mod:`pgtenantproxy.lifecycle.phases`),
not degraded, and (while capture is on) mirror lag under ``[dual_write]
max_lag_ms``. Each shop also shows its phase and, while it is being copied,
its backfill progress and, when ``[[tenancy.reference_tables]]`` are configured, the lag of its
reference copies (None: the shop has no usable copies). A session's own read-your-writes
wait is per session and not shown.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dispatch.routing_state import EffectiveStrategy, effective, effective_routing, read_state
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.reference import reference_lag
from pgtenantproxy.lifecycle.store import read_phases
from pgtenantproxy.migration.checkpoints import ShopProgress, shop_progress
from pgtenantproxy.routing import Strategy

_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
_PROVISIONS = "SELECT shop_id, state, server FROM pgtenantproxy.tenant_provisions ORDER BY shop_id"
_OVERRIDES = "SELECT shop_id, active FROM pgtenantproxy.read_overrides"
_OUTBOX = """SELECT shop_id, count(*) AS n, extract(epoch FROM clock_timestamp() - min(captured_at)) AS lag
             FROM pgtenantproxy.outbox GROUP BY shop_id"""
_DEAD = "SELECT shop_id, count(*) AS n FROM pgtenantproxy.dead_letters GROUP BY shop_id"
_DEGRADED = "SELECT shop_id FROM pgtenantproxy.mirror_state WHERE degraded"
_CAPTURE = "SELECT count(*) FROM pgtenantproxy.capture_tables WHERE active"


@dataclass(frozen=True)
class ShopStatus:
    shop_id: int
    server: str | None
    state: str  # provisioning state, "unprovisioned" when the shop has no row
    reads: str  # tenant | unified
    reason: str  # the strategy's verdict
    override: str | None  # activated | deactivated
    mirror_queue: int
    mirror_lag_seconds: float
    dead_letters: int
    degraded: bool
    phase: str = ph.UNIFIED
    phase_reason: str | None = None
    #: While (or after) a backfill: "copied/total rows, done/tables tables".
    backfill: str | None = None
    #: A cutover or rollback holds the shop's writes right now.
    writes_held: bool = False
    #: Age of the oldest change of a reference table not yet in its copies (None: no usable copies, or no
    #: reference tables configured).
    reference_lag_seconds: float | None = None


@dataclass(frozen=True)
class StatusReport:
    strategy: EffectiveStrategy
    capture_tables: int | None  # None: write mirroring never set up
    shops: list[ShopStatus]

    def as_dict(self) -> dict[str, Any]:
        reads_on_tenant = sum(1 for s in self.shops if s.reads == "tenant")
        return {
            "strategy": self.strategy.as_dict(),
            "dual_write": {"capture_tables": self.capture_tables,
                           "enabled": bool(self.capture_tables)},
            "summary": {"shops": len(self.shops), "reads_on_tenant": reads_on_tenant,
                        "provisioned": sum(1 for s in self.shops if s.state == "provisioned"),
                        "phases": dict(Counter(s.phase for s in self.shops)),
                        "dead_letters": sum(s.dead_letters for s in self.shops),
                        "degraded": sum(1 for s in self.shops if s.degraded)},
            "shops": [dataclasses.asdict(s) for s in self.shops],
        }


async def gather_status(conn: asyncpg.Connection, config: Config) -> StatusReport:
    state = await read_state(conn)
    provisions = {int(r["shop_id"]): r for r in await conn.fetch(_PROVISIONS)}
    phases = await read_phases(conn)
    backfills = {shop: _progress(p) for shop, p in (await shop_progress(conn)).items()}
    references = await reference_lag(conn, [r.table for r in config.tenancy.reference_tables])
    overrides: dict[int, bool] = {}
    if await conn.fetchval(_EXISTS, "pgtenantproxy.read_overrides"):
        overrides = {int(r["shop_id"]): bool(r["active"]) for r in await conn.fetch(_OVERRIDES)}
    queues: dict[int, tuple[int, float]] = {}
    dead: dict[int, int] = {}
    degraded: set[int] = set()
    capture: int | None = None
    if await conn.fetchval(_EXISTS, "pgtenantproxy.dead_letters"):
        queues = {int(r["shop_id"]): (int(r["n"]), float(r["lag"])) for r in await conn.fetch(_OUTBOX)}
        dead = {int(r["shop_id"]): int(r["n"]) for r in await conn.fetch(_DEAD)}
        degraded = {int(r["shop_id"]) for r in await conn.fetch(_DEGRADED)}
        capture = int(await conn.fetchval(_CAPTURE))
    strategy = Strategy.from_config(
        effective_routing(config.routing, state),
        activated=[s for s, on in overrides.items() if on],
        deactivated=[s for s, on in overrides.items() if not on],
    )
    max_lag_s = config.dual_write.max_lag_ms / 1000

    def eligible(shop: int) -> bool:
        record = phases.get(shop)
        if record is None or not record.routable or shop in degraded:
            return False
        return not capture or queues.get(shop, (0, 0.0))[1] < max_lag_s

    shops = []
    for shop in sorted({*provisions, *phases, *overrides, *queues, *dead}):
        row = provisions.get(shop)
        record = phases.get(shop, ph.ShopPhase(shop))
        verdict = strategy.verdict(shop, eligible)
        queue, lag = queues.get(shop, (0, 0.0))
        override = None if shop not in overrides else ("activated" if overrides[shop] else "deactivated")
        shops.append(ShopStatus(
            shop, row["server"] if row else None, row["state"] if row else "unprovisioned",
            "tenant" if verdict.tenant else "unified", verdict.reason, override,
            queue, round(lag, 3), dead.get(shop, 0), shop in degraded,
            record.phase, record.reason, backfills.get(shop), record.holding,
            None if shop not in references else round(references[shop], 3),
        ))
    return StatusReport(effective(config, state), capture, shops)


def _progress(p: ShopProgress) -> str:
    return f"{p.rows_copied}/{p.rows_total} rows, {p.tables_done}/{p.tables_total} tables"
