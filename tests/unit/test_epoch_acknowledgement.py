"""A proxy acknowledges a newer catalog epoch only once its writes decided under older ones have landed."""

from __future__ import annotations

from pgtenantproxy.config import TenancySection
from pgtenantproxy.dispatch import dispatcher as d
from pgtenantproxy.dispatch.catalog import TenantCatalog
from pgtenantproxy.session.decision import ToUnified


class _Catalog(TenantCatalog):
    woken = 0

    def wake(self) -> None:
        self.woken += 1


def _dispatcher() -> d.Dispatcher:
    disp = d.Dispatcher.__new__(d.Dispatcher)
    disp.catalog = _Catalog(TenancySection())
    disp._in_flight = d.Counter()
    disp._in_flight_since = {}
    disp._ack_held = False
    disp.stats = d.RoutingStats()
    return disp


def test_the_hold_is_acknowledged_after_the_older_writes_landed(monkeypatch: object) -> None:
    disp = _dispatcher()
    write = ToUnified(5, "no_shop", kind="update", epoch=7)
    disp.acted(write)
    assert disp.acknowledgeable(8) == 7  # a write decided before the hold is still on its way
    disp._landed(7)
    assert disp.catalog.woken == 1  # the acknowledgement is not left for the next refresh
    assert disp.acknowledgeable(8) == 8


def test_untracked_decisions_and_stale_entries_hold_nothing() -> None:
    disp = _dispatcher()
    disp.acted(ToUnified(5, "no_shop"))  # epoch 0: reads, or no shop being moved
    assert disp.acknowledgeable(3) == 3
    disp.acted(ToUnified(5, "no_shop", epoch=2))
    disp._in_flight_since[2] -= d.IN_FLIGHT_MAX_S + 1  # a session that ended with its answer owed
    assert disp.acknowledgeable(3) == 3
    disp._landed(2)  # a late completion of a dropped entry changes nothing
    assert disp.acknowledgeable(3) == 3
