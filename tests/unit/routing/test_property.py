"""Property: no generated statement that touches shop A's rows is ever sent to shop B's database.

Whenever the route says "tenant, shop B", every tenant-table occurrence of the
generated SQL must be restricted to exactly shop B by the generator's own
account of what it wrote (``querygen``), or, with a declared shop, be either
restricted to B or unrestricted with B declared. Writes and locking reads
never go to a tenant. A seeded run also checks that the generator does reach
tenant routes, so the property is not vacuous.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import BoundParams, Claim
from pgtenantproxy.routing.router import BatchItem, RoutedUnit, Router
from pgtenantproxy.routing.strategy import Strategy
from tests.unit.routing.querygen import SHOPS, TENANT_TABLES, Generated, generate

T = TypeVar("T")
ROUTER = Router(Analyser(cache_size=100), Strategy("tenant"))
ALL_SHOPS = frozenset(SHOPS)


class HypothesisDraw:
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))


class RandomDraw:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def route(gen: Generated, startup: Claim | None) -> RoutedUnit:
    params = BoundParams(tuple(gen.params)) if gen.params else None
    return ROUTER.route(
        [BatchItem(gen.sql, params)],
        tx_status=ord("I"),
        tenant_tables=frozenset(TENANT_TABLES),
        eligible=ALL_SHOPS,
        startup=startup,
    )


def check(gen: Generated, startup: Claim | None) -> bool:
    """Assert the property; True when the statement went to a tenant."""
    unit = route(gen, startup)
    analysis = unit.analyses[0]
    assert analysis.understood, (gen.sql, analysis.error, [s.note for s in analysis.statements])
    result = unit.route
    if not result.tenant:
        return False
    assert not gen.never_tenant, gen.sql
    shop = result.shop_id
    declared = startup is not None and startup.shop_id == shop
    for occ, allowed in zip(gen.occs, gen.truth(), strict=True):
        assert occ.tenant, (gen.sql, occ)
        assert allowed == {shop} or (allowed is None and declared), (gen.sql, occ, allowed, result)
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([None, 1, 2]))
def test_no_statement_reaches_another_shops_database(data: st.DataObject, declared: int | None) -> None:
    gen = generate(HypothesisDraw(data))
    check(gen, None if declared is None else Claim("startup", declared))


def test_the_generator_reaches_tenant_routes() -> None:
    tenant = with_claim = total = 0
    for seed in range(1500):
        gen = generate(RandomDraw(seed))
        total += 1
        tenant += check(gen, None)
        with_claim += check(gen, Claim("startup", 1))
    assert tenant >= total // 20, tenant
    assert with_claim >= total // 20, with_claim
