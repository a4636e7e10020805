"""The result of a verification: shops -> tables -> differing ranges and keys, with JSON.

Counts are always complete; listed keys (jsonb array texts, e.g. ``[42]``)
and ranges are capped at :data:`MAX_LISTED` per category. ``identical`` is
about the data: no key missing on the tenant, extra on the tenant or changed,
and no error. Keys that kept changing on unified through every recheck
(``unsettled``) could not be compared without blocking the application; they
are listed but do not make a shop different (the mirror rewrites such a key
at its next write anyway). A degraded mirror (dead letters) is reported next
to the data verdict. The foreign-key proofs of the run (:mod:`.fk_proofs`)
are listed apart (``foreign_keys``; :meth:`VerificationReport.foreign_key_lines`
for text): they never change the verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pgtenantproxy.lifecycle.keys import FkProof
from pgtenantproxy.migration.fk_proofs import proof_dict, proof_lines
from pgtenantproxy.migration.keydiff import CHANGED, EXTRA, IN_FLIGHT, MISSING

MAX_LISTED = 20

IDENTICAL = "identical"
DIFFERENT = "different"
ERROR = "error"

#: Report categories, in display order (``in_flight`` verdicts are reported as ``unsettled``).
CATEGORIES = (MISSING, EXTRA, CHANGED, "unsettled")


@dataclass
class KeySet:
    """A category's keys: the count, and the first :data:`MAX_LISTED` (in key-text order)."""

    count: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, key: str) -> None:
        self.count += 1
        if len(self.keys) < MAX_LISTED:
            self.keys.append(key)


@dataclass
class TableVerification:
    table: str
    rows_unified: int = 0
    rows_tenant: int = 0
    ranges: int = 0
    differing_ranges: KeySet = field(default_factory=KeySet)
    keys: dict[str, KeySet] = field(default_factory=lambda: {c: KeySet() for c in CATEGORIES})
    rechecks: int = 0
    error: str | None = None

    def record(self, verdicts: dict[str, str]) -> None:
        """File the final per-key verdicts (see :mod:`.keydiff`)."""
        for key, verdict in sorted(verdicts.items()):
            self.keys["unsettled" if verdict == IN_FLIGHT else verdict].add(key)

    def count(self, category: str) -> int:
        return self.keys[category].count

    @property
    def identical(self) -> bool:
        return self.error is None and not any(self.count(c) for c in (MISSING, EXTRA, CHANGED))

    @property
    def status(self) -> str:
        return ERROR if self.error is not None else IDENTICAL if self.identical else DIFFERENT

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table, "status": self.status, "identical": self.identical,
            "rows_unified": self.rows_unified, "rows_tenant": self.rows_tenant,
            "ranges": self.ranges, "differing_ranges": self.differing_ranges.count,
            "differing_range_list": list(self.differing_ranges.keys), "rechecks": self.rechecks,
            **{c: {"count": s.count, "keys": list(s.keys)} for c, s in self.keys.items()},
            "error": self.error,
        }


@dataclass
class ShopVerification:
    shop_id: int
    phase: str
    tables: list[TableVerification] = field(default_factory=list)
    drained: bool = True  # every wait for the mirror finished within the timeout
    degraded: bool = False
    degraded_reason: str | None = None
    dead_letters: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def identical(self) -> bool:
        return self.error is None and all(t.identical for t in self.tables)

    @property
    def status(self) -> str:
        if self.error is not None or any(t.error is not None for t in self.tables):
            return ERROR
        return IDENTICAL if self.identical else DIFFERENT

    def total(self, category: str) -> int:
        return sum(t.count(category) for t in self.tables)

    def summary(self) -> str:
        """One line for the audit log."""
        if self.error is not None:
            return self.error[:300]
        rows = sum(t.rows_unified for t in self.tables)
        parts = [f"{len(self.tables)} tables, {rows} rows"]
        parts += [f"{self.total(c)} {c}" for c in CATEGORIES if self.total(c)]
        if not self.drained:
            parts.append("mirror not drained")
        if self.degraded:
            parts.append(f"mirror degraded ({self.dead_letters} dead letters)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shop_id": self.shop_id, "phase": self.phase, "status": self.status, "identical": self.identical,
            "drained": self.drained, "degraded": self.degraded, "degraded_reason": self.degraded_reason,
            "dead_letters": self.dead_letters, "seconds": round(self.seconds, 3), "error": self.error,
            "totals": {c: self.total(c) for c in CATEGORIES},
            "tables": [t.as_dict() for t in self.tables],
        }


@dataclass
class VerificationReport:
    shops: list[ShopVerification] = field(default_factory=list)
    seconds: float = 0.0
    #: Every foreign key between tenant tables, proved during the run (informative: no verdict).
    foreign_keys: list[FkProof] = field(default_factory=list)
    foreign_keys_error: str | None = None

    def foreign_key_lines(self) -> list[str]:
        """``foreign key public.history.account_id -> public.accounts: 0 cross-shop references``, ..."""
        lines = proof_lines(self.foreign_keys)
        if self.foreign_keys_error is not None:
            lines.append(f"foreign keys not proved: {self.foreign_keys_error}")
        return lines

    @property
    def identical(self) -> bool:
        return all(s.identical for s in self.shops)

    @property
    def status(self) -> str:
        if any(s.status == ERROR for s in self.shops):
            return ERROR
        return IDENTICAL if self.identical else DIFFERENT

    @property
    def rows(self) -> int:
        return sum(t.rows_unified for s in self.shops for t in s.tables)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "identical": self.identical, "seconds": round(self.seconds, 3),
            "shops_verified": len(self.shops), "rows": self.rows,
            "different_shops": [s.shop_id for s in self.shops if s.status == DIFFERENT],
            "failed_shops": [s.shop_id for s in self.shops if s.status == ERROR],
            "shops": [s.as_dict() for s in self.shops],
            "foreign_keys": [proof_dict(p) for p in self.foreign_keys],
            "foreign_keys_error": self.foreign_keys_error,
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)
