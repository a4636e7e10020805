"""The readiness report: what the proxies would refuse once the shop is cut over, and once it is retired.

The proxies record (``pgtenantproxy.cutover_conflicts``, written by
:mod:`pgtenantproxy.dispatch.conflicts`, kinds in docs/routing.md) every
transaction that wrote and touched several shops (``cross_shop``) or a shop
and a global table (``global``), and everything else that could not be placed
on the shop's database once it owns its rows (``unplaced``: reads with global
tables or other shops, statements that cannot run there, and, under shop
``-1``, statements that name no shop at all, listed for every shop), per shop,
by SQL fingerprint, with a count and one sample (constants stripped). After
the shop's cutover each of them gets a clear error instead: the report lists
them (``conflicts``), and the cutover refuses a shop that has any unless forced.

The proxies also record each statement they refused (0A000) that touched a
``tenant_primary`` or ``retired`` shop (kind ``refused``; shop ``-1`` when it
names no shop). Routing treats ``tenant_primary`` and ``retired`` shops alike,
so for a ``tenant_primary`` shop these are exactly the statements that would
still be refused once it is retired: the report lists them apart
(``refused``, filled for ``tenant_primary`` shops only). They never make a
shop less ready for cutover (:attr:`Readiness.ready` looks at ``conflicts``
only); they gate retirement (:mod:`.retire_gate`). Both gates count only what
was seen within ``[migration] readiness_window_s``, and both let ``--force``
go past, audited with :func:`forced_detail`.

Next to them, the foreign-key proofs (:mod:`.fk_proofs`): a foreign key between
two tenant tables through which a row references another shop's row is
listed with sample keys. It does not make a shop less ready (the cutover goes
ahead): it only means routing by key cannot follow that foreign key. With
``tenancy`` given, :func:`readiness` proves the foreign keys afresh (and
records the proofs); without, it reports the proofs last recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.keys import FkProof
from pgtenantproxy.migration.fk_proofs import foreign_key_proofs, proof_dict, proof_lines
from pgtenantproxy.routing.readiness import ANY_SHOP

#: The kind of a statement the proxies refused while it touched a cut-over shop: it gates retirement.
REFUSED = "refused"

_CONFLICTS = """
SELECT shop_id, kind, fingerprint, sample, count, first_seen, last_seen
FROM pgtenantproxy.cutover_conflicts
WHERE (shop_id = ANY($1::bigint[]) OR shop_id = -1)
  AND ($2::float8 IS NULL OR last_seen > clock_timestamp() - make_interval(secs => $2::float8))
ORDER BY shop_id, count DESC, fingerprint
"""
_CUT_OVER = """
SELECT shop_id FROM pgtenantproxy.shop_phases WHERE shop_id = ANY($1::bigint[]) AND phase = $2
"""
#: At most this many statements are named in an audit row (the report has them all).
_NAMED = 10


@dataclass(frozen=True)
class Conflict:
    kind: str  # global | cross_shop | unplaced | refused
    fingerprint: str
    sample: str
    count: int
    first_seen: datetime
    last_seen: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fingerprint": self.fingerprint, "sample": self.sample,
                "count": self.count, "first_seen": self.first_seen.isoformat(),
                "last_seen": self.last_seen.isoformat()}


def seen(statements: Sequence[Conflict]) -> int:
    """How many times the proxies saw these statements."""
    return sum(c.count for c in statements)


def tally(statements: Sequence[Conflict]) -> str:
    """``"3 kinds of statement (41 seen)"``."""
    kinds = len(statements)
    return f"{kinds} kind{'' if kinds == 1 else 's'} of statement ({seen(statements)} seen)"


def window_text(seconds: float) -> str:
    """``readiness_window_s`` for people: ``"24 h"``, ``"10 min"``, ``"45 s"``."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def forced_detail(statements: Sequence[Conflict], what: str) -> str:
    """The audit detail of a ``--force`` past ``statements`` (``what``: why they matter), naming the first
    :data:`_NAMED` fingerprints with their counts."""
    named = ", ".join(f"{c.fingerprint} x{c.count}" for c in statements[:_NAMED])
    more = f" and {len(statements) - _NAMED} more" if len(statements) > _NAMED else ""
    return f"--force past {tally(statements)} {what}: {named}{more}"


