"""Mirror metrics as plain counters and gauges (the observability layer exports them).

Counters (process-local, monotonic; per table too):

* ``captured``: entries this process claimed for the first time (attempts 0),
  i.e. captured writes it observed;
* ``mirrored``: entries applied to the target (their key synced);
* ``failed``: entries whose apply failed (each failed try counts);
* ``retried``: entries scheduled for another try (after an entry failure, or
  because the whole target was unavailable);
* ``dead_lettered``: entries moved to the dead letters;
* ``rows_upserted`` / ``rows_deleted``: rows written on targets.

Gauges (from the status poller, shared by every proxy instance since they are
read from the control schema): queue size and oldest pending age per shop.
Latency: ``apply_seconds`` (one batch: claim to commit) and ``mirror_seconds``
(capture to applied, per entry), as fixed-bucket histograms.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTERS = ("captured", "mirrored", "failed", "retried", "dead_lettered")


@dataclass
class Histogram:
    """Cumulative-style buckets (``le``), count and sum, as Prometheus keeps them."""

    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (inf past the last bucket)."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")


@dataclass
class ShopGauge:
    queue_size: int = 0
    oldest_age_s: float = 0.0


@dataclass
class MirrorStats:
    totals: Counter[str] = field(default_factory=Counter)
    per_table: dict[str, Counter[str]] = field(default_factory=dict)
    rows_upserted: int = 0
    rows_deleted: int = 0
    batches: int = 0
    target_unavailable: int = 0
    apply_seconds: Histogram = field(default_factory=Histogram)
    mirror_seconds: Histogram = field(default_factory=Histogram)
    shops: dict[int, ShopGauge] = field(default_factory=dict)
    #: When not None, every mirror latency (seconds) is also appended here, up to ``max_samples``
    #: (benchmarks want exact percentiles, not buckets).
    samples: list[float] | None = None
    max_samples: int = 1_000_000

    def observe_mirror(self, seconds: float) -> None:
        self.mirror_seconds.observe(seconds)
        if self.samples is not None and len(self.samples) < self.max_samples:
            self.samples.append(seconds)

    def count(self, name: str, table: str, n: int = 1) -> None:
        if n:
            self.totals[name] += n
            self.per_table.setdefault(table, Counter())[name] += n

    def set_queues(self, gauges: dict[int, ShopGauge]) -> None:
        """Replace the per-shop gauges (shops with nothing pending are dropped)."""
        self.shops = gauges

    @property
    def queue_size(self) -> int:
        return sum(g.queue_size for g in self.shops.values())

    def snapshot(self) -> dict[str, object]:
        """A plain dict for logs, the CLI and tests."""
        return {
            **{name: self.totals[name] for name in COUNTERS},
            "rows_upserted": self.rows_upserted,
            "rows_deleted": self.rows_deleted,
            "batches": self.batches,
            "target_unavailable": self.target_unavailable,
            "queue_size": self.queue_size,
            "apply_p99_s": self.apply_seconds.quantile(0.99),
            "mirror_p50_s": self.mirror_seconds.quantile(0.5),
            "mirror_p99_s": self.mirror_seconds.quantile(0.99),
        }
