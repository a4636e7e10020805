"""Which reads bound for unified are federated, and how (the session layer's side of federation).

Asked by :mod:`.write_routing` for a unit bound for unified while some shop
owns its rows (``tenant_primary``, ``retired``) and the unit writes none of
them. Per statement of the unit that touches tenant tables, the shops it may
touch are its identification's (its pins, a claim, keys; else every shop). A
statement that may touch a moved shop is federated when it is a plain read
(a SELECT, understood, read-only: no lock, no write, nothing outside the
allow-list); the unit is then run on unified with the rewritten texts
(:func:`pgtenantproxy.routing.federation.federate`), one phase per shop from
this catalog snapshot. Otherwise the caller refuses as before.

Refused with 0A000 here, never run partially: a statement over more moved
shops than ``[federation] max_shops_per_query``; a moved shop whose foreign
tables are not (yet) those of unified's current tables; a text the rewrite
cannot place exactly.

Rewrites are cached per (text, plan) in a bounded LRU: the same statement
with the same shops and phases is rewritten (and parsed back) once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Set
from dataclasses import dataclass

from pgtenantproxy.lifecycle.federation import GUARD_FUNCTION, foreign_table, shop_schema
from pgtenantproxy.routing.federation import (
    CannotFederate,
    FederationFacts,
    Sources,
    federate,
    needs_federation,
)
from pgtenantproxy.routing.model import StatementAnalysis
from pgtenantproxy.routing.tables import is_shadowed, is_tenant_table
from pgtenantproxy.session.decision import Refusal
from pgtenantproxy.sqltext import ident

NOT_ATOMIC = "0A000"
_HINT = ("See docs/routing.md, \"Federated reads\": name fewer shops, or raise [federation] "
         "max_shops_per_query.")
_CACHE_SIZE = 2048
_GUARD = f"{GUARD_FUNCTION}()"


@dataclass(frozen=True)
class Federated:
    """A unit's texts as unified runs them: (client's SQL, federated SQL) pairs."""

    rewrites: tuple[tuple[str, str], ...]
    #: Every moved shop the unit reads from its own database.
    remote: frozenset[int]


@dataclass(frozen=True)
class NotFederated:
    """Why a read that needs moved shops cannot run: the client's error."""

    shop_id: int | None
    error: Refusal


def foreign_name(shop: int, label: str) -> str:
    return f"{ident(shop_schema(shop))}.{ident(foreign_table(label))}"


_Plan = tuple[tuple[int, frozenset[int] | None], ...]  # (statement index in the text, its shops)


class Federator:
    def __init__(self, *, max_shops: int, tenant_column: str) -> None:
        self.max_shops = max_shops
        self.tenant_column = tenant_column
        self._cache: OrderedDict[tuple[str, _Plan, frozenset[int], int], str] = OrderedDict()

    def plan(self, texts: list[tuple[str, int, frozenset[int] | None]], moved: frozenset[int],
             facts: FederationFacts, tenant_tables: Set[str], shadowed: Set[str],
             version: int, table: str = "") -> Federated | NotFederated | None:
        """``texts``: (SQL text, statement index in it, the shops it may touch) for every statement that
        touches tenant tables and is a plain read. None: nothing to federate."""
        merged: dict[str, dict[int, frozenset[int] | None]] = {}
        for sql, index, shops in texts:
            if not needs_federation(moved, shops):
                continue
            plans = merged.setdefault(sql, {})
            before = plans.get(index, frozenset())
            plans[index] = None if shops is None or before is None else before | shops
        if not merged:
            return None
        remote: set[int] = set()
        rewrites = []
        for sql, plans in merged.items():
            for shops in plans.values():
                refusal = self._check(moved if shops is None else moved & shops, facts, table)
                if refusal is not None:
                    return refusal
                remote.update(moved if shops is None else moved & shops)
            plan = tuple(sorted(plans.items(), key=lambda p: p[0]))
            try:
                text = self._rewrite(sql, plan, moved, facts, tenant_tables, shadowed, version)
            except CannotFederate as exc:
                return NotFederated(None, Refusal(
                    NOT_ATOMIC, "pgtenantproxy: this read needs the databases of cut-over shops, and the "
                                f"proxy cannot rewrite it for them: {exc}", _HINT))
            rewrites.append((sql, text))
        return Federated(tuple(rewrites), frozenset(remote))

    def _check(self, remote: frozenset[int], facts: FederationFacts, table: str) -> NotFederated | None:
        what = f"this read of {table}" if table else "this read"
        if len(remote) > self.max_shops:
            return NotFederated(None, Refusal(
                NOT_ATOMIC, f"pgtenantproxy: {what} needs the databases of {len(remote)} cut-over shops, "
                            f"more than [federation] max_shops_per_query ({self.max_shops})", _HINT))
        missing = sorted(remote - facts.ready)
        if missing:
            return NotFederated(missing[0], Refusal(
                NOT_ATOMIC, f"pgtenantproxy: {what} needs shop {missing[0]}'s database, whose foreign "
                            "tables on unified are not ready (not built yet, or behind a change of unified's "
                            "tables)",
                "The phase keeper builds them within [federation] refresh_interval_s; see docs/routing.md, "
                "\"Federated reads\"."))
        return None

    def _rewrite(self, sql: str, plan: _Plan, moved: frozenset[int], facts: FederationFacts,
                 tenant_tables: Set[str], shadowed: Set[str], version: int) -> str:
        key = (sql, plan, moved, version)
        cache = self._cache
        found = cache.get(key)
        if found is not None and not shadowed:
            cache.move_to_end(key)
            return found
        sources = {index: Sources(moved, shops, self.tenant_column, foreign_name, _GUARD)
                   for index, shops in plan}
        out = federate(sql, sources, facts, tenant_tables, shadowed)
        if not shadowed:
            cache[key] = out
            if len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        return out


def federatable(stmt: StatementAnalysis) -> bool:
    """A plain read unified can run federated: a SELECT, understood, no write, no lock."""
    return stmt.kind == "select" and stmt.understood and not stmt.has_write and not stmt.has_locking


def touches_tenant(tables: tuple[str, ...], tenant_tables: Set[str], shadowed: Set[str]) -> bool:
    return any(is_tenant_table(t, tenant_tables) and not is_shadowed(t, shadowed) for t in tables)
