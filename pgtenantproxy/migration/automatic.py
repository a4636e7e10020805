"""The phase moves nobody has to ask for (pure; the keeper applies them).

:func:`automatic_move` looks at one shop's phase and what the proxy knows
about its mirror and the read strategy, and says where it should go:

* ``backfilled -> mirroring`` once the mirror has caught up with what changed
  during the copy (lag under ``[dual_write] max_lag_ms``, not degraded);
* ``backfilled | mirroring | reads_on_tenant -> degraded`` while the mirror is
  degraded (dead letters, or the tenant unreachable), and back to the phase
  it interrupted once the mirror is healthy again;
* ``mirroring <-> reads_on_tenant`` as the strategy (with its per-shop
  overrides) selects the shop for tenant reads or stops selecting it. The
  phase records what the strategy decided; routing itself still checks the
  mirror on every read.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgtenantproxy.lifecycle import phases as ph


@dataclass(frozen=True)
class MirrorFacts:
    caught_up: bool
    degraded: bool
    degraded_reason: str | None = None


def automatic_move(record: ph.ShopPhase, mirror: MirrorFacts, *, selected: bool) -> tuple[str, str] | None:
    """``(target, reason)`` for ``record``, or None when it stays where it is."""
    phase = record.phase
    if phase in ph.MIRRORED and mirror.degraded:
        return ph.DEGRADED, f"mirror degraded: {mirror.degraded_reason or 'see dual-write status'}"
    if phase == ph.DEGRADED and not mirror.degraded and record.resume_phase in ph.MIRRORED:
        return record.resume_phase, "mirror healthy again"
    if phase == ph.BACKFILLED and mirror.caught_up:
        return ph.MIRRORING, "mirror caught up after the backfill"
    if phase == ph.MIRRORING and selected:
        return ph.READS_ON_TENANT, "the read strategy selects the shop"
    if phase == ph.READS_ON_TENANT and not selected:
        return ph.MIRRORING, "the read strategy no longer selects the shop"
    return None
