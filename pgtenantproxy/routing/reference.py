"""Reference tables: may a unit run on one shop's database, reading its copies of global tables?

Each shop database holds read-only copies of the configured reference tables
(``[tenancy] reference_tables``), kept current by the migration's sync. A
unit may use them when :func:`local_shop` says so:

* every statement is a plain read (the same rules as any read sent to a
  shop's database: :func:`~pgtenantproxy.routing.decision.statement_obstacle`,
  with the reference tables counting as the shop's own), or transaction
  control that may move;
* every statement that touches tenant tables names that one shop;
* every occurrence of a *filtered* reference table (each shop's copy holds
  only its own rows, by ``shop_column``) is pinned to that shop: its copy
  holds exactly the rows the read may see; a whole-table copy needs no pin.

Whether the shop's copies are current enough (lag, the session's own writes
of global tables) is the caller's to check. Sans-IO.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from pgtenantproxy.routing.decision import statement_obstacle
from pgtenantproxy.routing.identify import BoundParams, Identification, resolve_all
from pgtenantproxy.routing.model import StatementAnalysis
from pgtenantproxy.routing.primary import statement_movable
from pgtenantproxy.routing.tables import DEFAULT_SCHEMA, is_shadowed, is_tenant_table


@dataclass(frozen=True)
class ReferenceFacts:
    """The reference tables and whose copies are current (one catalog snapshot)."""

    #: table label (``schema.table``) -> the copy's shop column (None: every shop has the whole table).
    tables: Mapping[str, str | None] = field(default_factory=dict)
    #: Shops whose copies of every reference table are within ``[dual_write] max_lag_ms``.
    current: frozenset[int] = frozenset()
    #: When the copies' state was read (monotonic seconds): a session's write of a reference table
    #: after that is not known to be in them yet. (Not part of equality: a new reading is no change.)
    read_at: float = field(default=0.0, compare=False)

    def label(self, table: str) -> str | None:
        """The reference table ``table`` (as written) names, if it is one."""
        if table in self.tables:
            return table
        qualified = table if "." in table else f"{DEFAULT_SCHEMA}.{table}"
        return qualified if qualified in self.tables else None


def local_shop(
    statements: Sequence[tuple[StatementAnalysis, BoundParams | None]],
    idents: Sequence[Identification],
    facts: ReferenceFacts,
    tenant_tables: Set[str],
    shadowed: Set[str] = frozenset(),
    *,
    shop: int | None = None,
    strict: bool = True,
) -> int | None:
    """The shop whose database may run these statements with its reference copies (``shop``: the one
    it must be, a transaction's), or None. Only units that read a reference table qualify.

    ``strict``: the read rule of strategy-routed reads (the function allow-list of reads); else the
    rule of a cut-over shop's units (:func:`~pgtenantproxy.routing.primary.statement_movable`)."""
    if not facts.tables or not any(facts.label(o.table) for stmt, _ in statements for o in stmt.occurrences):
        return None  # the common case: no reference table read, nothing to decide here
    local = set(tenant_tables) | set(facts.tables)
    named: set[int] = set() if shop is None else {shop}
    uses = False
    for (stmt, params), ident in zip(statements, idents, strict=True):
        if stmt.kind == "transaction":
            continue
        if not _readable(stmt, local, shadowed, strict):
            return None
        references = [(o, label) for o in stmt.occurrences
                      if not is_shadowed(o.table, shadowed) and (label := facts.label(o.table))]
        uses = uses or bool(references)
        if any(is_tenant_table(o.table, tenant_tables) for o in stmt.occurrences):
            if ident.shop_id is None:
                return None
            named.add(ident.shop_id)
        for occ, label in references:
            if facts.tables[label] is None:
                continue
            pins = [resolve_all(ref, params) for ref in occ.pins]
            shops = set().union(*(p for p in pins if p is not None)) if pins and None not in pins else None
            if shops is None or len(shops) != 1:
                return None
            named |= shops
        if len(named) > 1:
            return None
    if not uses or len(named) != 1:
        return None
    return next(iter(named))


def _readable(stmt: StatementAnalysis, local: Set[str], shadowed: Set[str], strict: bool) -> bool:
    if strict:
        return statement_obstacle(stmt, local, shadowed) is None
    return (stmt.kind == "select" and not stmt.has_write and not stmt.has_locking and statement_movable(stmt)
            and all(is_tenant_table(o.table, local) and not is_shadowed(o.table, shadowed)
                    for o in stmt.occurrences))
