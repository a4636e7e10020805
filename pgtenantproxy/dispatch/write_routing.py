"""Where a unit goes once some shop is ``tenant_primary`` (or held by a cutover).

:func:`write_decision` is asked by the dispatcher for every unit while a shop
is ``tenant_primary`` or held (:class:`Lanes`, derived once per catalog
snapshot); with no such shop it is never called, so the normal path stays as
it was. It answers a :class:`Decision`, or None for "decide as usual":

* **pinned** (the session's transaction is open on shop N's tenant
  connection): a unit that touches only N's tenant tables, or nothing at all,
  runs there; anything else is refused with 0A000 (run as an error on that
  connection, so the tenant transaction fails like any error).
* **lazy BEGIN** (also while shops are only candidates for a cutover, so a
  transaction that starts just before a cutover's hold is held, not begun on
  unified): a simple Query that is only BEGIN / START TRANSACTION with
  the session idle is answered by the proxy (``begin``); the next unit is
  decided with that BEGIN prepended, and a COMMIT/ROLLBACK right after it is
  answered locally too (``local``).
* **hold**: a unit of a held shop that writes, locks or controls a
  transaction, or that would start a deferred transaction, waits (``hold``)
  while the hold lasts, at most ``hold_s``.
* **tenant_primary**: a unit that touches only shop N's tenant tables (reads
  too, whatever the read strategy says) runs on N's database, and may open a
  transaction there (``primary``: never falls back to unified).
* **refusal**: a unit that would write a ``tenant_primary`` shop's rows on
  unified (with global tables or other shops, or inside a transaction that
  began on unified) is refused with 0A000 instead: it could not be atomic.

Everything else (global tables, nothing shop-specific, unknown shops) goes to
unified as usual; there the unified database's own write fence (55000) is
the last line for writes the proxy cannot attribute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field

from pgtenantproxy.dispatch.catalog import CatalogSnapshot
from pgtenantproxy.dispatch.copy_columns import CopyColumns
from pgtenantproxy.dispatch.copy_routing import UNIFIED_AS_USUAL, copy_decision
from pgtenantproxy.dispatch.federation import Federated, NotFederated
from pgtenantproxy.lifecycle.phases import MIRRORED, OWN_DATABASE
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.local_answers import answerable
from pgtenantproxy.routing import BatchItem, RoutedUnit
from pgtenantproxy.routing.model import StatementAnalysis
from pgtenantproxy.routing.primary import Touch
from pgtenantproxy.routing.sql_prepared import is_prepare
from pgtenantproxy.routing.tables import is_tenant_table
from pgtenantproxy.session.decision import (
    DEFERRED_READ,
    AnswerBegin,
    AnswerDeferred,
    AnswerEnd,
    AnswerLocal,
    Aside,
    Decision,
    Hold,
    Refusal,
    Refuse,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.facts import SessionFacts

NOT_ATOMIC = "0A000"
_START = re.compile(r"\s*start\b", re.IGNORECASE)
_STRICT = re.compile(r"repeatable\s+read|serializable|snapshot", re.IGNORECASE)
_SET_IN_TRANSACTION = re.compile(r"\s*set\s+(local|transaction|constraints)\b", re.IGNORECASE)
_DEALLOCATE = re.compile(r"\s*deallocate\b(?:\s+prepare)?(\s+all\b)?", re.IGNORECASE)


@dataclass(frozen=True)
class Lanes:
    """Shops whose units need more than the read rule, from one catalog snapshot."""

    version: int
    primary: frozenset[int]
    holding: frozenset[int]
    #: Shops the readiness recorder watches (candidates for cutover).
    watched: frozenset[int]
    #: Where the tenant column is in a COPY without a column list (:mod:`.copy_routing`).
    copy_columns: CopyColumns = field(default_factory=CopyColumns, compare=False)

    @property
    def active(self) -> bool:
        return bool(self.primary or self.holding or self.watched)


def lanes_of(snapshot: CatalogSnapshot) -> Lanes:
    phases = snapshot.phases.values()
    return Lanes(
        snapshot.version,
        frozenset(p.shop_id for p in phases if p.effective in OWN_DATABASE),
        snapshot.holding,
        frozenset(p.shop_id for p in phases if p.effective in MIRRORED),
        snapshot.copy_columns,
    )


@dataclass(frozen=True)
class UnitView:
    """One unit as :func:`write_decision` sees it."""

    unit: Unit
    routed: RoutedUnit
    items: Sequence[BatchItem]
    touch: Touch
    label: tuple[str, str]  # (statement kind, table) for metrics


def write_decision(
    view: UnitView,
    facts: SessionFacts,
    lanes: Lanes,
    tenant_tables: Set[str],
    *,
    held: Callable[[int], Callable[[], bool]],
    hold_s: float,
    federate: Callable[[UnitView], Federated | NotFederated | None] | None = None,
) -> Decision | None:
    if (copy := copy_decision(view, facts, lanes, tenant_tables, held=held, hold_s=hold_s)) is not None:
        return None if copy is UNIFIED_AS_USUAL else copy  # COPY: see copy_routing
    touch, (kind, table) = view.touch, view.label
    pinned = facts.pinned_shop
    if pinned is not None:
        if touch.only(pinned):
            return ToTenant(pinned, "pinned_transaction", kind=kind, table=table, primary=True)
        local = _answered_locally(view, facts)
        if local is not None:
            return local
        return _refuse(pinned, _pinned_message(pinned, touch), kind, table)
    if facts.tx_status == c.TX_IDLE:
        local = _local_answer(view, facts, lanes)
        if local is not None:
            return local
        shop = touch.single
        if shop is not None and shop in lanes.holding and not touch.quiet:
            return Hold(shop, "held", kind=kind, table=table, held=held(shop), hold_s=hold_s)
        if shop is None and lanes.holding and touch.writes and (touch.unknown or touch.shops & lanes.holding):
            # a write that may touch a held shop (its shop unknown, or several shops): waiting is safe,
            # reaching the shop's fence during the cutover would get it cancelled there
            first = min(lanes.holding)
            return Hold(first, "held", kind=kind, table=table, held=held(first), hold_s=hold_s)
        if shop is not None and shop in lanes.primary:
            return ToTenant(shop, "tenant_primary", kind=kind, table=table, primary=True)
    if lanes.primary:
        written = view.routed.writes(view.items, tenant_tables).shops & lanes.primary
        if written:
            shop = min(written)
            return _refuse(shop, _unified_message(shop, facts), kind, table)
        federated = None if federate is None else federate(view)
        if federated is not None:
            return _federated(view, facts, federated)
        return _unplaced(view, facts, lanes, tenant_tables)
    return None


def _federated(view: UnitView, facts: SessionFacts, federated: Federated | NotFederated) -> Decision:
    """A read that needs moved shops: run on unified, rewritten (while a transaction waits for its first
    shop: aside, the transaction still deferred), or refused with the reason."""
    kind, table = view.label
    if isinstance(federated, NotFederated):
        return Refuse(federated.shop_id, "federation_refused", kind=kind, table=table, error=federated.error)
    if facts.deferred_begin is not None and _deferred_read(view, facts, federated=True):
        return Aside(reason=DEFERRED_READ, kind=kind, table=table, rewrites=federated.rewrites)
    return ToUnified(None, "federated", kind=kind, table=table, rewrites=federated.rewrites)


_WHY = {
    "unpinned_table": "it does not name the shop of its rows (no shop_id condition, no key of a known shop)",
    "no_shop": "it does not name the shop of its rows (no shop_id condition, no key of a known shop)",
    "multiple_shops": "it names rows of several shops",
    "conflict": "its shop declarations disagree",
    "unresolved": "a shop_id parameter has no usable value",
    "invalid_claim": "the session's shop setting is not a shop id",
}


def _unplaced(view: UnitView, facts: SessionFacts, lanes: Lanes, tenant_tables: Set[str]) -> Decision | None:
    """Never a silent no-op, never a stale answer: a unit bound for unified that may touch the rows of a
    shop whose rows live on its own database is refused (DDL aside: it reaches unified as before)."""
    touch, (kind, table) = view.touch, view.label
    routed = view.routed
    if any(stmt.kind == "ddl" for stmt in routed.statements):
        return None
    if len(view.items) == 1 and len(routed.statements) == 1 and is_prepare(view.items[0].sql):
        return None  # a definition: touches no row (its EXECUTE is routed as the query)
    primary = sorted(touch.shops & lanes.primary)
    if primary:
        shop = primary[0]
        if facts.tx_status != c.TX_IDLE:
            why = "inside a transaction that began on the unified database"
        elif touch.global_tables:
            why = "together with global tables (or a temporary table)"
        elif len(touch.shops) > 1 or touch.unknown:
            why = "together with other shops' rows"
        else:
            why = "with a statement that cannot run on a shop's own database (SET, COPY, CALL, a function " \
                  "outside the allow-list...)"
        message = (f"pgtenantproxy: shop {shop}'s rows live on its own database since its cutover; this "
                   f"statement touches them {why}, and unified's copy is no answer")
        return _refuse(shop, message, kind, table)
    if not touch.unknown:
        return None
    for stmt, ident in zip(routed.statements, routed.identifications, strict=True):
        if ident.shop_id is not None or ident.reason == "nowhere":
            continue
        tenant = [o.table for o in stmt.occurrences if is_tenant_table(o.table, tenant_tables)]
        if tenant:
            shown = sorted(lanes.primary)
            shops = ", ".join(str(s) for s in shown[:5]) + (", ..." if len(shown) > 5 else "")
            message = (f"pgtenantproxy: this statement touches {tenant[0]}, but "
                       f"{_WHY.get(ident.reason, ident.reason)}; shops {shops} have their rows on their own "
                       "databases since their cutover, so running it on unified could change nothing or read "
                       "a stale copy")
            return Refuse(None, "unplaced", kind=kind, table=tenant[0],
                          error=Refusal(NOT_ATOMIC, message, _UNPLACED_HINT))
    return None


_UNPLACED_HINT = ("Name the shop (WHERE shop_id = ..., SET pgtenantproxy.shop_id, or a key of one shop); "
                  "see docs/routing.md, \"Statement shapes after cutover\".")


def _local_answer(view: UnitView, facts: SessionFacts, lanes: Lanes) -> Decision | None:
    """Lazy BEGIN, what needs no shop after it (SET LOCAL, SET TRANSACTION, SAVEPOINT: replayed after
    the BEGIN where the transaction then runs), and a COMMIT/ROLLBACK of it: answered by the proxy."""
    statements = view.routed.statements
    if facts.deferred_begin is None:
        # Also while shops are only cutover candidates (mirrored phases): a transaction that starts just
        # before a cutover's hold is then held at its first statement instead of begun on unified.
        if not lanes.active or len(statements) != 1 or _op(statements[0]) != "begin":
            return None
        if not _one_statement_unit(view):
            return None
        sql = view.items[0].sql
        tag = "START TRANSACTION" if _START.match(sql) else "BEGIN"
        return AnswerBegin(reason="deferred_begin", tag=tag, begin_sql=sql)
    if _deferred_read(view, facts):
        return Aside(reason=DEFERRED_READ, kind=view.label[0], table=view.label[1])
    if len(statements) != 2 or not _one_statement_unit(view):  # the lazy BEGIN, then the unit's one
        return None
    last = statements[-1]
    if _op(last) in ("commit", "rollback"):
        tx = last.tx
        assert tx is not None
        if not tx.chain:
            return AnswerEnd(reason="deferred_end", tag="COMMIT" if tx.op == "commit" else "ROLLBACK")
        return None
    sql = view.items[-1].sql
    replayed = _replayable(last, sql)
    return None if replayed is None else AnswerDeferred(reason="deferred_statement", tag=replayed, sql=sql)


def _deferred_read(view: UnitView, facts: SessionFacts, *, federated: bool = False) -> bool:
    """A plain read of global tables (or of no table) while the transaction waits for its first shop:
    run aside on unified (its own snapshot: the same rows a READ COMMITTED transaction would see), the
    transaction still deferred. Not at REPEATABLE READ or SERIALIZABLE (one snapshot for the
    transaction), nor for anything that locks, writes or calls outside the read allow-list."""
    statements = view.routed.statements[1:]  # after the lazy BEGIN
    if not statements or view.unit.pinned or not view.unit.complete:
        return False
    if not federated and (view.touch.shops or view.touch.unknown):
        return False
    if not all(s.read_only for s in statements):
        return False
    return not any(_STRICT.search(sql) for sql in (facts.deferred_begin or "", *facts.deferred_replay))


def _replayable(stmt: StatementAnalysis, sql: str) -> str | None:
    """The command tag of a statement a deferred transaction can replay wherever it then runs."""
    if _op(stmt) == "savepoint":
        return "SAVEPOINT"
    if stmt.kind != "set" or stmt.set_shop is not None or stmt.setting == "search_path":
        return None
    m = _SET_IN_TRANSACTION.match(sql)
    if m is None:
        return None
    return "SET CONSTRAINTS" if m.group(1).lower() == "constraints" else "SET"


def _answered_locally(view: UnitView, facts: SessionFacts) -> Decision | None:
    """``DEALLOCATE name|ALL`` or ``PREPARE`` (a simple Query) in a transaction on a shop's database:
    answered by the proxy (in a failed transaction: the server's own 25P02). DEALLOCATE: the client's
    registry forgets, the servers' copies are replaced when the name is parsed again (psycopg sends
    ``DEALLOCATE ALL`` after a rolled-back savepoint). PREPARE: remembered by the router, defined on
    the database an EXECUTE of it goes to."""
    if view.unit.kind != "query" or len(view.items) != 1 or len(view.routed.statements) != 1:
        return None
    sql = view.items[0].sql
    if is_prepare(sql):
        return AnswerLocal(facts.pinned_shop, "prepare", kind="other", tag="PREPARE")
    m = _DEALLOCATE.match(sql)
    if m is None:
        return None
    return AnswerLocal(facts.pinned_shop, "deallocate", kind="other",
                       tag="DEALLOCATE ALL" if m.group(1) else "DEALLOCATE")


def _one_statement_unit(view: UnitView) -> bool:
    """A simple Query, or an extended unit the proxy can answer message for message."""
    return view.unit.kind == "query" or (view.unit.kind == "extended" and answerable(view.unit))


def _op(stmt: StatementAnalysis) -> str | None:
    return stmt.tx.op if stmt.kind == "transaction" and stmt.tx is not None else None


def _refuse(shop: int, message: str, kind: str, table: str) -> Decision:
    hint = ("Run statements on global tables, and on other shops, in transactions of their own; "
            "see docs/routing.md, \"Writes after cutover\".")
    return Refuse(shop, "refused", kind=kind, table=table, error=Refusal(NOT_ATOMIC, message, hint))


def _pinned_message(shop: int, touch: Touch) -> str:
    if touch.global_tables:
        what = "touches global tables"
    elif len(touch.shops - {shop}) > 0:
        what = "touches another shop"
    elif touch.unknown:
        what = "touches tenant tables without naming shop " + str(shop)
    else:
        what = "cannot run on a shop's own database (SET, DDL, COPY, a function outside the allow-list...)"
    return (f"pgtenantproxy: this transaction runs on the database of shop {shop} (cut over), "
            f"and this statement {what}")


def _unified_message(shop: int, facts: SessionFacts) -> str:
    where = ("inside a transaction that began on the unified database" if facts.tx_status != c.TX_IDLE
             else "together with global tables or other shops")
    return (f"pgtenantproxy: shop {shop} writes on its own database since its cutover; this statement "
            f"writes its rows {where}, which cannot be atomic")

