"""The cutover readiness report: transactions that could not stay atomic once the shop moves.

The proxies record (``pgtenantproxy.cutover_conflicts``, written by
:mod:`pgtenantproxy.dispatch.conflicts`) every transaction that wrote and
touched either several shops (``cross_shop``) or a shop and a global table
(``global``), per shop, by SQL fingerprint, with a count and one sample
(constants stripped). After the shop's cutover such a transaction would span
two databases, so it gets a clear error instead: the report lists them, and
the cutover refuses a shop that has any unless forced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

_CONFLICTS = """
SELECT shop_id, kind, fingerprint, sample, count, first_seen, last_seen
FROM pgtenantproxy.cutover_conflicts WHERE shop_id = ANY($1::bigint[])
ORDER BY shop_id, count DESC, fingerprint
"""


@dataclass(frozen=True)
class Conflict:
    kind: str  # global | cross_shop
    fingerprint: str
    sample: str
    count: int
    first_seen: datetime
    last_seen: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "sample": self.sample,
                "count": self.count, "first_seen": self.first_seen.isoformat(),
                "last_seen": self.last_seen.isoformat()}


@dataclass
class Readiness:
    shop_id: int
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "ready": self.ready,
                "transactions": sum(c.count for c in self.conflicts),
                "conflicts": [c.as_dict() for c in self.conflicts]}


async def readiness(conn: asyncpg.Connection | asyncpg.Pool, shops: list[int]) -> dict[int, Readiness]:
    """Per shop, the recorded transactions that a cutover would break."""
    report = {shop: Readiness(shop) for shop in shops}
    for r in await conn.fetch(_CONFLICTS, shops):
        report[int(r["shop_id"])].conflicts.append(Conflict(
            r["kind"], r["fingerprint"], r["sample"], int(r["count"]), r["first_seen"], r["last_seen"]))
    return report
