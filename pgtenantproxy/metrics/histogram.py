"""A latency histogram cheap enough for the data path, exported as a Prometheus histogram.

Recording a query is a ``bisect`` and two additions on plain Python objects
(no lock, no label lookup): the proxy records on its event loop, and the
exporter reads on the same loop, so nothing races. The buckets are fixed,
the same everywhere, so ``histogram_quantile`` can aggregate across proxy
instances.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Upper bounds (seconds) of the latency buckets: 100 µs to 10 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def le_label(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Hist:
    """Per-bucket counts (not cumulative; the last slot is +Inf) and the sum of observations."""

    __slots__ = ("counts", "labels", "total")

    def __init__(self, labels: tuple[str, ...] = ()) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.labels = labels

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Hist) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, cumulative count)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append((le_label(bound), float(running)))
        return out


def merged(hists: Iterable[Hist], labels: tuple[str, ...] = ()) -> Hist:
    out = Hist(labels)
    for h in hists:
        out.merge(h)
    return out
