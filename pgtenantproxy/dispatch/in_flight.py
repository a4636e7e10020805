"""Writes sent to unified and not completed yet, by the catalog epoch they were decided under.

A cutover holds a shop's writes in every proxy, waits until every proxy has
acknowledged the hold (its catalog's heartbeat of the newest epoch seen), then
takes the shop's write fence on unified; a write queued at that fence later is
cancelled (its transaction began before the cutover). A write the proxy
decided under the previous epoch and sent just before acknowledging could
still be on its way there. So a proxy acknowledges a newer epoch only once
its writes of older epochs have completed (:meth:`InFlightWrites.acknowledgeable`),
and asks for an acknowledgement at once when the last of them lands (``wake``).

Bounded: an epoch whose latest write was sent more than :data:`MAX_S` ago no
longer holds anything back (a session that ended with its answer owed, or a
long statement: the fence's own rules apply to it). Not thread-safe: the
event loop's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

MAX_S = 5.0


class InFlightWrites:
    def __init__(self, wake: Callable[[], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._wake = wake
        self._clock = clock
        self._count: Counter[int] = Counter()
        self._latest: dict[int, float] = {}
        self._held = False

    def sent(self, epoch: int) -> None:
        self._count[epoch] += 1
        self._latest[epoch] = self._clock()

    def landed(self, epoch: int) -> None:
        left = self._count.get(epoch, 0) - 1
        if left > 0:
            self._count[epoch] = left
            return
        self._count.pop(epoch, None)
        self._latest.pop(epoch, None)
        if self._held:
            self._held = False
            self._wake()  # acknowledge now, not at the next refresh

    def acknowledgeable(self, epoch: int) -> int:
        """The newest epoch to acknowledge when ``epoch`` is the newest seen."""
        now = self._clock()
        for stale in [e for e, at in self._latest.items() if now - at > MAX_S]:
            self._count.pop(stale, None)
            self._latest.pop(stale, None)
        older = [e for e in self._count if e < epoch]
        self._held = bool(older)
        return min(older) if older else epoch
