"""The per-shop latency series, with a bounded number of shop labels.

A shop gets its own series (a pair of histograms: unified, tenant) only
while it holds one of ``limit`` slots; every other shop's queries go to the
``shop="other"`` pair. Slots are handed out by :meth:`ShopSeries.rebalance`
(at each scrape): first to the *priority* shops (those of the shop-list and
canary strategies and the per-shop activations, the ones operators watch),
then to the busiest shops since the last rebalance. A shop keeps its slot
once it has one, unless a priority shop needs it (then the non-priority
shop with the fewest queries recorded gives it up, and its series
disappears).

So every exported series only ever grows: "other" accumulates what it saw
while a shop had no slot, and a shop's own series starts when it gets one.
No counter of the exposition ever goes down, and there are never more than
``limit + 1`` shop label values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pgtenantproxy.metrics.histogram import Hist

OTHER = "other"


class ShopSeries:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: shop -> (unified, tenant) histograms of the shops that hold a slot.
        self.series: dict[int, tuple[Hist, Hist]] = {}
        self.other = (Hist((OTHER, "unified")), Hist((OTHER, "tenant")))
        #: Queries per shop without a slot, since the last rebalance.
        self.busy: Counter[int] = Counter()

    def hist(self, shop_id: int, tenant: bool) -> Hist:
        """The histogram a query of ``shop_id`` is recorded in (the recorder inlines this)."""
        pair = self.series.get(shop_id)
        if pair is None:
            self.busy[shop_id] += 1
            return self.other[tenant]
        return pair[tenant]

    def rebalance(self, priority: Iterable[int] = ()) -> None:
        """Give slots to the priority shops first, then to the busiest ones."""
        wanted = sorted(set(priority))[: self.limit]
        wanted_set = set(wanted)
        for shop in wanted:
            if shop in self.series:
                continue
            if len(self.series) >= self.limit:
                self._evict(keep=wanted_set)
            self._give(shop)
        for shop, _ in self.busy.most_common():
            if len(self.series) >= self.limit:
                break
            if shop not in self.series:
                self._give(shop)
        self.busy.clear()

    def resize(self, limit: int) -> None:
        self.limit = limit
        while len(self.series) > limit:
            self._evict(keep=set())

    def _give(self, shop: int) -> None:
        label = str(shop)
        self.series[shop] = (Hist((label, "unified")), Hist((label, "tenant")))

    def _evict(self, *, keep: set[int]) -> None:
        candidates = [s for s in self.series if s not in keep]
        if not candidates:
            candidates = list(self.series)
        victim = min(candidates, key=lambda s: (self.series[s][0].count + self.series[s][1].count, s))
        del self.series[victim]

    def exported(self) -> list[Hist]:
        """Every histogram to export, shops first, then "other"."""
        out = [h for shop in sorted(self.series) for h in self.series[shop]]
        out.extend(self.other)
        return out
