"""What a backfill run reports: one :class:`ShopResult` per shop, gathered in a :class:`BackfillReport`.

Outcomes: ``backfilled`` (copied; the mirror catches up next), ``mirroring``
(copied, and the mirror drained what changed meanwhile), ``done_already``
(nothing to do), ``refused`` (nothing was changed: capture off, wrong phase,
another run in progress) and ``failed`` (the shop was moved to ``failed``; a
re-run resumes). The report is JSON-ready for the admin API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

BACKFILLED = "backfilled"
MIRRORING = "mirroring"
DONE_ALREADY = "done_already"
REFUSED = "refused"
FAILED = "failed"
OK = frozenset({BACKFILLED, MIRRORING, DONE_ALREADY})


@dataclass
class ShopResult:
    shop_id: int
    status: str
    rows: int = 0
    bytes: int = 0
    tables: int = 0
    seconds: float = 0.0
    detail: str | None = None
    drained: bool | None = None  # None: not waited for

    @property
    def ok(self) -> bool:
        return self.status in OK

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {"shop_id": self.shop_id, "status": self.status, "ok": self.ok, "rows": self.rows,
                "bytes": self.bytes, "tables": self.tables, "seconds": self.seconds,
                "rows_per_s": round(self.rows_per_s, 1), "drained": self.drained, "detail": self.detail}


@dataclass
class BackfillReport:
    shops: list[ShopResult] = field(default_factory=list)
    seconds: float = 0.0
    throttle_rows_per_s: int = 0
    throttled_s: float = 0.0  # time spent waiting for the throttle, summed over shops

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.shops)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shops)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shops)

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.shops:
            counts[s.status] = counts.get(s.status, 0) + 1
        return counts

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok, "seconds": self.seconds, "rows": self.rows, "bytes": self.bytes,
            "rows_per_s": round(self.rows / self.seconds, 1) if self.seconds > 0 else 0.0,
            "throttle_rows_per_s": self.throttle_rows_per_s, "throttled_s": round(self.throttled_s, 3),
            "by_status": self.by_status(), "shops": [s.as_dict() for s in self.shops],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict())
