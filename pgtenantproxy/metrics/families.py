"""Shorthands for building metric families at scrape time (all names get the ``pgtenantproxy_`` prefix)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "pgtenantproxy_"


def gauge(
    name: str, doc: str, value: float | None = None, labels: list[str] | None = None
) -> GaugeMetricFamily:
    if labels is not None:
        return GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def counter(
    name: str, doc: str, value: float | None = None, labels: list[str] | None = None
) -> CounterMetricFamily:
    """``name`` without ``_total``: prometheus-client adds it to the exposed sample."""
    if labels is not None:
        return CounterMetricFamily(PREFIX + name, doc, labels=labels)
    return CounterMetricFamily(PREFIX + name, doc, value=value)
