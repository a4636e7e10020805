"""The PerformanceMonitor: percentiles against a brute-force computation, per-shop statistics, alerts."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.config import MetricsSection
from pgtenantproxy.metrics.alerting import AlertChecker, AlertEvent
from pgtenantproxy.metrics.monitor import Comparison, PerformanceMonitor, Sample, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def brute_percentile(values: Sequence[float], q: float) -> float:
    """The smallest sample with at least q*n samples at or below it (nearest rank), by counting."""
    n = len(values)
    for candidate in sorted(set(values)):
        if sum(1 for v in values if v <= candidate) >= q * n:
            return candidate
    raise AssertionError("unreachable")


@given(
    st.lists(st.floats(min_value=0.0, max_value=30.0, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.01, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
@settings(max_examples=200, deadline=None)
def test_percentile_matches_brute_force(values: list[float], q: float) -> None:
    assert percentile(sorted(values), q) == brute_percentile(values, q)


def _samples(n: int, seed: int, clock: Clock) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clock.now += 0.01
        out.append(Sample(
            clock.now, rng.choice([1, 2, 3, None]), rng.choice(["unified", "tenant"]),
            rng.choice(["select", "insert", "other"]), rng.choice(["repairs", "customers", "global"]),
            rng.expovariate(1 / 0.004) if rng.random() > 0.02 else rng.uniform(1.0, 3.0),
            rng.choice(["ok"] * 18 + ["error", "fallback"]),
        ))
    return out


def test_shop_stats_match_brute_force_on_the_same_samples() -> None:
    clock = Clock()
    monitor = PerformanceMonitor(retention=10000, slow_ms=1000, clock=clock)
    samples = _samples(5000, 7, clock)
    for s in samples:
        monitor.add(s)
    for shop in (1, 2, 3):
        mine = [s for s in samples if s.shop_id == shop]
        stats = monitor.shop_stats(shop)
        durations = [s.seconds for s in mine]
        assert stats.overall.total == len(mine)
        overall = stats.overall
        for q, got in ((0.5, overall.p50_ms), (0.95, overall.p95_ms), (0.99, overall.p99_ms)):
            assert got == brute_percentile(durations, q) * 1000
        assert abs(stats.overall.avg_ms - sum(durations) / len(durations) * 1000) < 1e-9
        assert stats.overall.errors == sum(1 for s in mine if s.outcome == "error")
        assert stats.overall.slow == sum(1 for d in durations if d >= 1.0)
        span = clock.now - samples[0].at
        assert abs(stats.qps - len(mine) / span) < 1e-9
        for table, group in stats.by_table.items():
            rows = [s.seconds for s in mine if s.table == table]
            assert group.total == len(rows)
            assert group.p95_ms == brute_percentile(rows, 0.95) * 1000
        for kind, group in stats.by_type.items():
            assert group.total == sum(1 for s in mine if s.kind == kind)
        tenant = [s.seconds for s in mine if s.source == "tenant"]
        assert stats.comparison is not None
        assert stats.comparison.tenant_p50_ms == brute_percentile(tenant, 0.5) * 1000
    per_source = monitor.source_percentiles()
    for source in ("unified", "tenant"):
        values = [s.seconds for s in samples if s.source == source]
        assert per_source[source] == {q: brute_percentile(values, q) for q in (0.5, 0.95, 0.99)}


def test_the_window_is_bounded_and_keeps_the_newest() -> None:
    clock = Clock()
    monitor = PerformanceMonitor(retention=100, clock=clock)
    samples = _samples(250, 3, clock)
    for s in samples:
        monitor.add(s)
    assert monitor.samples() == samples[-100:]
    monitor.resize(40)
    assert monitor.samples() == samples[-40:]
    monitor.resize(60)
    assert monitor.samples() == samples[-40:] and monitor.window.maxlen == 60
    assert monitor.report()["window"]["samples"] == 40


def test_comparison_says_whether_tenant_p50_is_40_percent_lower() -> None:
    assert Comparison.of([0.010] * 10, [0.005] * 10).target_met is True
    assert Comparison.of([0.010] * 10, [0.0061] * 10).target_met is False
    undecided = Comparison.of([0.010] * 10, [0.005] * 2)
    assert undecided.target_met is None and undecided.tenant_p50_ms == 5.0


def test_alert_hook_fires_on_crossing_and_on_clearing_only() -> None:
    clock = Clock()
    monitor = PerformanceMonitor(retention=1000, clock=clock)
    section = MetricsSection(alert_p99_ms=100, alert_error_rate=0.2, alert_min_queries=10)
    seen: list[AlertEvent] = []
    checker = AlertChecker.from_config(section)
    checker.hooks.append(seen.append)
    for _ in range(20):
        monitor.add(Sample(clock(), 5, "tenant", "select", "repairs", 0.5, "ok"))
        monitor.add(Sample(clock(), 6, "unified", "select", "repairs", 0.001, "ok"))
        monitor.add(Sample(clock(), 7, "unified", "select", "repairs", 0.001, "error"))
    monitor.add(Sample(clock(), 8, "unified", "select", "repairs", 9.0, "error"))  # too few queries
    checker.check(monitor)
    assert {(e.shop_id, e.kind, e.firing) for e in seen} == {(5, "p99", True), (7, "error_rate", True)}
    seen.clear()
    checker.check(monitor)
    assert seen == []  # still firing: no new event
    monitor.clear()
    for _ in range(20):
        monitor.add(Sample(clock(), 5, "tenant", "select", "repairs", 0.001, "ok"))
    checker.check(monitor)
    assert {(e.shop_id, e.kind, e.firing) for e in seen} == {(5, "p99", False), (7, "error_rate", False)}
    assert checker.fired == {"p99": 1, "error_rate": 1}
