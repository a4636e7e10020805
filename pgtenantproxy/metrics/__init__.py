"""Observability: what the proxy records about every query, and how it is exported.

* :mod:`.recorder` — the one call on the data path (per completed unit):
  latency histograms by source, type, outcome, table; the per-shop series
  (:mod:`.shops`, bounded); the monitor's rolling window; slow-query logs;
* :mod:`.monitor` — the PerformanceMonitor: percentiles, error rates, QPS,
  slow queries per shop, table and type; unified vs tenant;
* :mod:`.alerting` — the monitor's alert hook (per-shop P99 / error rate);
* :mod:`.collector` — the Prometheus collector (a dedicated registry), with
  :mod:`.pools`, :mod:`.mirror` and :mod:`.control` for the other sources;
* :mod:`.exporter` — ``/metrics`` over HTTP on ``[metrics] listen``.

See docs/observability.md for the metric list, dashboards and alerts.
"""
