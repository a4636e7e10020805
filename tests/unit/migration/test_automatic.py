"""The keeper's automatic moves, decided from a shop's phase, its mirror and the strategy."""

from __future__ import annotations

from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.migration.automatic import MirrorFacts, automatic_move

HEALTHY = MirrorFacts(caught_up=True, degraded=False)
LAGGING = MirrorFacts(caught_up=False, degraded=False)
BROKEN = MirrorFacts(caught_up=False, degraded=True, degraded_reason="dead_letters: 2 entries")


def at(phase: str, resume: str | None = None) -> ph.ShopPhase:
    return ph.ShopPhase(3, phase, 5, resume_phase=resume)


def test_backfilled_moves_to_mirroring_once_caught_up() -> None:
    assert automatic_move(at(ph.BACKFILLED), LAGGING, selected=True) is None
    assert automatic_move(at(ph.BACKFILLED), HEALTHY, selected=False) == (
        ph.MIRRORING, "mirror caught up after the backfill")


def test_strategy_selection_moves_between_mirroring_and_reads_on_tenant() -> None:
    assert automatic_move(at(ph.MIRRORING), HEALTHY, selected=False) is None
    assert automatic_move(at(ph.MIRRORING), HEALTHY, selected=True)[0] == ph.READS_ON_TENANT  # type: ignore[index]
    assert automatic_move(at(ph.READS_ON_TENANT), LAGGING, selected=True) is None
    assert automatic_move(at(ph.READS_ON_TENANT), HEALTHY, selected=False)[0] == ph.MIRRORING  # type: ignore[index]


def test_a_degraded_mirror_degrades_the_shop_and_recovery_restores_it() -> None:
    move = automatic_move(at(ph.READS_ON_TENANT), BROKEN, selected=True)
    assert move == (ph.DEGRADED, "mirror degraded: dead_letters: 2 entries")
    assert automatic_move(at(ph.DEGRADED, ph.READS_ON_TENANT), BROKEN, selected=True) is None
    assert automatic_move(at(ph.DEGRADED, ph.READS_ON_TENANT), LAGGING, selected=True) == (
        ph.READS_ON_TENANT, "mirror healthy again")


def test_phases_outside_the_mirrored_span_are_left_alone() -> None:
    for phase in (ph.UNIFIED, ph.PROVISIONED, ph.BACKFILLING, ph.TENANT_PRIMARY, ph.RETIRED):
        for facts in (HEALTHY, BROKEN):
            assert automatic_move(at(phase), facts, selected=True) is None
    assert automatic_move(at(ph.FAILED, ph.BACKFILLING), HEALTHY, selected=True) is None
