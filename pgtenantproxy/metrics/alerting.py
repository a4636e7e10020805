"""The monitor's alert hook: a shop whose P99 or error rate crosses a threshold.

Every ``alert_interval_ms`` the checker groups the monitor's window by shop
and, for each shop with at least ``alert_min_queries`` queries in it,
compares its P99 with ``alert_p99_ms`` and its error rate with
``alert_error_rate``. Hooks are called on *transitions* only: once when a
condition starts (``firing=True``) and once when it clears, not at every
check. The default hook logs; the proxy also counts firings as a metric
(``pgtenantproxy_monitor_alerts_total``). Prometheus alert rules
(``alerts/``) cover the fleet; this hook is the seed's in-process one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pgtenantproxy.config import MetricsSection
from pgtenantproxy.metrics.monitor import PerformanceMonitor, percentile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertEvent:
    shop_id: int
    kind: str  # "p99" | "error_rate"
    value: float  # milliseconds for p99, a ratio for error_rate
    threshold: float
    firing: bool


AlertHook = Callable[[AlertEvent], None]


def log_alert(event: AlertEvent) -> None:
    unit = " ms" if event.kind == "p99" else ""
    if event.firing:
        logger.warning("alert: shop %s %s %.3f%s is over %.3f%s",
                       event.shop_id, event.kind, event.value, unit, event.threshold, unit)
    else:
        logger.info("alert cleared: shop %s %s back to %.3f%s", event.shop_id, event.kind, event.value, unit)


@dataclass
class AlertChecker:
    p99_ms: float
    error_rate: float
    min_queries: int
    hooks: list[AlertHook] = field(default_factory=lambda: [log_alert])
    firing: set[tuple[int, str]] = field(default_factory=set)
    fired: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_config(cls, section: MetricsSection) -> AlertChecker:
        return cls(section.alert_p99_ms, section.alert_error_rate, section.alert_min_queries)

    def configure(self, section: MetricsSection) -> None:
        self.p99_ms = section.alert_p99_ms
        self.error_rate = section.alert_error_rate
        self.min_queries = section.alert_min_queries

    def check(self, monitor: PerformanceMonitor) -> list[AlertEvent]:
        """Evaluate every shop in the window; call the hooks for what changed and return it."""
        now: dict[tuple[int, str], AlertEvent] = {}
        values: dict[tuple[int, str], float] = {}
        for shop, (durations, errors) in monitor.shop_latencies().items():
            if len(durations) < self.min_queries:
                continue
            durations.sort()
            for kind, value, threshold in (
                ("p99", percentile(durations, 0.99) * 1000, self.p99_ms),
                ("error_rate", errors / len(durations), self.error_rate),
            ):
                values[(shop, kind)] = value
                if value > threshold:
                    now[(shop, kind)] = AlertEvent(shop, kind, value, threshold, True)
        events = [e for key, e in now.items() if key not in self.firing]
        for shop, kind in sorted(self.firing - now.keys()):
            threshold = self.p99_ms if kind == "p99" else self.error_rate
            events.append(AlertEvent(shop, kind, values.get((shop, kind), 0.0), threshold, False))
        self.firing = set(now)
        for event in events:
            if event.firing:
                self.fired[event.kind] += 1
            for hook in self.hooks:
                try:
                    hook(event)
                except Exception:
                    logger.exception("alert hook %r failed", hook)
        return events
