"""The PerformanceMonitor: a bounded rolling window of queries and the statistics drawn from it.

The seed's PerformanceMonitor, in the proxy. The data path appends one tuple
per completed unit to a ``deque(maxlen=retention)`` (``MAX_METRICS_RETENTION``,
default 10,000): the oldest sample falls out, memory stays bounded (about
160 bytes a sample), and no statistic is computed until somebody asks
(``/performance``, a scrape, the alert check). A ring of typed arrays was
tried: fixed memory and no allocation, but about 0.25 µs more per query.

Percentiles use the nearest-rank definition: P(q) of n samples is the
smallest sample with at least ``q * n`` samples at or below it
(``sorted[ceil(q * n) - 1]``): always one of the recorded values.

Per shop: total, average, P50/P95/P99, error rate, queries per second (the
shop's queries in the window over the time the window spans), slow queries
(over ``slow_query_threshold_ms``), each also by table and by query type;
and the unified-vs-tenant comparison the seed promises (tenant P50 at least
40% lower than unified P50), with whether it holds.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

#: The seed's promise: tenant P50 at least this much lower than unified P50.
TARGET_IMPROVEMENT = 0.40
#: Fewest samples per side before a comparison is drawn.
MIN_COMPARE_SAMPLES = 5


class Sample(NamedTuple):
    at: float  # time.monotonic()
    shop_id: int | None
    source: str  # unified | tenant
    kind: str  # select | insert | update | delete | other
    table: str
    seconds: float
    outcome: str  # ok | error | fallback


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already *sorted* values (0.0 when there are none)."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(q * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass(frozen=True)
class GroupStats:
    total: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    error_rate: float
    slow: int

    @classmethod
    def of(cls, samples: Sequence[Sample], slow_s: float) -> GroupStats:
        durations = sorted(s.seconds for s in samples)
        n = len(durations)
        errors = sum(1 for s in samples if s.outcome == "error")
        return cls(
            total=n,
            avg_ms=sum(durations) / n * 1000 if n else 0.0,
            p50_ms=percentile(durations, 0.50) * 1000,
            p95_ms=percentile(durations, 0.95) * 1000,
            p99_ms=percentile(durations, 0.99) * 1000,
            errors=errors,
            error_rate=errors / n if n else 0.0,
            slow=sum(1 for d in durations if d >= slow_s),
        )


@dataclass(frozen=True)
class Comparison:
    """Unified vs tenant for one shop: is tenant P50 40% lower?"""

    unified_p50_ms: float | None
    tenant_p50_ms: float | None
    improvement: float | None  # 1 - tenant/unified (0.4 = 40% lower)
    target_met: bool | None  # None: not enough samples on one side

    @classmethod
    def of(cls, unified: Sequence[float], tenant: Sequence[float]) -> Comparison:
        u = percentile(sorted(unified), 0.5) * 1000 if unified else None
        t = percentile(sorted(tenant), 0.5) * 1000 if tenant else None
        if u is None or t is None or len(unified) < MIN_COMPARE_SAMPLES or len(tenant) < MIN_COMPARE_SAMPLES:
            return cls(u, t, None, None)
        improvement = 1 - t / u if u > 0 else 0.0
        return cls(u, t, improvement, improvement >= TARGET_IMPROVEMENT)


@dataclass(frozen=True)
class ShopStats:
    shop_id: int
    overall: GroupStats
    qps: float
    by_source: dict[str, GroupStats] = field(default_factory=dict)
    by_table: dict[str, GroupStats] = field(default_factory=dict)
    by_type: dict[str, GroupStats] = field(default_factory=dict)
    comparison: Comparison | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerformanceMonitor:
    def __init__(
        self, *, retention: int = 10000, slow_ms: float = 1000.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: The rolling window: plain tuples in :class:`Sample`'s field order (the recorder appends them
        #: directly; a tuple is cheaper to build than the NamedTuple, and holding only numbers and
        #: strings it is untracked by the garbage collector at its first collection).
        self.window: deque[tuple[Any, ...]] = deque(maxlen=retention)
        self.slow_s = slow_ms / 1000
        self.clock = clock

    def add(self, sample: Sample) -> None:
        self.window.append(tuple(sample))

    def resize(self, retention: int) -> None:
        if retention != self.window.maxlen:
            self.window = deque(self.window, maxlen=retention)

    def clear(self) -> None:
        self.window.clear()

    def __len__(self) -> int:
        return len(self.window)

    def samples(self) -> list[Sample]:
        """The window, oldest first."""
        return [Sample._make(t) for t in self.window]

    # --- statistics ----------------------------------------------------------------
    def span_s(self) -> float:
        """The time the window covers (at least 1 s, so a fresh window does not inflate QPS)."""
        if not self.window:
            return 1.0
        oldest: float = self.window[0][0]
        return max(1.0, self.clock() - oldest)

    def shop_latencies(self) -> dict[int, tuple[list[float], int]]:
        """Per shop: its durations and its error count (from the raw tuples: the alert check)."""
        durations: dict[int, list[float]] = defaultdict(list)
        failed: dict[int, int] = defaultdict(int)
        for t in self.window:
            shop = t[1]
            if shop is None:
                continue
            durations[shop].append(t[5])
            if t[6] == "error":
                failed[shop] += 1
        return {shop: (values, failed[shop]) for shop, values in durations.items()}

    def by_shop(self) -> dict[int, list[Sample]]:
        groups: dict[int, list[Sample]] = defaultdict(list)
        for s in self.samples():
            if s.shop_id is not None:
                groups[s.shop_id].append(s)
        return groups

    def shop_stats(self, shop_id: int, samples: Iterable[Sample] | None = None) -> ShopStats:
        mine = [s for s in (self.samples() if samples is None else samples) if s.shop_id == shop_id]
        slow = self.slow_s
        return ShopStats(
            shop_id=shop_id,
            overall=GroupStats.of(mine, slow),
            qps=len(mine) / self.span_s(),
            by_source=_grouped(mine, lambda s: s.source, slow),
            by_table=_grouped(mine, lambda s: s.table or "none", slow),
            by_type=_grouped(mine, lambda s: s.kind, slow),
            comparison=Comparison.of(
                [s.seconds for s in mine if s.source == "unified" and s.outcome != "fallback"],
                [s.seconds for s in mine if s.source == "tenant"],
            ),
        )

    def source_percentiles(self) -> dict[str, dict[float, float]]:
        """P50/P95/P99 (seconds) per source over the whole window (at every scrape: from the raw tuples)."""
        durations: dict[str, list[float]] = defaultdict(list)
        for t in self.window:
            durations[t[2]].append(t[5])
        out: dict[str, dict[float, float]] = {}
        for source, values in durations.items():
            values.sort()
            out[source] = {q: percentile(values, q) for q in (0.5, 0.95, 0.99)}
        return out

    def report(self, shop_id: int | None = None) -> dict[str, Any]:
        """What ``GET /api/superadmin/migration/performance`` answers."""
        groups = self.by_shop()
        shops = [shop_id] if shop_id is not None else sorted(groups)
        everything = self.samples()
        return {
            "window": {"samples": len(self.window), "retention": self.window.maxlen,
                       "span_seconds": round(self.span_s(), 3),
                       "slow_query_threshold_ms": self.slow_s * 1000},
            "overall": asdict(GroupStats.of(everything, self.slow_s)),
            "by_source": {
                k: asdict(v) for k, v in _grouped(everything, lambda s: s.source, self.slow_s).items()
            },
            "target_improvement": TARGET_IMPROVEMENT,
            "shops": [self.shop_stats(s, groups.get(s, [])).as_dict() for s in shops],
        }


def _grouped(samples: Sequence[Sample], key: Callable[[Sample], str], slow_s: float) -> dict[str, GroupStats]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[key(s)].append(s)
    return {k: GroupStats.of(v, slow_s) for k, v in sorted(groups.items())}
