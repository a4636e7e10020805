"""The cutover readiness report: what the proxies would refuse once the shop is cut over.

The proxies record (``pgtenantproxy.cutover_conflicts``, written by
:mod:`pgtenantproxy.dispatch.conflicts`, kinds in docs/routing.md) every
transaction that wrote and touched several shops (``cross_shop``) or a shop
and a global table (``global``), and everything else that could not be placed
on the shop's database once it owns its rows (``unplaced``: reads with global
tables or other shops, statements that cannot run there, and, under shop
``-1``, statements that name no shop at all, listed for every shop), per shop,
by SQL fingerprint, with a count and one sample (constants stripped). After
the shop's cutover each of them gets a clear error instead: the report lists
them, and the cutover refuses a shop that has any unless forced.

Next to them, the foreign-key proofs (:mod:`.fk_proofs`): a foreign key between
two tenant tables through which a row references another shop's row is
listed with sample keys. It does not make a shop less ready (the cutover goes
ahead): it only means routing by key cannot follow that foreign key. With
``tenancy`` given, :func:`readiness` proves the foreign keys afresh (and
records the proofs); without, it reports the proofs last recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.lifecycle.keys import FkProof
from pgtenantproxy.migration.fk_proofs import foreign_key_proofs, proof_dict, proof_lines
from pgtenantproxy.routing.readiness import ANY_SHOP

_CONFLICTS = """
SELECT shop_id, kind, fingerprint, sample, count, first_seen, last_seen
FROM pgtenantproxy.cutover_conflicts
WHERE (shop_id = ANY($1::bigint[]) OR shop_id = -1)
  AND ($2::float8 IS NULL OR last_seen > clock_timestamp() - make_interval(secs => $2::float8))
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
    #: Every foreign key between tenant tables with its proof (the same for every shop; informative only).
    foreign_keys: list[FkProof] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.conflicts

    @property
    def cross_shop_foreign_keys(self) -> list[FkProof]:
        """The foreign keys routing cannot follow (a row references another shop's row)."""
        return [p for p in self.foreign_keys if not p.consistent]

    def foreign_key_lines(self) -> list[str]:
        """One line per foreign key (``... : 0 cross-shop references``, or the sample keys)."""
        return proof_lines(self.foreign_keys)

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "ready": self.ready,
                "transactions": sum(c.count for c in self.conflicts),
                "conflicts": [c.as_dict() for c in self.conflicts],
                "foreign_keys": [proof_dict(p) for p in self.foreign_keys]}


async def readiness(
    conn: asyncpg.Connection | asyncpg.Pool, shops: list[int], *, tenancy: TenancySection | None = None,
    window_s: float | None = None,
) -> dict[int, Readiness]:
    """Per shop, the recorded transactions that a cutover would break (last seen within ``window_s``
    seconds, or ever), and the foreign-key proofs (proved now when ``tenancy`` is given, else as last
    recorded)."""
    report = {shop: Readiness(shop) for shop in shops}
    for r in await conn.fetch(_CONFLICTS, shops, window_s):
        found = Conflict(r["kind"], r["fingerprint"], r["sample"], int(r["count"]), r["first_seen"],
                         r["last_seen"])
        shop = int(r["shop_id"])
        for one in report.values() if shop == ANY_SHOP else (report[shop],):
            one.conflicts.append(found)  # a statement that names no shop concerns every shop
    if shops:
        proofs = await foreign_key_proofs(conn, tenancy)
        for one in report.values():
            one.foreign_keys = proofs
    return report
