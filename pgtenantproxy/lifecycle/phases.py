"""The per-shop migration phases and the transitions between them (pure; no I/O).

::

    unified -> provisioned -> backfilling -> backfilled -> mirroring -> reads_on_tenant
            -> tenant_primary -> retired

plus ``degraded`` (the shop's mirror failed: dead letters or an unreachable
tenant) and ``failed`` (a step failed), each with a reason and the phase it
interrupted (``resume_phase``). A shop that has no record is in ``unified``.

Invariants:

* :data:`TRANSITIONS` is the whole rule book: a move not listed is refused
  with a message that says what the shop needs first (:func:`check`).
* From ``degraded`` or ``failed`` a shop may go back to the phase it came from,
  or anywhere that phase could go (so a failed backfill can be re-run or
  abandoned, a degraded shop can recover or be rolled back).
* A shop may read from its tenant database only in :data:`ROUTABLE` phases
  (and, on top, only while its mirror is healthy and caught up: routing checks
  that itself). :data:`MIRRORED` phases are the ones whose tenant database
  receives the mirror's writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pgtenantproxy.lifecycle.errors import IllegalTransition

UNIFIED = "unified"
PROVISIONED = "provisioned"
BACKFILLING = "backfilling"
BACKFILLED = "backfilled"
MIRRORING = "mirroring"
READS_ON_TENANT = "reads_on_tenant"
TENANT_PRIMARY = "tenant_primary"
RETIRED = "retired"
DEGRADED = "degraded"
FAILED = "failed"

#: The main line, in order, then the two side states.
PHASES = (UNIFIED, PROVISIONED, BACKFILLING, BACKFILLED, MIRRORING, READS_ON_TENANT, TENANT_PRIMARY,
          RETIRED, DEGRADED, FAILED)
INTERRUPTED = frozenset({DEGRADED, FAILED})
ROUTABLE = frozenset({MIRRORING, READS_ON_TENANT, TENANT_PRIMARY, RETIRED})
MIRRORED = frozenset({BACKFILLED, MIRRORING, READS_ON_TENANT})
#: Phases whose writes (and so every read and transaction) go to the shop's own database.
OWN_DATABASE = frozenset({TENANT_PRIMARY, RETIRED})

TRANSITIONS: dict[str, frozenset[str]] = {
    UNIFIED: frozenset({PROVISIONED, FAILED}),
    PROVISIONED: frozenset({BACKFILLING, UNIFIED, FAILED}),
    BACKFILLING: frozenset({BACKFILLED, PROVISIONED, UNIFIED, FAILED}),
    BACKFILLED: frozenset({MIRRORING, PROVISIONED, UNIFIED, DEGRADED, FAILED}),
    MIRRORING: frozenset({READS_ON_TENANT, PROVISIONED, UNIFIED, DEGRADED, FAILED}),
    READS_ON_TENANT: frozenset({MIRRORING, TENANT_PRIMARY, DEGRADED, FAILED}),
    TENANT_PRIMARY: frozenset({READS_ON_TENANT, RETIRED, DEGRADED, FAILED}),
    RETIRED: frozenset({TENANT_PRIMARY, FAILED}),
    DEGRADED: frozenset(),  # see allowed(): back where it came from, or onwards from there
    FAILED: frozenset(),
}

#: What a shop needs before it can enter a phase (the refusal message's hint).
NEEDS: dict[str, str] = {
    PROVISIONED: "a shop is provisioned from unified (pgtenantproxy provision --shop N)",
    BACKFILLING: "backfill starts from provisioned, with write capture on (pgtenantproxy dual-write enable)",
    BACKFILLED: "a shop is backfilled by pgtenantproxy backfill",
    MIRRORING: "mirroring follows a completed backfill once the mirror has drained",
    READS_ON_TENANT: "tenant reads need the shop in mirroring (backfilled, its mirror drained and healthy)",
    TENANT_PRIMARY: "write cutover needs the shop's reads on its tenant database (reads_on_tenant)",
    RETIRED: "retirement needs the shop's writes on its tenant database (tenant_primary)",
    UNIFIED: "a shop goes back to unified only while its reads and writes are on unified",
}


@dataclass(frozen=True)
class ShopPhase:
    """A shop's recorded phase; ``version`` grows by one at every transition (the fence)."""

    shop_id: int
    phase: str = UNIFIED
    version: int = 0
    resume_phase: str | None = None
    reason: str | None = None
    changed_at: datetime | None = None
    actor: str | None = None
    #: Grows (across all shops) at every change of a phase or a fence: what proxies acknowledge.
    epoch: int = 0
    #: True while a cutover or rollback holds the shop's writes (until its deadline).
    holding: bool = False

    @property
    def routable(self) -> bool:
        return self.phase in ROUTABLE

    @property
    def effective(self) -> str:
        """The main-line phase: the interrupted one for ``degraded``/``failed``."""
        if self.phase in INTERRUPTED and self.resume_phase is not None:
            return self.resume_phase
        return self.phase


def allowed(current: ShopPhase) -> frozenset[str]:
    """Every phase ``current`` may move to."""
    if current.phase in INTERRUPTED:
        base = current.resume_phase or UNIFIED
        return (TRANSITIONS[base] | {base}) - {current.phase}
    return TRANSITIONS[current.phase]


def check(current: ShopPhase, target: str) -> None:
    """Raise :class:`IllegalTransition` (with what is needed) unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS:
        raise IllegalTransition(f"unknown phase {target!r}; phases: {', '.join(PHASES)}")
    if target in allowed(current):
        return
    where = current.phase
    if current.phase in INTERRUPTED:
        where = f"{current.phase} (from {current.resume_phase})"
    hint = NEEDS.get(target)
    raise IllegalTransition(
        f"shop {current.shop_id} is in phase {where}; it cannot move to {target}"
        + (f": {hint}" if hint else "")
    )


def next_record(current: ShopPhase, target: str, reason: str | None) -> tuple[str | None, str | None]:
    """``(resume_phase, reason)`` to store when ``current`` moves to ``target``."""
    if target in INTERRUPTED:
        resume = current.resume_phase if current.phase in INTERRUPTED else current.phase
        return resume, reason or target
    return None, reason


def require_tenant_reads(record: ShopPhase) -> None:
    """Refuse to send a shop's reads to its tenant database before it is mirrored (``reads activate``)."""
    if record.effective not in ROUTABLE:
        raise IllegalTransition(
            f"shop {record.shop_id} is in phase {record.phase}; it cannot read from its tenant database: "
            f"{NEEDS[READS_ON_TENANT]}"
        )
