"""The state machine's rule book: every allowed move, refusals with what is needed, side states."""

from __future__ import annotations

import pytest

from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import IllegalTransition

MAIN_LINE = [ph.UNIFIED, ph.PROVISIONED, ph.BACKFILLING, ph.BACKFILLED, ph.MIRRORING, ph.READS_ON_TENANT,
             ph.TENANT_PRIMARY, ph.RETIRED]


def at(phase: str, resume: str | None = None) -> ph.ShopPhase:
    return ph.ShopPhase(7, phase, 3, resume_phase=resume)


@pytest.mark.parametrize("step", range(len(MAIN_LINE) - 1))
def test_the_main_line_moves_one_step_at_a_time(step: int) -> None:
    ph.check(at(MAIN_LINE[step]), MAIN_LINE[step + 1])


@pytest.mark.parametrize("step", range(len(MAIN_LINE) - 2))
def test_skipping_a_phase_is_refused(step: int) -> None:
    with pytest.raises(IllegalTransition, match=f"shop 7 is in phase {MAIN_LINE[step]}"):
        ph.check(at(MAIN_LINE[step]), MAIN_LINE[step + 2])


def test_backfill_before_provisioning_says_what_is_needed() -> None:
    with pytest.raises(IllegalTransition, match="backfill starts from provisioned, with write capture on"):
        ph.check(at(ph.UNIFIED), ph.BACKFILLING)


def test_reads_before_mirroring_are_refused() -> None:
    for phase in (ph.PROVISIONED, ph.BACKFILLING, ph.BACKFILLED):
        with pytest.raises(IllegalTransition, match="tenant reads need the shop in mirroring"):
            ph.check(at(phase), ph.READS_ON_TENANT)
        with pytest.raises(IllegalTransition, match="cannot read from its tenant database"):
            ph.require_tenant_reads(at(phase))
    ph.require_tenant_reads(at(ph.MIRRORING))
    ph.require_tenant_reads(at(ph.DEGRADED, ph.READS_ON_TENANT))


def test_a_phase_cannot_move_to_itself() -> None:
    for phase in MAIN_LINE:
        with pytest.raises(IllegalTransition):
            ph.check(at(phase), phase)


def test_unknown_phase_is_named() -> None:
    with pytest.raises(IllegalTransition, match="unknown phase 'done'"):
        ph.check(at(ph.UNIFIED), "done")


def test_degraded_goes_back_where_it_came_from_or_onwards_from_there() -> None:
    degraded = at(ph.DEGRADED, ph.MIRRORING)
    ph.check(degraded, ph.MIRRORING)
    ph.check(degraded, ph.READS_ON_TENANT)
    ph.check(degraded, ph.PROVISIONED)
    with pytest.raises(IllegalTransition, match=r"degraded \(from mirroring\)"):
        ph.check(degraded, ph.TENANT_PRIMARY)
    with pytest.raises(IllegalTransition):
        ph.check(degraded, ph.DEGRADED)


def test_a_failed_backfill_can_be_rerun_or_abandoned() -> None:
    failed = at(ph.FAILED, ph.BACKFILLING)
    ph.check(failed, ph.BACKFILLING)
    ph.check(failed, ph.PROVISIONED)
    ph.check(failed, ph.BACKFILLED)
    with pytest.raises(IllegalTransition):
        ph.check(failed, ph.MIRRORING)


def test_entering_a_side_state_remembers_the_phase_it_interrupted() -> None:
    assert ph.next_record(at(ph.MIRRORING), ph.DEGRADED, "dead letters") == (ph.MIRRORING, "dead letters")
    assert ph.next_record(at(ph.DEGRADED, ph.MIRRORING), ph.FAILED, None) == (ph.MIRRORING, ph.FAILED)
    assert ph.next_record(at(ph.DEGRADED, ph.MIRRORING), ph.MIRRORING, "ok") == (None, "ok")


def test_only_mirrored_phases_route_reads() -> None:
    routable = {p for p in ph.PHASES if at(p).routable}
    assert routable == {ph.MIRRORING, ph.READS_ON_TENANT, ph.TENANT_PRIMARY, ph.RETIRED}
    assert at(ph.DEGRADED, ph.MIRRORING).effective == ph.MIRRORING


def test_every_phase_has_rules_and_every_target_is_a_phase() -> None:
    assert set(ph.TRANSITIONS) == set(ph.PHASES)
    for targets in ph.TRANSITIONS.values():
        assert targets <= set(ph.PHASES)