def refused_line(c: Conflict) -> str:
    """One refused statement as a line of the report."""
    return (f"would be refused after retirement too: {c.count} seen, last {c.last_seen:%Y-%m-%d %H:%M:%S}, "
            f"{c.fingerprint}: {c.sample}")


@dataclass
class Readiness:
    shop_id: int
    #: What a cutover would break (kinds ``global``, ``cross_shop``, ``unplaced``): gates the cutover.
    conflicts: list[Conflict] = field(default_factory=list)
    #: For a ``tenant_primary`` shop, the statements refused while it was (kind ``refused``): they would be
    #: refused after retirement too, and gate it. Empty for shops in other phases.
    refused: list[Conflict] = field(default_factory=list)
    #: Every foreign key between tenant tables with its proof (the same for every shop; informative only).
    foreign_keys: list[FkProof] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Ready for cutover (refused statements do not count: they gate retirement)."""
        return not self.conflicts

    @property
    def retirable(self) -> bool:
        """No statement touching the shop was refused within the window."""
        return not self.refused

    @property
    def cross_shop_foreign_keys(self) -> list[FkProof]:
        """The foreign keys routing cannot follow (a row references another shop's row)."""
        return [p for p in self.foreign_keys if not p.consistent]

    def foreign_key_lines(self) -> list[str]:
        """One line per foreign key (``... : 0 cross-shop references``, or the sample keys)."""
        return proof_lines(self.foreign_keys)

    def refused_lines(self) -> list[str]:
        """One line per refused statement (``would be refused after retirement too: ...``)."""
        return [refused_line(c) for c in self.refused]

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "ready": self.ready,
                "transactions": seen(self.conflicts),
                "conflicts": [c.as_dict() for c in self.conflicts],
                "retirable": self.retirable,
                "refused": [c.as_dict() for c in self.refused],
                "foreign_keys": [proof_dict(p) for p in self.foreign_keys]}


async def recorded_statements(
    conn: asyncpg.Connection | asyncpg.Pool, shops: Sequence[int], *, window_s: float | None = None,
) -> dict[int, Readiness]:
    """Per shop, the recorded statements (last seen within ``window_s`` seconds, or ever), without the
    foreign-key proofs: ``conflicts`` for every shop, ``refused`` (most seen first) for shops in
    ``tenant_primary``."""
    report = {shop: Readiness(shop) for shop in shops}
    rows = await conn.fetch(_CONFLICTS, list(shops), window_s)
    cut_over = {int(r["shop_id"]) for r in await conn.fetch(_CUT_OVER, list(shops), ph.TENANT_PRIMARY)}
    for r in rows:
        found = Conflict(r["kind"], r["fingerprint"], r["sample"], int(r["count"]), r["first_seen"],
                         r["last_seen"])
        shop = int(r["shop_id"])
        for one in report.values() if shop == ANY_SHOP else (report[shop],):
            # a statement that names no shop concerns every shop
            if found.kind != REFUSED:
                one.conflicts.append(found)
            elif one.shop_id in cut_over:
                one.refused.append(found)
    for one in report.values():
        one.refused.sort(key=lambda c: (-c.count, c.fingerprint))  # the shop's own and shop -1's, mixed
    return report


async def readiness(
    conn: asyncpg.Connection | asyncpg.Pool, shops: list[int], *, tenancy: TenancySection | None = None,
    window_s: float | None = None,
) -> dict[int, Readiness]:
    """Per shop, the recorded statements that a cutover would break, or (``tenant_primary`` shops) that
    were refused and would be after retirement too (last seen within ``window_s`` seconds, or ever), and
    the foreign-key proofs (proved now when ``tenancy`` is given, else as last recorded)."""
    report = await recorded_statements(conn, shops, window_s=window_s)
    if shops:
        proofs = await foreign_key_proofs(conn, tenancy)
        for one in report.values():
            one.foreign_keys = proofs
    return report
