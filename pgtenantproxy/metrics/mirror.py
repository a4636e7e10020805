"""Write-mirroring metrics: the mirror worker's counters, its lag, and the dead letters.

Two sources: :class:`~pgtenantproxy.dualwrite.stats.MirrorStats` of the mirror
running in this process (counters per table, latency histograms, queue size
and lag per shop from its status poller), and :class:`.control.ControlGauges`
(dead letters and degraded shops, read from the control schema, so every
proxy instance reports them whether or not it runs a worker). The per-shop
lag series is bounded: the ``limit`` most lagging shops get their own
series; ``pgtenantproxy_mirror_max_lag_seconds`` covers them all. The
reference copies' lag (``pgtenantproxy_reference_lag_seconds{shop}``, also
from :class:`.control.ControlGauges`) is bounded the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import HistogramMetricFamily

from pgtenantproxy.metrics.families import PREFIX, counter, gauge
from pgtenantproxy.metrics.histogram import le_label

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pgtenantproxy.dualwrite.stats import Histogram, MirrorStats
    from pgtenantproxy.metrics.control import ControlGauges

EVENTS = {
    "captured": "Captured writes (outbox entries) this process picked up for the first time.",
    "mirrored": "Outbox entries applied to the shop's database.",
    "failed": "Failed attempts to apply an outbox entry.",
    "retried": "Outbox entries scheduled for another attempt.",
    "dead_lettered": "Outbox entries moved to the dead letters after their last retry.",
}


def mirror_metrics(stats: MirrorStats | None, control: ControlGauges | None, limit: int) -> Iterator[Metric]:
    if stats is not None:
        yield from _worker(stats, limit)
    if control is not None and control.available:
        yield gauge("mirror_dead_letters", "Dead letters waiting for a replay (all shops).",
                    control.dead_letters)
        yield gauge("mirror_degraded_shops",
                    "Shops whose reads stay on unified (dead letters, unreachable tenant).",
                    control.degraded_shops)
        yield gauge("mirror_capture_tables", "Tenant tables with write capture installed.",
                    control.capture_tables)
    if control is not None and control.reference_lag is not None:
        yield from _reference(control.reference_lag, limit)


def _reference(lags: dict[int, float], limit: int) -> Iterator[Metric]:
    yield gauge("reference_max_lag_seconds", "Age of the oldest change of a reference table not yet in a "
                "shop's copy (all shops with copies).", max(lags.values(), default=0.0))
    yield gauge("reference_copies_shops", "Shops holding a copy of every reference table.", len(lags))
    lag = gauge("reference_lag_seconds", "Age of the oldest change of a reference table not yet in the "
                "shop's copies (the most lagging shops; shops without copies are not listed).",
                labels=["shop"])
    for shop, seconds in sorted(sorted(lags.items(), key=lambda kv: -kv[1])[:limit]):
        lag.add_metric([str(shop)], seconds)
    yield lag


def _worker(stats: MirrorStats, limit: int) -> Iterator[Metric]:
    tables = sorted(stats.per_table)
    for event, doc in EVENTS.items():
        family = counter(f"mirror_{event}", doc, labels=["table"])
        for table in tables:
            family.add_metric([table], stats.per_table[table][event])
        yield family
    rows = counter("mirror_rows", "Rows written to shop databases by the mirror.", labels=["op"])
    rows.add_metric(["upsert"], stats.rows_upserted)
    rows.add_metric(["delete"], stats.rows_deleted)
    yield rows
    yield counter("mirror_batches", "Batches applied by the mirror worker.", stats.batches)
    yield counter("mirror_target_unavailable",
                  "Batches put off because the shop's database was unreachable.", stats.target_unavailable)
    yield _histogram(PREFIX + "mirror_apply_duration_seconds", "Time to apply one batch (claim to commit).",
                     stats.apply_seconds)
    yield _histogram(PREFIX + "mirror_delay_seconds", "Time from capture to applied, per outbox entry.",
                     stats.mirror_seconds)
    shops = stats.shops
    yield gauge("mirror_queue_entries", "Outbox entries pending (all shops).",
                sum(g.queue_size for g in shops.values()))
    yield gauge("mirror_max_lag_seconds", "Age of the oldest pending outbox entry (all shops).",
                max((g.oldest_age_s for g in shops.values()), default=0.0))
    lag = gauge("mirror_lag_seconds", "Age of the oldest pending outbox entry of the most lagging shops "
                "(shops with nothing pending are not listed).", labels=["shop"])
    worst = sorted(shops.items(), key=lambda kv: -kv[1].oldest_age_s)[:limit]
    for shop, pending in sorted(worst):
        lag.add_metric([str(shop)], pending.oldest_age_s)
    yield lag


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = []
    running = 0
    for bound, n in zip((*h.buckets, float("inf")), h.counts, strict=True):
        running += n
        buckets.append((le_label(bound), float(running)))
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], buckets, sum_value=h.total)
    return family
