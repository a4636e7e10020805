"""The read strategy set through the admin API, persisted in the control schema.

``pgtenantproxy.routing_state`` holds at most one row: the strategy an
operator set with ``activate-reads`` / ``rollback-reads`` (strategy,
percentage, shop ids, who, when). The *effective* strategy of every proxy
instance is that row when present, else ``[routing]`` of its config file:
so an API rollback wins over every config file at once, and
``use-config-strategy`` (deleting the row) hands control back to the files.
``[routing] enable_tenant_reads = false`` (``ENABLE_TENANT_READS``) still
turns all tenant reads off whatever the row says.

A trigger on the table (and on ``read_overrides``) sends ``NOTIFY
pgtenantproxy_routing``; every proxy LISTENs on one connection
(:mod:`.catalog`) and re-reads at once, and also re-reads on its periodic
catalog refresh, so a lost notification only delays a change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pgtenantproxy.config import STRATEGIES, Config, RoutingSection

CHANNEL = "pgtenantproxy_routing"

_READ = "SELECT strategy, percentage, shop_ids, source, actor, updated_at FROM pgtenantproxy.routing_state"
_WRITE = """
INSERT INTO pgtenantproxy.routing_state (singleton, strategy, percentage, shop_ids, source, actor, updated_at)
VALUES (true, $1, $2, $3, $4, $5, clock_timestamp())
ON CONFLICT (singleton) DO UPDATE SET strategy = EXCLUDED.strategy, percentage = EXCLUDED.percentage,
    shop_ids = EXCLUDED.shop_ids, source = EXCLUDED.source, actor = EXCLUDED.actor,
    updated_at = EXCLUDED.updated_at
"""


@dataclass(frozen=True)
class RoutingState:
    strategy: str
    percentage: int = 0
    shop_ids: tuple[int, ...] = ()
    source: str = "api"
    actor: str = ""
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (known: {', '.join(STRATEGIES)})")
        if not 0 <= self.percentage <= 100:
            raise ValueError("percentage must be between 0 and 100")


@dataclass(frozen=True)
class EffectiveStrategy:
    """The strategy a proxy applies, and where it came from ("config" or "api")."""

    name: str
    percentage: int
    shop_ids: tuple[int, ...]
    canary_shop_ids: tuple[int, ...]
    enable_tenant_reads: bool
    source: str
    set_by: str | None = None
    set_at: datetime | None = None
    config_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["set_at"] = self.set_at.isoformat() if self.set_at else None
        return out


async def read_state(conn: asyncpg.Connection | asyncpg.Pool) -> RoutingState | None:
    exists = await conn.fetchval("SELECT to_regclass('pgtenantproxy.routing_state') IS NOT NULL")
    if not exists:
        return None
    row = await conn.fetchrow(_READ)
    if row is None:
        return None
    return RoutingState(row["strategy"], row["percentage"], tuple(int(s) for s in row["shop_ids"]),
                        row["source"], row["actor"], row["updated_at"])


async def write_state(conn: asyncpg.Connection, state: RoutingState) -> None:
    await conn.execute(
        _WRITE, state.strategy, state.percentage, list(state.shop_ids), state.source, state.actor
    )


async def clear_state(conn: asyncpg.Connection) -> bool:
    """Remove the API's strategy (the config files decide again); True if there was one."""
    status = await conn.execute("DELETE FROM pgtenantproxy.routing_state")
    return bool(status.endswith(" 1"))


def effective_routing(routing: RoutingSection, state: RoutingState | None) -> RoutingSection:
    """``[routing]`` with the API's strategy in place of the file's, when there is one."""
    if state is None:
        return routing
    changes: dict[str, Any] = {"strategy": state.strategy, "percentage": state.percentage}
    if state.strategy == "shop-list":
        changes["shop_ids"] = state.shop_ids
    elif state.strategy == "canary":
        changes["canary_shop_ids"] = state.shop_ids
    return dataclasses.replace(routing, **changes)


def effective(config: Config, state: RoutingState | None) -> EffectiveStrategy:
    routing = effective_routing(config.routing, state)
    return EffectiveStrategy(
        name=routing.strategy,
        percentage=routing.percentage,
        shop_ids=tuple(routing.shop_ids),
        canary_shop_ids=tuple(routing.canary_shop_ids),
        enable_tenant_reads=routing.enable_tenant_reads,
        source="api" if state is not None else "config",
        set_by=state.actor if state is not None else None,
        set_at=state.updated_at if state is not None else None,
        config_file=config.source,
    )
