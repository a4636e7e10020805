"""The data-path recorder: bounded labels, the per-shop series, slow-query logs, the exposition."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgtenantproxy.config import MetricsSection
from pgtenantproxy.metrics import recorder as recorder_module
from pgtenantproxy.metrics.collector import MetricSources, registry_for
from pgtenantproxy.metrics.histogram import LATENCY_BUCKETS
from pgtenantproxy.metrics.recorder import QueryRecorder
from pgtenantproxy.metrics.shops import ShopSeries
from pgtenantproxy.routing import Analyser
from pgtenantproxy.session.decision import ToTenant, ToUnified

TENANT_TABLES = frozenset({"public.repairs", "public.customers"})


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _recorder(**section: Any) -> tuple[QueryRecorder, Clock]:
    clock = Clock()
    rec = QueryRecorder(MetricsSection(**section), tenant_tables=lambda: TENANT_TABLES, clock=clock)
    return rec, clock


def _exposition(rec: QueryRecorder) -> dict[str, Any]:
    text = generate_latest(registry_for(MetricSources(recorder=rec))).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_histogram_labels_and_buckets() -> None:
    rec, _ = _recorder()
    rec.record(None, None, ToTenant(3, "tenant", "query", "select", "repairs"), "ok", 0.0003)
    rec.record(None, None, ToTenant(3, "tenant", "query", "select", "public.repairs"), "ok", 0.002)
    rec.record(None, None, ToUnified(None, "no_shop", None, "insert", "plans"), "error", 0.02)
    rec.record(None, None, ToUnified(None, "empty", None, "other", ""), "ok", 20.0)
    family = _exposition(rec)["pgtenantproxy_query_duration_seconds"]
    series: dict[tuple[str, ...], dict[str, float]] = {}
    for s in family.samples:
        key = (s.labels["source"], s.labels["type"], s.labels["outcome"], s.labels["table"])
        series.setdefault(key, {})[s.name.rsplit("_", 1)[-1] + s.labels.get("le", "")] = s.value
    assert set(series) == {
        ("tenant", "select", "ok", "repairs"),  # both spellings of the table: one label
        ("unified", "insert", "error", "global"),
        ("unified", "other", "ok", "none"),
    }
    repairs = series[("tenant", "select", "ok", "repairs")]
    assert repairs["count"] == 2 and abs(repairs["sum"] - 0.0023) < 1e-12
    assert repairs["bucket0.0001"] == 0 and repairs["bucket0.0005"] == 1 and repairs["bucket0.0025"] == 2
    assert repairs["bucket+Inf"] == 2
    assert series[("unified", "other", "ok", "none")][f"bucket{LATENCY_BUCKETS[-1]}"] == 0  # 20 s: +Inf only


def test_table_labels_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder_module, "MAX_TABLE_LABELS", 1)
    rec, _ = _recorder()
    for table in ("repairs", "customers", "customers"):
        rec.record(None, None, ToUnified(1, "x", None, "select", table), "ok", 0.001)
    assert {h.labels[3] for h in rec.by_labels.values()} == {"repairs", "other"}


def test_shop_series_stay_bounded_and_never_go_down() -> None:
    series = ShopSeries(limit=5)
    rng = random.Random(11)
    previous: dict[tuple[str, ...], int] = {}
    for round_ in range(60):
        for _ in range(200):
            shop = int(rng.paretovariate(1.2)) % 40
            series.hist(shop, rng.random() < 0.5).counts[0] += 1
        series.rebalance(priority=[7, 9] if round_ > 30 else [])
        exported = series.exported()
        shops = {h.labels[0] for h in exported}
        assert len(shops) <= 6 and "other" in shops
        if round_ > 30:
            assert {"7", "9"} <= shops
        current = {h.labels: h.count for h in exported}
        for labels, count in current.items():
            assert count >= previous.get(labels, 0), labels  # a series never goes down
        previous = current
    series.resize(2)
    assert len(series.series) == 2


def test_busiest_shops_get_the_free_slots() -> None:
    series = ShopSeries(limit=2)
    for shop, n in ((1, 5), (2, 50), (3, 20)):
        for _ in range(n):
            series.hist(shop, False)
    series.rebalance()
    assert set(series.series) == {2, 3}


def test_slow_queries_are_logged_by_fingerprint_never_by_value(caplog: pytest.LogCaptureFixture) -> None:
    analyser = Analyser("shop_id", 100)
    rec, clock = _recorder(slow_query_threshold_ms=100)
    rec.fingerprint = lambda unit, facts: analyser.analyse(unit).fingerprint or "?"
    sql = "SELECT * FROM repairs WHERE shop_id = 4 AND notes = 'card 4111-1111'"
    decision = ToTenant(4, "tenant", "query", "select", "repairs")
    with caplog.at_level(logging.WARNING, logger="pgtenantproxy.metrics.recorder"):
        rec.record(sql, None, decision, "ok", 0.05)
        assert not caplog.records
        for _ in range(15):
            rec.record(sql, None, decision, "ok", 0.25)
        clock.now += 1
        rec.record(sql, None, decision, "ok", 0.25)
    lines = [r.getMessage() for r in caplog.records]
    fingerprint = analyser.analyse(sql).fingerprint
    assert fingerprint and all(fingerprint in line for line in lines if line.startswith("slow query"))
    assert not any("4111" in line for line in lines)
    # 10 lines in the first second, then one in the next
    assert sum(1 for line in lines if line.startswith("slow query")) == 11
    assert any("5 more slow queries" in line for line in lines)
    assert rec.slow_total == 16
    assert _exposition(rec)["pgtenantproxy_slow_queries"].samples[0].value == 16
