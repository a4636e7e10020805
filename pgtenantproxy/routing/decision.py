"""THE SAFETY RULE: where one unit (a Query, or a Sync-delimited batch) runs.

A unit may run on a shop's tenant database only when *all* of these hold:

1. the session is outside any transaction block (last ReadyForQuery 'I'),
   and the unit holds no transaction control;
2. every statement is understood, and is a read: a SELECT/VALUES with no
   write anywhere (no data-modifying CTE, no SELECT INTO), no locking clause,
   and nothing outside the function allow-list;
3. every statement reads at least one table, and every table it reads is a
   tenant table (and not a temporary table of the session shadowing one);
4. every statement identifies exactly one shop (see :mod:`.identify`), and all
   statements of the unit identify the same one;
5. the strategy selects that shop and the shop is eligible.

Anything else runs on unified, with the first failed rule as the reason (for
metrics). The checks are ordered so the reason names the most basic problem.
A unified route still carries the shop when one was identified (metrics per
shop; the write-watermark of read-your-writes needs it too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Literal

from pgtenantproxy.routing import functions
from pgtenantproxy.routing.identify import BoundParams, Identification, resolve
from pgtenantproxy.routing.model import StatementAnalysis
from pgtenantproxy.routing.strategy import Verdict
from pgtenantproxy.routing.tables import is_shadowed, is_tenant_table

TX_IDLE = ord("I")


@dataclass(frozen=True, slots=True)
class Route:
    target: Literal["unified", "tenant"]
    shop_id: int | None = None
    reason: str = ""
    source: str | None = None

    @property
    def tenant(self) -> bool:
        return self.target == "tenant"


def statement_obstacle(
    stmt: StatementAnalysis, tenant_tables: Set[str], shadowed: Set[str] = frozenset()
) -> str | None:
    """Why this statement cannot run on a tenant database, or None."""
    if not stmt.understood:
        return "not_understood"
    if stmt.kind == "transaction":
        return "transaction_block"
    if stmt.kind == "ddl":
        return "ddl"
    if stmt.has_write or stmt.kind in ("insert", "update", "delete"):
        return "write"
    if stmt.has_locking:
        return "locking"
    if stmt.kind != "select":
        return "not_a_read"
    if stmt.unsafe:
        return (
            "system_column"
            if all(u in functions.SYSTEM_COLUMNS for u in stmt.unsafe)
            else "volatile_function"
        )
    if not stmt.read_only:
        return "not_a_read"
    if not stmt.occurrences:
        return "no_tenant_table"
    for occ in stmt.occurrences:
        if is_shadowed(occ.table, shadowed):
            return "temp_table"
        if not is_tenant_table(occ.table, tenant_tables):
            return "global_table"
    return None


def _unit_shop(shops: Sequence[Identification]) -> tuple[int | None, str | None, str | None]:
    """(shop, source, reason there is none) for the whole unit."""
    for ident in shops:
        if ident.shop_id is None:
            return None, None, ident.reason
    found = {ident.shop_id for ident in shops}
    if len(found) > 1:
        return None, None, "multiple_shops"
    return shops[0].shop_id, shops[0].source, None


def decide(
    statements: Sequence[StatementAnalysis],
    shops: Sequence[Identification],
    *,
    tx_status: int,
    tenant_tables: Set[str],
    verdict: Callable[[int], Verdict],
    shadowed: Set[str] = frozenset(),
) -> Route:
    """The route of one unit: its statements in order, with each statement's identification."""
    if len(statements) != len(shops):
        raise ValueError("one identification per statement")
    if not statements:
        return Route("unified", reason="empty")
    shop, source, no_shop = _unit_shop(shops)

    def unified(reason: str) -> Route:
        return Route("unified", shop, reason, source)

    if tx_status != TX_IDLE:
        return unified("transaction_block")
    for stmt in statements:
        obstacle = statement_obstacle(stmt, tenant_tables, shadowed)
        if obstacle is not None:
            return unified(obstacle)
    if shop is None:
        return unified(no_shop or "no_shop")
    chosen = verdict(shop)
    if not chosen.tenant:
        return unified(f"strategy:{chosen.reason}")
    return Route("tenant", shop, chosen.reason, source)


@dataclass(frozen=True, slots=True)
class Writes:
    """The shops a unit may have written: read-your-writes needs them (issue 5)."""

    shops: frozenset[int]
    #: Some write's shop could not be told (unpinned, unknown value, CALL/DO/function...).
    unknown: bool


def written_shops(
    statements: Sequence[tuple[StatementAnalysis, BoundParams | None]], tenant_tables: Set[str]
) -> Writes:
    shops: set[int] = set()
    unknown = False
    for stmt, params in statements:
        if not stmt.understood or not all(functions.writes_no_rows(u) for u in stmt.unsafe):
            unknown = True  # a text we could not read, or a function that may write anything
            continue
        if not stmt.has_write:
            continue
        written = [o for o in stmt.occurrences if o.written]
        if not written and stmt.kind != "ddl":
            unknown = True
        for occ in written:
            if not is_tenant_table(occ.table, tenant_tables):
                continue
            values = [resolve(ref, params) for ref in occ.pins]
            unknown = unknown or not values or None in values
            shops.update(v for v in values if v is not None)
    return Writes(frozenset(shops), unknown)
