"""A proxy acknowledges a newer catalog epoch only once its writes decided under older ones have landed."""

from __future__ import annotations

from pgtenantproxy.dispatch.in_flight import MAX_S, InFlightWrites


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_hold_is_acknowledged_after_the_older_writes_landed() -> None:
    woken: list[bool] = []
    writes = InFlightWrites(lambda: woken.append(True), clock=Clock())
    writes.sent(7)
    writes.sent(7)
    assert writes.acknowledgeable(8) == 7  # writes decided before the hold are still on their way
    writes.landed(7)
    assert writes.acknowledgeable(8) == 7 and not woken
    writes.landed(7)
    assert woken == [True]  # the acknowledgement is not left for the next refresh
    assert writes.acknowledgeable(8) == 8
    writes.sent(8)
    assert writes.acknowledgeable(8) == 8  # writes of the newest epoch hold nothing back


def test_stale_entries_hold_nothing() -> None:
    clock = Clock()
    writes = InFlightWrites(lambda: None, clock=clock)
    writes.sent(2)
    clock.now += MAX_S + 1  # a session that ended with its answer owed
    assert writes.acknowledgeable(3) == 3
    writes.landed(2)  # a late completion of a dropped entry changes nothing
    assert writes.acknowledgeable(3) == 3
