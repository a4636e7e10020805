"""Routing: which shop a statement belongs to, and whether it may run on that shop's database.

Pure and event-loop free; the session layer feeds it and acts on its answers.

* :mod:`.analysis` — SQL text -> :class:`Analysis` (pglast, cached per text);
* :mod:`.identify` — the shop from startup options, SET, comments, the query;
* :mod:`.session_shop` — ``SET pgtenantproxy.shop_id`` followed over transactions;
* :mod:`.strategy` — the five read strategies and per-shop overrides;
* :mod:`.decision` — the safety rule: a unit's :class:`Route`;
* :mod:`.router` — all of it in one call.

See docs/routing.md.
"""

from pgtenantproxy.routing.analysis import Analyser, CacheStats
from pgtenantproxy.routing.decision import Route, Writes, decide, statement_obstacle, written_shops
from pgtenantproxy.routing.identify import (
    BoundParams,
    Claim,
    Identification,
    comment_claim,
    identify,
    set_claim,
    startup_claim,
)
from pgtenantproxy.routing.model import Analysis, ShopRef, StatementAnalysis, TableOccurrence
from pgtenantproxy.routing.router import BatchItem, RoutedUnit, Router
from pgtenantproxy.routing.session_shop import SessionShop
from pgtenantproxy.routing.strategy import Strategy, Verdict, percentage_bucket

__all__ = [
    "Analyser",
    "Analysis",
    "BatchItem",
    "BoundParams",
    "CacheStats",
    "Claim",
    "Identification",
    "Route",
    "RoutedUnit",
    "Router",
    "SessionShop",
    "ShopRef",
    "StatementAnalysis",
    "Strategy",
    "TableOccurrence",
    "Verdict",
    "Writes",
    "comment_claim",
    "decide",
    "identify",
    "percentage_bucket",
    "set_claim",
    "startup_claim",
    "statement_obstacle",
    "written_shops",
]
