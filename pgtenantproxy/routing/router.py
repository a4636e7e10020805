"""The routing core in one call, for the session layer: SQL texts in, a Route out.

:class:`Router` holds what comes from one config snapshot (analyser, strategy,
identification order) and is immutable apart from the analyser's cache, which
a new Router may share (pass the old analyser when the tenant column did not
change). Per unit the session passes what only it knows: the SQL and Bind
values of each statement, the transaction status, the startup claim, its
:class:`SessionShop`, the current tenant-table set and eligibility.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from pgtenantproxy.config import Config
from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.decision import Route, Writes, decide, written_shops
from pgtenantproxy.routing.identify import (
    BoundParams,
    Claim,
    Identification,
    comment_claim,
    identify,
    set_claim,
)
from pgtenantproxy.routing.keys import KeyView, keyed_query_shops, wants_keys
from pgtenantproxy.routing.model import Analysis, StatementAnalysis
from pgtenantproxy.routing.session_shop import SessionShop
from pgtenantproxy.routing.strategy import Eligibility, Strategy


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One statement source of a unit: a Query's text, or the SQL of an Execute'd statement."""

    sql: str
    params: BoundParams | None = None


@dataclass(frozen=True, slots=True)
class RoutedUnit:
    route: Route
    #: Every statement of the unit, in order (feed them to SessionShop.before_batch when unified).
    statements: tuple[StatementAnalysis, ...]
    identifications: tuple[Identification, ...]
    analyses: tuple[Analysis, ...]

    def pairs(self, items: Sequence[BatchItem]) -> list[tuple[StatementAnalysis, BoundParams | None]]:
        """Every statement with the Bind values of its item."""
        return [(s, item.params) for a, item in zip(self.analyses, items, strict=True) for s in a.statements]

    def writes(self, items: Sequence[BatchItem], tenant_tables: Set[str]) -> Writes:
        return written_shops(self.pairs(items), tenant_tables)


@dataclass(frozen=True)
class Router:
    analyser: Analyser
    strategy: Strategy
    order: tuple[str, ...] = ("startup", "set", "comment", "query")

    @classmethod
    def from_config(cls, config: Config, *, analyser: Analyser | None = None) -> Router:
        routing = config.routing
        column = config.tenancy.tenant_column
        if analyser is None or analyser.tenant_column != column:
            analyser = Analyser(column, routing.analysis_cache_size)
        return cls(analyser, Strategy.from_config(routing), tuple(routing.identify))

    def route(
        self,
        items: Sequence[BatchItem],
        *,
        tx_status: int,
        tenant_tables: Set[str],
        eligible: Eligibility,
        startup: Claim | None = None,
        session: SessionShop | None = None,
        shadowed: Set[str] = frozenset(),
        keys: KeyView | None = None,
    ) -> RoutedUnit:
        analyses = tuple(self.analyser.analyse(item.sql) for item in items)
        session_claim = set_claim(session) if session is not None else None
        statements: list[StatementAnalysis] = []
        idents: list[Identification] = []
        for analysis, item in zip(analyses, items, strict=True):
            claims = (startup, session_claim, comment_claim(analysis))
            for stmt in analysis.statements:
                statements.append(stmt)
                query = None
                if keys is not None and wants_keys(stmt):
                    query = keyed_query_shops(stmt, item.params, tenant_tables, keys)
                idents.append(
                    identify(stmt, order=self.order, claims=claims, params=item.params,
                             tenant_tables=tenant_tables, query=query)
                )
        route = decide(
            statements,
            idents,
            tx_status=tx_status,
            tenant_tables=tenant_tables,
            verdict=lambda shop: self.strategy.verdict(shop, eligible),
            shadowed=shadowed,
        )
        return RoutedUnit(route, tuple(statements), tuple(idents), analyses)
