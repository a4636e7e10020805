"""What a cutover (or a rollback's reverse fence) did, per shop: outcome, write pause, step timings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Outcomes.
DONE = "done"  # the shop moved
ALREADY = "done_already"
REFUSED = "refused"  # a precondition failed; nothing was touched
ABORTED = "aborted"  # the fence was up and came down again: nothing changed, nothing lost
FAILED = "failed"  # an error outside the fence (e.g. reverse capture could not be installed)


@dataclass
class FenceResult:
    shop_id: int
    status: str
    phase: str | None = None
    #: How long the shop's writes were held (the hold's start to its release), seconds.
    pause_s: float | None = None
    steps_ms: dict[str, float] = field(default_factory=dict)
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in (DONE, ALREADY)

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "status": self.status, "ok": self.ok, "phase": self.phase,
                "pause_ms": None if self.pause_s is None else round(self.pause_s * 1000, 1),
                "steps_ms": {k: round(v, 1) for k, v in self.steps_ms.items()}, "detail": self.detail,
                **self.extra}


@dataclass
class FenceReport:
    action: str  # cutover | rollback
    shops: list[FenceResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.shops)

    def pauses_ms(self) -> list[float]:
        return sorted(s.pause_s * 1000 for s in self.shops if s.pause_s is not None and s.status == DONE)

    def as_dict(self) -> dict[str, Any]:
        pauses = self.pauses_ms()
        return {"action": self.action, "ok": self.ok,
                "pause_ms": {"p50": _pct(pauses, 0.5), "p99": _pct(pauses, 0.99),
                             "max": pauses[-1] if pauses else None},
                "shops": [s.as_dict() for s in self.shops]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)
