"""Tenant pool metrics: the per-shop pool stats summed, with counters kept monotonic.

Idle shop pools are dropped by the pool manager, and with them their
counters. :class:`PoolTotals` remembers each shop's counters at the last
scrape and, when a shop's pool is gone (or was recreated and counts from
zero again), keeps what it had counted, so the exported ``_total`` series
never go down (activity of a pool between its last scrape and its removal
is not seen: counters may lag, never decrease). Shop pools are summed:
per-shop pool series would be unbounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pgtenantproxy.metrics.families import counter, gauge

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pgtenantproxy.pools.pool import PoolManager

COUNTERS = ("opened", "failed", "waits", "wait_seconds")


@dataclass
class PoolTotals:
    last: dict[int, dict[str, float]] = field(default_factory=dict)
    retired: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))

    def totals(self, manager: PoolManager) -> dict[str, float]:
        now = {shop: {k: float(getattr(p.stats, k)) for k in COUNTERS} for shop, p in manager.pools.items()}
        for shop, seen in self.last.items():
            current = now.get(shop)
            if current is None or any(current[k] < seen[k] for k in COUNTERS):
                for k in COUNTERS:
                    self.retired[k] += seen[k]
        self.last = now
        return {k: self.retired[k] + sum(v[k] for v in now.values()) for k in COUNTERS}

    def metrics(self, manager: PoolManager) -> Iterator[Metric]:
        totals = self.totals(manager)
        pools = list(manager.pools.values())
        conns = gauge("pool_connections", "Tenant connections in all shop pools, by state.", labels=["state"])
        conns.add_metric(["idle"], sum(len(p.idle) for p in pools))
        conns.add_metric(["in_use"], sum(p.in_use for p in pools))
        conns.add_metric(["opening"], sum(p.opening for p in pools))
        yield conns
        yield gauge("pool_max_connections", "Cap on tenant connections across all shop pools.",
                    manager.config.max_total_connections)
        yield gauge("pool_waiting_clients", "Units waiting for a tenant connection.",
                    sum(len(p.waiters) for p in pools))
        yield gauge("pools", "Shop pools open.", len(pools))
        yield gauge("pool_banned_shops", "Shops banned after repeated tenant failures.",
                    sum(1 for p in pools if p.banned))
        yield counter("pool_connections_opened", "Tenant connections opened.", totals["opened"])
        yield counter("pool_connect_failures", "Failed attempts to open a tenant connection.",
                      totals["failed"])
        yield counter("pool_waits", "Borrows that had to wait for a tenant connection.", totals["waits"])
        yield counter("pool_wait_seconds", "Time spent waiting for tenant connections.",
                      totals["wait_seconds"])
