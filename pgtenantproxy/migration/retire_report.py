"""What a retirement run did (or, in a dry run, would do), per shop, with JSON for the admin API.

A shop ends in one of :data:`OUTCOMES`: ``retired`` (archived, deleted from
unified, phase ``retired``), ``would retire`` (dry run, gate passed),
``blocked`` (the gate refused it: ``reasons`` say why; nothing was changed),
``failed`` (a step failed: nothing was deleted and the phase did not move,
unless ``reasons`` say otherwise). ``refused_statements`` are the statements
the proxies refused (0A000) while the shop was ``tenant_primary``, within the
readiness window: they block it, or, with ``forced``, it went (or would go)
past them. ``every_shop_retired``: after the run (or
the planned run) no shop is left outside ``retired``, so the whole tenant
tables were dumped (``dump``) and emptied (``truncated``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pgtenantproxy.migration.readiness import Conflict

RETIRED = "retired"
WOULD_RETIRE = "would retire"
BLOCKED = "blocked"
FAILED = "failed"
OUTCOMES = (RETIRED, WOULD_RETIRE, BLOCKED, FAILED)


@dataclass
class ShopRetirement:
    shop_id: int
    phase: str
    status: str = WOULD_RETIRE
    reasons: list[str] = field(default_factory=list)
    #: The shop's rows in unified per table (counted at the gate; archived rows once retired).
    rows: dict[str, int] = field(default_factory=dict)
    archive: str | None = None  # the shop's archive directory
    bytes: int = 0
    verification: str | None = None  # the verification summary (or why it was skipped)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: What retirement wrote into the key directory (ranges and text keys per table, tables not routed by
    #: key); None until the shop is retired.
    key_directory: dict[str, Any] | None = None
    #: Statements refused while the shop was ``tenant_primary`` (within ``readiness_window_s``): they would
    #: be refused after retirement too (:mod:`.readiness`).
    refused_statements: list[Conflict] = field(default_factory=list)
    #: ``--force`` took the shop past its refused statements.
    forced: bool = False

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def block(self, reason: str) -> None:
        self.status = BLOCKED
        self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        return {"shop_id": self.shop_id, "phase": self.phase, "status": self.status, "reasons": self.reasons,
                "rows": self.rows, "total_rows": self.total_rows, "archive": self.archive,
                "bytes": self.bytes,
                "verification": self.verification, "warnings": self.warnings,
                "key_directory": self.key_directory, "seconds": round(self.seconds, 3),
                "refused_statements": [c.as_dict() for c in self.refused_statements], "forced": self.forced}


@dataclass
class DumpResult:
    """``pg_dump --data-only`` of the whole tenant tables (``--all`` when every shop is retired)."""

    path: str
    bytes: int
    sha256: str
    tables: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "tables": self.tables,
                "seconds": round(self.seconds, 3)}


@dataclass
class RetirementReport:
    dry_run: bool
    shops: list[ShopRetirement] = field(default_factory=list)
    every_shop_retired: bool = False
    dump: DumpResult | None = None
    truncated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def with_status(self, status: str) -> list[int]:
        return [s.shop_id for s in self.shops if s.status == status]

    @property
    def ok(self) -> bool:
        """Every shop retired (or would be), and no whole-table step failed."""
        return not self.errors and all(s.status in (RETIRED, WOULD_RETIRE) for s in self.shops)

    @property
    def rows(self) -> int:
        return sum(s.total_rows for s in self.shops if s.status in (RETIRED, WOULD_RETIRE))

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shops if s.status == RETIRED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "ok": self.ok, "seconds": round(self.seconds, 3), "rows": self.rows,
            "bytes": self.bytes,
            **{status.replace(" ", "_"): self.with_status(status) for status in OUTCOMES},
            "every_shop_retired": self.every_shop_retired,
            "dump": self.dump.as_dict() if self.dump else None, "truncated": self.truncated,
            "errors": self.errors, "shops": [s.as_dict() for s in self.shops],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)
