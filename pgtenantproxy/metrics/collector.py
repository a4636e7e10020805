"""The Prometheus collector: every metric of the proxy, built at scrape time.

The data path only bumps plain counters (:mod:`.recorder`, the dispatcher's
:class:`~pgtenantproxy.dispatch.dispatcher.RoutingStats`, the pools' stats,
:class:`~pgtenantproxy.dualwrite.stats.MirrorStats`); this collector turns
them into metric families when Prometheus scrapes, on the proxy's event loop
(so nothing races). It is registered in a dedicated ``CollectorRegistry``,
never in prometheus-client's global one. Names follow the Prometheus
conventions: ``pgtenantproxy_`` prefix, base units (``_seconds``), counters
ending in ``_total``. docs/observability.md lists them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from pgtenantproxy.metrics.families import PREFIX, counter, gauge
from pgtenantproxy.metrics.histogram import Hist
from pgtenantproxy.metrics.mirror import mirror_metrics
from pgtenantproxy.metrics.pools import PoolTotals

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pgtenantproxy.dispatch.runtime import RoutingRuntime
    from pgtenantproxy.dualwrite.stats import MirrorStats
    from pgtenantproxy.metrics.alerting import AlertChecker
    from pgtenantproxy.metrics.control import ControlGauges
    from pgtenantproxy.metrics.recorder import QueryRecorder
    from pgtenantproxy.reload import ReloadStats


class ListenerCounts(Protocol):
    """What the collector reads of the listener (:class:`pgtenantproxy.server.listener.ProxyServer`)."""

    @property
    def client_count(self) -> int: ...

    accepted_total: int
    refused_total: int


@dataclass
class MetricSources:
    """What the collector reads; the app fills in what it runs."""

    server: ListenerCounts | None = None
    recorder: QueryRecorder | None = None
    runtime: RoutingRuntime | None = None
    mirror: MirrorStats | None = None
    control: ControlGauges | None = None
    reloads: ReloadStats | None = None
    alerts: AlertChecker | None = None
    pool_totals: PoolTotals = field(default_factory=PoolTotals)


class ProxyCollector(Collector):
    def __init__(self, sources: MetricSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        yield from _server(s)
        if s.recorder is not None:
            yield from _queries(s.recorder, s)
        if s.runtime is not None:
            yield from _routing(s.runtime)
            yield from s.pool_totals.metrics(s.runtime.pools)
        if s.mirror is not None or s.control is not None:
            yield from mirror_metrics(s.mirror, s.control, s.recorder.shops.limit if s.recorder else 50)
        if s.reloads is not None:
            yield from _reloads(s.reloads)


def registry_for(sources: MetricSources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(sources))
    return registry


def histogram(name: str, doc: str, labels: list[str], hists: list[Hist]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for h in hists:
        family.add_metric(list(h.labels), h.cumulative(), sum_value=h.total)
    return family


def _server(s: MetricSources) -> Iterator[Metric]:
    server = s.server
    if server is None:
        return
    yield gauge("client_connections", "Client connections admitted and open.", server.client_count)
    yield counter("client_connections_accepted", "TCP connections accepted from clients.",
                  server.accepted_total)
    yield counter("client_connections_refused",
                  "Clients refused at admission (too many clients, shutting down).", server.refused_total)


def _queries(recorder: QueryRecorder, s: MetricSources) -> Iterator[Metric]:
    recorder.refresh_tables()
    if s.runtime is not None:
        recorder.shops.rebalance(s.runtime.watched_shops())
    else:
        recorder.shops.rebalance()
    yield histogram(
        PREFIX + "query_duration_seconds",
        "Latency of client units (a Query, or a batch up to Sync) as the client sees it, "
        "from dispatch to the end of the answer.",
        ["source", "type", "outcome", "table"],
        [recorder.by_labels[k] for k in sorted(recorder.by_labels)],
    )
    yield histogram(
        PREFIX + "shop_query_duration_seconds",
        "Latency of client units per shop (bounded: watched and busiest shops, the rest shop=\"other\").",
        ["shop", "source"],
        recorder.shops.exported(),
    )
    monitor = recorder.monitor
    # A "quantile" label is reserved for summaries (promtool says so): "percentile" = 50, 95, 99.
    latency = gauge("monitor_latency_seconds", "Latency percentiles over the performance monitor's "
                    "rolling window (nearest rank).", labels=["source", "percentile"])
    for source, quantiles in sorted(monitor.source_percentiles().items()):
        for q, value in quantiles.items():
            latency.add_metric([source, str(round(q * 100))], value)
    yield latency
    yield gauge("monitor_window_queries", "Queries in the performance monitor's window.", len(monitor))
    yield counter("slow_queries", "Units slower than slow_query_threshold_ms.", recorder.slow_total)
    if s.alerts is not None:
        fired = counter("monitor_alerts", "Per-shop alerts raised by the monitor's hook.", labels=["kind"])
        firing = gauge("monitor_alerts_firing", "Per-shop alerts firing now.", labels=["kind"])
        for kind in ("p99", "error_rate"):
            fired.add_metric([kind], s.alerts.fired[kind])
            firing.add_metric([kind], sum(1 for _, k in s.alerts.firing if k == kind))
        yield fired
        yield firing


def _routing(runtime: RoutingRuntime) -> Iterator[Metric]:
    stats = runtime.dispatcher.stats
    decisions = counter("routing_decisions", "Routing decisions by target and reason.",
                        labels=["target", "reason"])
    for (target, reason), n in sorted(stats.decisions.items()):
        decisions.add_metric([target, reason], n)
    yield decisions
    sources = counter("shop_identifications", "Units whose shop was identified, by where it came from.",
                      labels=["source"])
    for source, n in sorted(stats.sources.items()):
        sources.add_metric([source], n)
    yield sources
    yield counter("fallbacks", "Tenant reads re-run on unified after a tenant failure.",
                  stats.outcomes.get(("unified", "fallback"), 0))
    shadow = counter("shadow_reads", "Shadow reads by result.", labels=["result"])
    shadow.add_metric(["match"], stats.shadow_compared - stats.shadow_mismatches)
    shadow.add_metric(["mismatch"], stats.shadow_mismatches)
    shadow.add_metric(["failed"], stats.shadow_failed)
    yield shadow
    effective = runtime.effective()
    info = gauge("routing_strategy_info", "The effective read strategy (value 1) and where it came from.",
                 labels=["strategy", "source"])
    info.add_metric([effective.name, effective.source], 1)
    yield info
    yield gauge("routing_percentage", "Percentage of the percentage strategy.", effective.percentage)
    yield gauge("shops_ready", "Shops whose tenant database is ready.", len(runtime.catalog.snapshot.ready))
    yield gauge("catalog_refresh_failures", "Consecutive failed refreshes of the routing catalog.",
                runtime.catalog.failures)
    cache = runtime.dispatcher.router.analyser.stats
    yield counter("analysis_cache_hits", "SQL analyses served from the cache.", cache.hits)
    yield counter("analysis_cache_misses", "SQL texts parsed with libpg_query.", cache.misses)
    keys = runtime.dispatcher.keys
    if keys is not None:
        k = keys.stats
        found = counter("key_routing", "Routing by key: how each key's shop was found.", labels=["result"])
        for result, n in (("cache_hit", k.hits), ("id_block", k.block_hits), ("miss", k.misses),
                          ("nowhere", k.nowhere), ("failed", k.failures)):
            found.add_metric([result], n)
        yield found
        yield counter("key_lookups", "Background key lookups (one per unit's batch of missing keys).",
                      k.lookups)
        yield counter("key_confirmations", "Key lookups that had to look on shops' own databases.",
                      k.confirmed)
        yield gauge("key_cache_entries", "Keys whose shop this proxy remembers.", keys.cached)


def _reloads(reloads: ReloadStats) -> Iterator[Metric]:
    family = counter("config_reloads", "Configuration reloads by result.", labels=["result"])
    family.add_metric(["success"], reloads.succeeded)
    family.add_metric(["failure"], reloads.failed)
    yield family
    yield gauge("config_last_reload_successful",
                "1 if the last reload attempt succeeded (or none was made), else 0.",
                0 if reloads.last_failed else 1)
    yield gauge("config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of the configuration.", reloads.last_success_unix)
