"""Recording one completed unit: the only metrics code on the data path.

:meth:`QueryRecorder.record` is called by the dispatcher once per unit, when
its ReadyForQuery reached the proxy. It costs a dict lookup, a ``bisect``,
a few additions and one ``deque.append`` of a tuple (measured by
``bench/metrics_bench.py``); everything else (percentiles, label
selection, exposition) happens when somebody asks.

Labels are bounded by construction:

* ``source`` (unified|tenant), ``type`` (select|insert|update|delete|other),
  ``outcome`` (ok|error|fallback);
* ``table``: a tenant table's name (unqualified, from the routing catalog),
  ``global`` for any other table, ``none`` when the unit names none, and
  ``other`` past :data:`MAX_TABLE_LABELS` distinct names;
* ``shop`` (per-shop histogram): see :mod:`.shops`.

A unit slower than ``slow_query_threshold_ms`` is logged with its SQL
fingerprint (constants removed by libpg_query: never a value), its shop,
source, type and table, at most :data:`SLOW_LOGS_PER_SECOND` lines a
second (the rest are counted and summarised).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from pgtenantproxy.config import MetricsSection
from pgtenantproxy.metrics.histogram import LATENCY_BUCKETS, Hist
from pgtenantproxy.metrics.monitor import PerformanceMonitor
from pgtenantproxy.metrics.shops import ShopSeries
from pgtenantproxy.session.decision import Decision

logger = logging.getLogger(__name__)

MAX_TABLE_LABELS = 200
MAX_RAW_KEYS = 4096
SLOW_LOGS_PER_SECOND = 10

Fingerprinter = Callable[[Any, Any], str]  # (unit, session facts) -> fingerprint text


class QueryRecorder:
    def __init__(
        self,
        section: MetricsSection,
        *,
        tenant_tables: Callable[[], frozenset[str]] = frozenset,
        fingerprint: Fingerprinter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.monitor = PerformanceMonitor(
            retention=section.retention, slow_ms=section.slow_query_threshold_ms, clock=clock
        )
        self.shops = ShopSeries(section.max_shop_series)
        #: (source, type, outcome, table label) -> histogram; what is exported.
        self.by_labels: dict[tuple[str, str, str, str], Hist] = {}
        #: (target, kind, outcome, raw table) -> the same histogram objects; the data path's lookup.
        self._raw: dict[tuple[str, str, str, str], Hist] = {}
        self.slow_s = section.slow_query_threshold_ms / 1000
        self.slow_total = 0
        self.tenant_tables = tenant_tables
        self.fingerprint = fingerprint
        self._clock = clock
        self._known_tables: frozenset[str] | None = None
        self._short: frozenset[str] = frozenset()
        self._table_labels: set[str] = set()
        self._slow_second = 0
        self._slow_logged = 0
        self._slow_unlogged = 0

    def configure(self, section: MetricsSection) -> None:
        """Apply a reloaded ``[metrics]`` section (the restart-only keys are left alone)."""
        self.slow_s = section.slow_query_threshold_ms / 1000
        self.monitor.slow_s = self.slow_s
        self.monitor.resize(section.retention)
        self.shops.resize(section.max_shop_series)

    # --- the data path -----------------------------------------------------------------
    def record(self, unit: Any, facts: Any, decision: Decision, outcome: str, seconds: float) -> None:
        target = decision.target
        key = (target, decision.kind, outcome, decision.table)
        hist = self._raw.get(key)
        if hist is None:
            hist = self._hist_for(key)
        i = bisect_left(LATENCY_BUCKETS, seconds)
        hist.counts[i] += 1
        hist.total += seconds
        shop = decision.shop_id
        if shop is not None:  # ShopSeries.hist, inlined: this runs for every unit
            shops = self.shops
            pair = shops.series.get(shop)
            if pair is None:
                shops.busy[shop] += 1
                pair = shops.other
            per_shop = pair[target == "tenant"]
            per_shop.counts[i] += 1
            per_shop.total += seconds
        table = hist.labels[3]
        # A plain tuple in Sample's field order (the NamedTuple costs more to build; the monitor wraps them).
        self.monitor.window.append((self._clock(), shop, target, key[1], table, seconds, outcome))
        if seconds >= self.slow_s:
            self._slow(unit, facts, decision, outcome, seconds, table)

    # --- the slow paths ----------------------------------------------------------------
    def _hist_for(self, key: tuple[str, str, str, str]) -> Hist:
        target, kind, outcome, raw = key
        labels = (target, kind, outcome, self.table_label(raw))
        hist = self.by_labels.get(labels)
        if hist is None:
            hist = self.by_labels[labels] = Hist(labels)
        if len(self._raw) < MAX_RAW_KEYS:
            self._raw[key] = hist
        return hist

    def refresh_tables(self) -> None:
        """Follow the catalog's tenant tables (called at each scrape, and before the first label)."""
        known = self.tenant_tables()
        if known != self._known_tables:
            self._known_tables = known
            self._short = frozenset(t.rpartition(".")[2] for t in known)
            self._raw.clear()  # raw names may map to other labels now

    def table_label(self, raw: str) -> str:
        if not raw:
            return "none"
        if self._known_tables is None:
            self.refresh_tables()
        short = raw.rpartition(".")[2]
        if short not in self._short:
            return "global"
        if short not in self._table_labels:
            if len(self._table_labels) >= MAX_TABLE_LABELS:
                return "other"
            self._table_labels.add(short)
        return short

    def _slow(
        self, unit: Any, facts: Any, decision: Decision, outcome: str, seconds: float, table: str
    ) -> None:
        self.slow_total += 1
        second = int(self._clock())
        if second != self._slow_second:
            if self._slow_unlogged:
                logger.warning("%d more slow queries in the last second were not logged", self._slow_unlogged)
            self._slow_second, self._slow_logged, self._slow_unlogged = second, 0, 0
        if self._slow_logged >= SLOW_LOGS_PER_SECOND:
            self._slow_unlogged += 1
            return
        self._slow_logged += 1
        fingerprint = "?"
        if self.fingerprint is not None:
            try:
                fingerprint = self.fingerprint(unit, facts)
            except Exception:
                logger.debug("fingerprinting a slow query failed", exc_info=True)
        logger.warning(
            "slow query: %.1f ms on %s, shop %s, %s on %s, outcome %s, fingerprint %s",
            seconds * 1000, decision.target, decision.shop_id, decision.kind, table, outcome, fingerprint,
        )
