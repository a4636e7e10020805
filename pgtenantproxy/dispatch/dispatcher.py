"""The session layer's router: the routing core applied to live sessions.

Per unit, :meth:`Dispatcher.decide` extracts what the unit executes
(:mod:`.items`), asks the routing core with the session's own state (startup
claim, ``SET pgtenantproxy.shop_id`` tracking, temporary tables that shadow
tenant tables), the catalog snapshot (tenant tables, ready shops, overrides),
and this session's read-your-writes state, and returns a :class:`Decision`.
Units the relay had to pin to unified (after a Flush, COPY, FunctionCall) are
still analysed, so SET tracking never misses a statement, but they run on
unified whatever the answer.

Eligibility of a shop for this session = ready in the catalog, and, when write
mirroring is on, the mirror healthy and caught up (lag under ``max_lag_ms``,
no dead letters) and caught up with this session's own writes.

While some shop is ``tenant_primary`` or held by a cutover, or a shop is a
cutover candidate (:data:`~pgtenantproxy.lifecycle.phases.MIRRORED`), each unit
is also summarised (:func:`~pgtenantproxy.routing.primary.touch`):
:mod:`.write_routing` may then send it to a cut-over shop's database, hold it,
answer a lazy BEGIN or refuse it (those decisions have no side effects here:
the relay may ask again), and the readiness recorder counts transactions that
could not stay atomic after a cutover (:mod:`pgtenantproxy.routing.readiness`,
flushed by :mod:`.conflicts`). With no such shop none of this runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pgtenantproxy.dispatch.catalog import CatalogSnapshot, TenantCatalog
from pgtenantproxy.dispatch.conflicts import ConflictRecorder
from pgtenantproxy.dispatch.federation import Federated, Federator, NotFederated, federatable, touches_tenant
from pgtenantproxy.dispatch.in_flight import InFlightWrites
from pgtenantproxy.dispatch.items import unit_items
from pgtenantproxy.dispatch.key_directory import KeyDirectory, KeyScope
from pgtenantproxy.dispatch.shadow import ShadowReader, ShadowResult
from pgtenantproxy.dispatch.sql_statements import SqlStatements
from pgtenantproxy.dispatch.write_routing import NOT_ATOMIC, Lanes, UnitView, lanes_of, write_decision
from pgtenantproxy.pools.pool import PoolManager, TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.messages import Parse, Query
from pgtenantproxy.routing import BatchItem, Claim, RoutedUnit, Router, SessionShop, startup_claim
from pgtenantproxy.routing.federation import needs_federation
from pgtenantproxy.routing.keys import AnyOwner, names_no_shop
from pgtenantproxy.routing.primary import Touch, touch
from pgtenantproxy.routing.readiness import ANY_SHOP, TxTrace, UnitNote
from pgtenantproxy.routing.reference import local_shop
from pgtenantproxy.routing.sql_prepared import is_prepare
from pgtenantproxy.session.decision import (
    SESSION_SEQUENCE,
    Aside,
    Decision,
    Hold,
    Refusal,
    Refuse,
    ToTenant,
    ToUnified,
)
from pgtenantproxy.session.facts import SessionFacts

logger = logging.getLogger(__name__)

_NOTHING_SHADOWED: frozenset[str] = frozenset()
_KEY_HINT = ("The statement names its rows by key only; see docs/routing.md, \"Routing by key\". "
             "Naming the shop (WHERE shop_id = ...) avoids the lookup.")
_EXECUTE_NOT_FEDERATED = Refusal(
    NOT_ATOMIC, "pgtenantproxy: this EXECUTE runs a read that needs the databases of cut-over shops; a "
                "statement prepared with SQL-level PREPARE cannot be rewritten for them",
    "Send the query itself, or prepare it with the driver (protocol-level prepared statements).")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


class QueryMetrics(Protocol):
    """The metrics layer's data-path hook (:class:`pgtenantproxy.metrics.recorder.QueryRecorder`)."""

    def record(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None: ...


class MirrorView(Protocol):
    """What routing asks of write mirroring (:class:`pgtenantproxy.dualwrite.status.MirrorStatus`)."""

    def write_marker(self, shop_id: int) -> Any: ...
    def applied(self, shop_id: int, marker: Any) -> bool: ...
    def caught_up(self, shop_id: int, max_lag_ms: float | None = None) -> bool: ...
    def degraded(self, shop_id: int) -> bool: ...


@dataclass
class RoutingStats:
    """Counters the metrics layer exports."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, reason)
    sources: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, outcome)
    shadow_compared: int = 0
    shadow_mismatches: int = 0
    shadow_failed: int = 0


@dataclass
class SessionRouting:
    """Routing state of one client session."""

    startup: Claim | None
    shop: SessionShop = field(default_factory=SessionShop)
    shadowed: set[str] = field(default_factory=set)
    search_path_changed: bool = False
    #: Shops written in the current transaction (None in the set = a write of unknown shop).
    dirty: set[int | None] = field(default_factory=set)
    #: Read-your-writes: per shop (None = every shop), the marker taken after the write committed.
    markers: dict[int | None, object] = field(default_factory=dict)
    last: RoutedUnit | None = None
    #: The readiness recorder's view of the current transaction (None: nothing recorded yet).
    trace: TxTrace | None = None
    #: SQL-level prepared statements (PREPARE / EXECUTE / DEALLOCATE).
    sql: SqlStatements = field(default_factory=SqlStatements)
    #: The shop whose database ran this session's last statement that may have drawn from a sequence
    #: outside a transaction of its own (None: unified): lastval()/currval() answer from there only.
    sequence_shop: int | None = None
    #: Read-your-writes on reference tables: the transaction wrote one; when the last such write
    #: committed (monotonic): copies read before that may not hold it.
    reference_dirty: bool = False
    reference_written_at: float = float("-inf")


class Dispatcher:
    def __init__(
        self,
        router: Router,
        catalog: TenantCatalog,
        pools: PoolManager,
        *,
        tenant_timeout: float,
        mirror: MirrorView | None = None,
        max_lag_ms: float = 1000.0,
        shadow: ShadowReader | None = None,
        log_inconsistencies: bool = True,
        fallback_enabled: bool = True,
    ) -> None:
        self.fallback_enabled = fallback_enabled
        self.router = router
        self.catalog = catalog
        self.pools = pools
        self.tenant_timeout = tenant_timeout
        self.mirror = mirror
        self.max_lag_ms = max_lag_ms
        self.shadow = shadow
        self.log_inconsistencies = log_inconsistencies
        self.stats = RoutingStats()
        #: Set by the app when metrics are on: called once per completed unit.
        self.metrics: QueryMetrics | None = None
        self._strategy_for: tuple[int, Router] | None = None
        self._lanes: Lanes = lanes_of(catalog.snapshot)
        #: The longest a unit waits for a cutover hold on its shop (``[routing] write_hold_timeout_ms``).
        self.hold_timeout = 10.0
        #: Counts transactions that could not stay atomic after a cutover (flushed by the runtime).
        self.conflicts = ConflictRecorder()
        #: Routing by key (set by the runtime; None: keys and foreign keys pin nothing).
        self.keys: KeyDirectory | None = None
        #: Federated reads (set by the runtime; None: reads that need moved shops are refused).
        self.federator: Federator | None = None
        #: Writes sent to unified and not completed yet, by the epoch they were decided under.
        self.in_flight = InFlightWrites(catalog.wake)

    def use_router(self, router: Router) -> None:
        """Swap in a new routing core (config reload, API strategy change): atomic for the loop."""
        self.router = router
        self._strategy_for = None

    def selects(self, shop_id: int) -> bool:
        """Does the read strategy (with the per-shop overrides) choose tenant reads for the shop?"""
        return self._router(self.catalog.snapshot).strategy.verdict(shop_id, lambda _shop: True).tenant

    # --- UnitRouter -------------------------------------------------------------
    def pool(self, shop_id: int) -> TenantPool:
        return self.pools.pool(shop_id)

    def decide(self, unit: Unit, facts: SessionFacts) -> Decision:
        state = self._state(facts)
        items = unit_items(unit, facts.statements)
        if not items:
            state.last = None
            if items is not None and facts.pinned_shop is not None:  # Parse/Describe only: where the tx is
                return ToTenant(facts.pinned_shop, "pinned_transaction", primary=True)
            if items is not None and facts.deferred_begin is not None:
                return Aside(reason="empty")
            return ToUnified(reason="unknown_statement" if items is None else "empty")
        if facts.deferred_begin is not None:  # the lazy BEGIN is part of this unit now
            items = [BatchItem(facts.deferred_begin), *items]  # (statements replayed after it need no shop)
        items, prepares = state.sql.substitute(items)  # EXECUTE routed as the query it runs
        decision = self._route(unit, facts, state, items)
        if prepares and isinstance(decision, ToTenant):
            decision = dataclasses.replace(decision, sql_prepares=prepares)
        elif prepares and isinstance(decision, ToUnified | Aside) and decision.rewrites:
            decision = Refuse(None, "federation_refused", kind=decision.kind, table=decision.table,
                              error=_EXECUTE_NOT_FEDERATED)
        return _sequences(state, decision, facts)

    def _route(
        self, unit: Unit, facts: SessionFacts, state: SessionRouting, items: list[BatchItem]
    ) -> Decision:
        snapshot = self.catalog.snapshot
        shadowed = self._shadowed(state, snapshot)
        lanes = self._lanes_for(snapshot)
        keys = self._key_scope(snapshot, lanes)
        routed = self._router(snapshot).route(
            items,
            tx_status=facts.tx_status,
            tenant_tables=snapshot.tenant_tables,
            eligible=lambda shop: self._eligible(shop, snapshot, state),
            startup=state.startup,
            session=state.shop,
            shadowed=shadowed,
            keys=keys,
        )
        state.last = routed
        route = routed.route
        kind, table = _label(routed)
        if keys is not None and (keys.wanted or keys.failed):
            return self._key_wait(keys, snapshot, lanes, kind, table)
        local = self._reference_local(unit, facts, state, routed, items, snapshot, lanes, shadowed)
        if local is not None:
            return dataclasses.replace(local, kind=kind, table=table)
        note: UnitNote | None = None
        if (lanes.active or facts.pinned_shop is not None) and not _autocommit_read(routed, facts, lanes):
            view = UnitView(unit, routed, items, touch(routed.statements, routed.identifications,
                            snapshot.tenant_tables, shadowed), (kind, table))
            # also while shops are only mirrored: lazy BEGIN, so a cutover's hold catches new transactions
            special = write_decision(view, facts, lanes, snapshot.tenant_tables,
                                     held=self._held, hold_s=self.hold_timeout,
                                     federate=self._federation(snapshot, lanes, shadowed))
            if special is not None:
                return _noted_refusal(special, lanes, routed, items)
            noted = view.touch.shops or view.touch.global_tables or view.touch.unknown
            if lanes.watched and noted and not _placeable_copy(routed, view.touch):
                unknown = view.touch.unknown and not is_prepare(items[0].sql) and names_no_shop(
                    routed.pairs(items), routed.identifications, snapshot.tenant_tables,
                    AnyOwner(snapshot.keys.is_key, snapshot.keys.may_be_consistent))
                reads = self.federator is not None and _plain_reads(routed, snapshot.tenant_tables, shadowed)
                note = UnitNote(view.touch, tuple(a.fingerprint or "?" for a in routed.analyses),
                                tuple(item.sql for item in items), unknown, reads)
        if route.tenant and not unit.pinned:
            return ToTenant(route.shop_id, route.reason, route.source, kind, table)
        self._before_unified(state, routed, items, snapshot)
        reason = "pinned" if route.tenant else route.reason
        # while shops may be cut over, a write sent to unified is tracked until it completes (acknowledged)
        epoch = snapshot.epoch if lanes.active and not all(s.read_only for s in routed.statements) else 0
        return ToUnified(route.shop_id, reason, route.source, kind, table, note=note, epoch=epoch)

    def completed(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None:
        state = self._state(facts)
        self.stats.outcomes[(decision.target, outcome)] += 1
        if decision.epoch and isinstance(decision, ToUnified):
            self.in_flight.landed(decision.epoch)
        if self.metrics is not None:
            self.metrics.record(unit, facts, decision, outcome, seconds)
        if decision.note is not None or state.trace is not None:
            self._trace(state, decision, facts)
        if decision.tenant:
            if outcome == "ok":
                self._maybe_shadow(unit, facts, decision, state.last)
            return
        state.shop.on_ready(facts.tx_status, error=outcome == "error")
        self._reference_writes(state, facts)
        if facts.tx_status == c.TX_IDLE and state.dirty and self.mirror is not None:
            for shop in state.dirty:
                state.markers[shop] = self.mirror.write_marker(shop if shop is not None else 0)
            state.dirty.clear()

    # --- routing by key -----------------------------------------------------------------
    def _key_scope(self, snapshot: CatalogSnapshot, lanes: Lanes) -> KeyScope | None:
        """Keys are looked up once some shop owns its rows (tenant_primary, retired) or a cutover holds
        one (a write by key of the held shop must wait, not reach its fence); consistent foreign keys
        spread pins always."""
        directory = self.keys
        facts = snapshot.keys
        lookups = bool(lanes.primary or lanes.holding)
        if directory is None or not (facts.foreign_keys or (lookups and facts.key_columns)):
            return None
        return directory.scope(facts, lookups=lookups)

    def _key_wait(self, keys: KeyScope, snapshot: CatalogSnapshot, lanes: Lanes, kind: str,
                  table: str) -> Decision:
        """Refuse when a lookup failed; else hold the unit until its keys' shops are known."""
        if keys.failed:
            return Refuse(None, "key_lookup_failed", kind=kind, table=table,
                          error=Refusal(NOT_ATOMIC, "pgtenantproxy: " + keys.failed[0], _KEY_HINT))
        directory = keys.directory
        done = directory.request(keys.wanted, snapshot.keys, lanes.primary)
        first = min(keys.wanted)
        timeout = Refusal(NOT_ATOMIC, f"pgtenantproxy: the shop of key {first[1]} of {first[0]} could not be "
                          f"looked up within {directory.timeout:g} s", _KEY_HINT)
        return Hold(None, "key_lookup", kind=kind, table=table, held=lambda: not done.done(),
                    hold_s=directory.timeout + 1.0,
                    wake=lambda callback: done.add_done_callback(lambda _f: callback()),
                    timeout_error=timeout)

    def acknowledgeable(self, epoch: int) -> int:
        """The newest epoch this proxy may acknowledge (:mod:`.in_flight`)."""
        return self.in_flight.acknowledgeable(epoch)

    # --- reference tables ----------------------------------------------------------------
    def _reference_local(self, unit: Unit, facts: SessionFacts, state: SessionRouting, routed: RoutedUnit,
                         items: Sequence[BatchItem], snapshot: CatalogSnapshot, lanes: Lanes,
                         shadowed: frozenset[str]) -> ToTenant | None:
        """A read of one shop's tenant tables with reference tables, on that shop's database, when its
        copies are current (lag, and this session's own writes of reference tables)."""
        reference = snapshot.reference
        if not reference.tables or unit.pinned or not unit.complete:
            return None
        pinned = facts.pinned_shop
        pairs = routed.pairs(items)
        shop = local_shop(pairs, routed.identifications, reference, snapshot.tenant_tables, shadowed,
                          shop=pinned, strict=False)
        if shop is None or shop not in reference.current or state.reference_written_at >= reference.read_at:
            return None
        if pinned is not None or (facts.tx_status == c.TX_IDLE and shop in lanes.primary):
            return ToTenant(shop, "reference", primary=True)
        if facts.tx_status != c.TX_IDLE or facts.deferred_begin is not None or shop in lanes.primary:
            return None
        if local_shop(pairs, routed.identifications, reference, snapshot.tenant_tables, shadowed) != shop:
            return None  # a strategy-routed read: the read rule of any tenant read
        strategy = self._router(snapshot).strategy
        if not strategy.verdict(shop, lambda s: self._eligible(s, snapshot, state)).tenant:
            return None
        return ToTenant(shop, "reference")

    def _reference_writes(self, state: SessionRouting, facts: SessionFacts) -> None:
        routed = state.last
        reference = self.catalog.snapshot.reference
        if routed is not None and reference.tables and any(
                o.written and reference.label(o.table) is not None
                for stmt in routed.statements for o in stmt.occurrences):
            state.reference_dirty = True
        if state.reference_dirty and facts.tx_status == c.TX_IDLE:
            state.reference_dirty = False
            state.reference_written_at = time.monotonic()

    # --- federated reads ---------------------------------------------------------------
    def _federation(self, snapshot: CatalogSnapshot, lanes: Lanes,
                    shadowed: frozenset[str]) -> Callable[[UnitView], Federated | NotFederated | None] | None:
        federator = self.federator
        if federator is None or not lanes.primary:
            return None
        moved = lanes.primary

        def plan(view: UnitView) -> Federated | NotFederated | None:
            texts: list[tuple[str, int, frozenset[int] | None]] = []
            idents = iter(view.routed.identifications)
            for item, analysis in zip(view.items, view.routed.analyses, strict=True):
                if is_prepare(item.sql):
                    return None  # a definition: its EXECUTE is routed as the query
                for index, stmt in enumerate(analysis.statements):
                    shops = next(idents).shops
                    if not touches_tenant(stmt.tables, snapshot.tenant_tables, shadowed):
                        continue
                    if not federatable(stmt):
                        if needs_federation(moved, shops):
                            return None  # a write or a lock on moved shops' rows: refused as before
                        continue
                    texts.append((item.sql, index, shops))
            return federator.plan(texts, moved, snapshot.federation, snapshot.tenant_tables, shadowed,
                                  snapshot.version, view.label[1])

        return plan

    # --- write routing and the readiness recorder ---------------------------------------
    def _lanes_for(self, snapshot: CatalogSnapshot) -> Lanes:
        lanes = self._lanes
        if lanes.version != snapshot.version:
            lanes = self._lanes = lanes_of(snapshot)
        return lanes

    def _held(self, shop_id: int) -> Callable[[], bool]:
        return lambda: shop_id in self.catalog.snapshot.holding

    def _trace(self, state: SessionRouting, decision: Decision, facts: SessionFacts) -> None:
        """Add the unit to its transaction; at the transaction's end, count its conflicts."""
        if isinstance(decision.note, UnitNote):
            if state.trace is None:
                state.trace = TxTrace()
            state.trace.add(decision.note)
        trace = state.trace
        ended = facts.tx_status == c.TX_IDLE and facts.pinned_shop is None and facts.deferred_begin is None
        if trace is None or not ended:
            return
        state.trace = None
        pairs = trace.conflicts(lambda shop: shop in self._lanes.watched)
        if pairs:
            self.conflicts.tally.add(trace, pairs)

    # --- helpers ----------------------------------------------------------------------
    def _state(self, facts: SessionFacts) -> SessionRouting:
        state = facts.router_state
        if not isinstance(state, SessionRouting):
            state = SessionRouting(startup=startup_claim(facts.startup))
            facts.router_state = state
        return state

    def _router(self, snapshot: CatalogSnapshot) -> Router:
        """The router with this catalog's per-shop overrides (rebuilt when they change)."""
        cached = self._strategy_for
        if cached is not None and cached[0] == snapshot.version:
            return cached[1]
        strategy = self.router.strategy.with_overrides(
            activated=snapshot.activated, deactivated=snapshot.deactivated
        )
        router = dataclasses.replace(self.router, strategy=strategy)
        self._strategy_for = (snapshot.version, router)
        return router

    def _eligible(self, shop: int, snapshot: CatalogSnapshot, state: SessionRouting) -> bool:
        if shop not in snapshot.ready:
            return False
        mirror = self.mirror
        if mirror is None:
            return True
        if mirror.degraded(shop) or not mirror.caught_up(shop, self.max_lag_ms):
            return False
        for key in (shop, None):
            marker = state.markers.get(key)
            if marker is not None:
                if not mirror.applied(shop, marker):
                    return False
                if key is not None:
                    del state.markers[key]
        return True

    def _shadowed(self, state: SessionRouting, snapshot: CatalogSnapshot) -> frozenset[str]:
        if not state.shadowed and not state.search_path_changed:
            return _NOTHING_SHADOWED
        names = set(state.shadowed)
        if state.search_path_changed:
            names.update(t.rpartition(".")[2] for t in snapshot.tenant_tables)
        return frozenset(names)

    def _before_unified(
        self,
        state: SessionRouting,
        routed: RoutedUnit,
        items: Sequence[BatchItem],
        snapshot: CatalogSnapshot,
    ) -> None:
        state.shop.before_batch(routed.statements)
        for stmt in routed.statements:
            state.shadowed.update(stmt.temp_tables)
            if stmt.setting in ("search_path", "all"):
                state.search_path_changed = stmt.setting == "search_path"
        if self.mirror is not None:
            writes = routed.writes(items, snapshot.tenant_tables)
            state.dirty.update(writes.shops)
            if writes.unknown:
                state.dirty.add(None)

    def acted(self, decision: Decision) -> None:
        """The session acts on ``decision``: counted here, once per unit (``decide`` may be asked again)."""
        self.stats.decisions[(decision.target, decision.reason)] += 1
        if decision.source:
            self.stats.sources[decision.source] += 1
        if decision.epoch and isinstance(decision, ToUnified):
            self.in_flight.sent(decision.epoch)
        note = decision.note
        if isinstance(note, RefusedNote):  # the readiness of retirement: refused while cut over
            self.conflicts.tally.refused(note.shops, note.fingerprint, note.texts)

    # --- shadow reads -----------------------------------------------------------------
    def _maybe_shadow(
        self, unit: Unit, facts: SessionFacts, decision: Decision, routed: RoutedUnit | None
    ) -> None:
        shadow = self.shadow
        if shadow is None or routed is None or decision.shop_id is None or not shadow.sample():
            return
        fingerprint = " ".join(a.fingerprint or "?" for a in routed.analyses)
        ordered = any(_ORDER_BY.search(item) for item in _texts(unit))
        tables = tuple(dict.fromkeys(t for a in routed.analyses for t in a.tables))
        shadow.submit(
            unit,
            facts.statements,
            facts.shared_settings(),
            shop_id=decision.shop_id,
            ordered=ordered,
            tables=tables,
            fingerprint=fingerprint,
        )

    def shadow_result(self, result: ShadowResult) -> None:
        if not result.compared:
            self.stats.shadow_failed += 1
            return
        self.stats.shadow_compared += 1
        if result.matches:
            return
        self.stats.shadow_mismatches += 1
        if self.log_inconsistencies:
            assert result.tenant is not None and result.unified is not None
            logger.warning(
                "shadow read mismatch: shop %s, tables %s, query fingerprint %s: "
                "tenant %d rows, unified %d rows%s",
                result.shop_id,
                ", ".join(result.tables),
                result.fingerprint,
                result.tenant.rows,
                result.unified.rows,
                " (same count, different content)" if result.tenant.rows == result.unified.rows else "",
            )


_KINDS = frozenset({"select", "insert", "update", "delete"})
#: Refusals that the shop's cutover brought (recorded: they would be refused once it is retired too).
_RECORDED_REFUSALS = frozenset({"refused", "unplaced", "federation_refused"})


@dataclass(frozen=True, slots=True)
class RefusedNote:
    shops: tuple[int, ...]
    fingerprint: str
    texts: tuple[str, ...]


def _plain_reads(routed: RoutedUnit, tenant_tables: frozenset[str], shadowed: frozenset[str]) -> bool:
    """Every statement of the unit that touches tenant tables may be federated."""
    return all(federatable(stmt) for stmt in routed.statements
               if touches_tenant(stmt.tables, tenant_tables, shadowed))


def _noted_refusal(decision: Decision, lanes: Lanes, routed: RoutedUnit,
                   items: Sequence[BatchItem]) -> Decision:
    """A refusal that a moved shop brought carries what the recorder counts (shop, fingerprint, sample)."""
    if not isinstance(decision, Refuse) or decision.reason not in _RECORDED_REFUSALS or not lanes.primary:
        return decision
    named: set[int] = {decision.shop_id} & lanes.primary if decision.shop_id is not None else set()
    anywhere = False
    for ident in routed.identifications:
        if ident.shops is None:
            anywhere = True
        else:
            named |= ident.shops & lanes.primary
    shops = (*sorted(named), *((ANY_SHOP,) if anywhere or not named else ()))
    fingerprint = " ".join(a.fingerprint or "?" for a in routed.analyses)
    return dataclasses.replace(decision, note=RefusedNote(shops, fingerprint, tuple(i.sql for i in items)))


def _autocommit_read(routed: RoutedUnit, facts: SessionFacts, lanes: Lanes) -> bool:
    """A read-only unit outside any transaction, with no shop cut over, held or watched for a cutover:
    nothing for write routing to do, and nothing for the readiness recorder."""
    return (
        not lanes.primary
        and not lanes.holding
        and not lanes.watched
        and facts.tx_status == c.TX_IDLE
        and facts.pinned_shop is None
        and facts.deferred_begin is None
        and all(stmt.read_only for stmt in routed.statements)
    )


_DRAWS = frozenset({"nextval", "pg_catalog.nextval"})
_SESSION_SEQUENCE = frozenset({"lastval", "currval", "pg_catalog.lastval", "pg_catalog.currval"})


def _sequences(state: SessionRouting, decision: Decision, facts: SessionFacts) -> Decision:
    """lastval()/currval() answer from the connection that drew the value. Inside a transaction that
    is the transaction's own. Outside, an autocommit statement that may draw on a shop's database
    keeps its connection until the session's next statement (at most a second): a lastval()/currval()
    right after it runs there; later, the connection is back in the pool and they are refused (never
    another connection's value)."""
    routed = state.last
    if state.sequence_shop is None and not isinstance(decision, ToTenant):
        return decision  # the hot path: nothing drawn on a shop's database, nothing going there
    if routed is None or facts.pinned_shop is not None or facts.tx_status != c.TX_IDLE:
        return decision
    statements = routed.statements
    if any(s.kind == "insert" or _DRAWS.intersection(s.unsafe) for s in statements):
        if isinstance(decision, ToTenant | ToUnified):
            state.sequence_shop = decision.shop_id if isinstance(decision, ToTenant) else None
        if isinstance(decision, ToTenant) and decision.primary and facts.deferred_begin is None:
            return dataclasses.replace(decision, linger=True)
        return decision
    shop = state.sequence_shop
    if shop is None or not any(_SESSION_SEQUENCE.intersection(s.unsafe) for s in statements):
        return decision
    if facts.linger_shop == shop and all(not s.occurrences for s in statements):
        return ToTenant(shop, SESSION_SEQUENCE, kind="select", primary=True, linger=True)
    return Refuse(shop, "session_sequence", kind="select", error=Refusal(
        NOT_ATOMIC, f"pgtenantproxy: lastval()/currval() long after an INSERT that ran on shop {shop}'s "
                    "database outside a transaction: that connection went back to the pool",
        "Use INSERT ... RETURNING, or run the INSERT and lastval() in one transaction."))


def _placeable_copy(routed: RoutedUnit, touched: Touch) -> bool:
    """COPYs the proxy places by their rows (FROM STDIN, the tenant column's position known) or by
    their query (one shop's rows TO STDOUT): nothing for the readiness recorder."""
    copies = [s.copy for s in routed.statements]
    for copy in copies:
        if copy is None or not copy.stdio or copy.other:
            return False
        if copy.is_from and copy.columns is not None and copy.tenant_index is None:
            return False
        if not copy.is_from and (copy.table is not None or touched.global_tables or len(touched.shops) > 1):
            return False
    return bool(copies)


def _label(routed: RoutedUnit) -> tuple[str, str]:
    """(query type, table) of a unit for metrics: its first statement's kind and first table."""
    for stmt in routed.statements:
        kind = stmt.kind if stmt.kind in _KINDS else "other"
        tables = stmt.tables
        return kind, tables[0] if tables else ""
    return "other", ""


def _texts(unit: Unit) -> list[str]:
    out = []
    for msg in unit.messages:
        if msg.type == c.QUERY:
            out.append(Query.parse(msg.body).sql)
        elif msg.type == c.PARSE:
            out.append(Parse.parse(msg.body).sql)
    return out
