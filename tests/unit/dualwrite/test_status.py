"""Read-your-writes, lag and degraded answers of the status book (no database: snapshots by hand)."""

from __future__ import annotations

import math

from pgtenantproxy.dualwrite.status import ShopPending, Snapshot, StatusBook, WriteMarker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book(clock: Clock) -> StatusBook:
    return StatusBook(max_lag_ms=1000, stale_after_s=2.0, clock=clock)


def snap(started: float, last_id: int, pending: dict[int, ShopPending] | None = None,
         degraded: frozenset[int] = frozenset()) -> Snapshot:
    return Snapshot(started, started + 0.01, last_id, pending or {}, degraded)


def test_a_write_is_applied_once_no_entry_up_to_the_next_polls_sequence_value_is_pending() -> None:
    clock = Clock()
    b = book(clock)
    b.record(snap(99.0, 40, {7: ShopPending(38, 50.0)}))
    marker = b.write_marker(7)  # at 100.0: the write's entries have ids <= whatever the next poll reads
    assert not b.applied(7, marker)  # no poll has started since the write
    clock.now = 100.2
    b.record(snap(100.1, 45, {7: ShopPending(38, 250.0)}))
    assert not b.applied(7, marker)  # 38..45 may hold the write
    clock.now = 100.4
    b.record(snap(100.3, 60, {7: ShopPending(46, 10.0)}))
    assert b.applied(7, marker)  # only entries drawn after the write's poll (> 45) are left
    assert not b.applied(7, b.write_marker(7))  # a newer write waits for the next poll


def test_later_writes_do_not_hold_back_an_earlier_marker() -> None:
    clock = Clock()
    b = book(clock)
    marker = b.write_marker(3)
    b.record(snap(100.0, 10, {3: ShopPending(9, 5.0)}))
    for i in range(1, 20):  # the shop keeps being written to: something is always pending
        clock.now = 100.0 + i / 10
        b.record(snap(clock.now, 10 + 5 * i, {3: ShopPending(10 + 5 * i - 1, 5.0)}))
    assert b.applied(3, marker)


def test_an_entry_that_commits_late_with_a_low_id_still_counts() -> None:
    clock = Clock()
    b = book(clock)
    marker = b.write_marker(5)
    b.record(snap(100.0, 30))  # nothing pending yet: id 25 was drawn but its transaction had not committed
    clock.now = 100.1
    b.record(snap(100.1, 31, {5: ShopPending(25, 80.0)}))
    assert not b.applied(5, marker)  # the bound of the marker's poll (30) covers id 25
    clock.now = 100.2
    b.record(snap(100.2, 31))
    assert b.applied(5, marker)


def test_lag_ages_between_polls_and_is_zero_without_pending_entries() -> None:
    clock = Clock()
    b = book(clock)
    b.record(Snapshot(99.9, 100.0, 10, {1: ShopPending(3, 400.0)}))
    clock.now = 100.5
    assert b.lag_ms(1) == 900.0
    assert b.lag_ms(2) == 0.0
    assert b.caught_up(1) and not b.caught_up(1, max_lag_ms=500)
    assert b.queue_size(1) == 1 and b.queue_size(2) == 0  # counted every few polls


def test_degraded_shops_are_never_readable_and_never_applied() -> None:
    clock = Clock()
    b = book(clock)
    marker = b.write_marker(4)
    b.record(snap(100.0, 10, degraded=frozenset({4})))
    assert b.degraded(4) and not b.degraded(5)
    assert not b.applied(4, marker) and not b.caught_up(4) and not b.readable(4)
    assert b.readable(5)


def test_a_stale_status_sends_everything_to_unified() -> None:
    clock = Clock()
    b = book(clock)
    marker = b.write_marker(1)
    b.record(snap(100.0, 10))
    assert b.readable(1, marker)
    clock.now = 103.0
    assert math.isinf(b.lag_ms(1))
    assert not b.readable(1) and not b.applied(1, marker)


def test_nothing_is_readable_before_the_first_poll_and_old_polls_are_ignored() -> None:
    clock = Clock()
    b = book(clock)
    assert not b.readable(1)
    assert b.record(snap(100.0, 10))
    assert not b.record(snap(99.0, 5))  # finished after a poll that started later
    assert b.applied(1, WriteMarker(1, 99.5))
