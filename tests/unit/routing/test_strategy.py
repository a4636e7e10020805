"""The five read strategies, per-shop overrides, eligibility, and the stable percentage hash.

The percentage expectations were computed outside Python, from the hash's
definition, with coreutils: ``printf '%s' "$id" | sha256sum``, first 16 hex
digits as an unsigned integer, modulo 100.
"""

from __future__ import annotations

import hashlib

import pytest

from pgtenantproxy.config import RoutingSection, parse_config
from pgtenantproxy.routing.strategy import Strategy, Verdict, percentage_bucket

ALL = frozenset(range(1, 2001))

#: shop id -> bucket, from sha256sum (see the module docstring).
BUCKETS = {1: 13, 2: 46, 3: 43, 5: 83, 7: 30, 42: 37, 100: 97, 999: 34, 1000: 21, 123456: 70}
#: Among shops 1..1000 at percentage 30: how many, and sha256 of their ids joined by commas.
SELECTED_AT_30 = 287
SELECTED_AT_30_SHA256 = "dce0537d88ccf0ba4bc1d4477ef01a01be4837e13959689a87418ea2868afe4d"


@pytest.mark.parametrize(("shop", "bucket"), sorted(BUCKETS.items()))
def test_percentage_bucket_matches_sha256sum(shop: int, bucket: int) -> None:
    assert percentage_bucket(shop) == bucket


def test_percentage_30_selects_a_fixed_set_of_about_30_percent() -> None:
    strategy = Strategy("percentage", percentage=30)
    selected = [s for s in range(1, 1001) if strategy.verdict(s, ALL).tenant]
    assert 250 <= len(selected) <= 350
    assert len(selected) == SELECTED_AT_30
    joined = ",".join(map(str, selected)).encode()
    assert hashlib.sha256(joined).hexdigest() == SELECTED_AT_30_SHA256
    again = [s for s in range(1, 1001) if Strategy("percentage", percentage=30).verdict(s, ALL).tenant]
    assert again == selected


def test_raising_the_percentage_only_adds_shops() -> None:
    previous: set[int] = set()
    for pct in (0, 10, 30, 50, 90, 100):
        chosen = {s for s in range(1, 501) if Strategy("percentage", percentage=pct).selects(s).tenant}
        assert previous <= chosen
        previous = chosen
    assert previous == set(range(1, 501))


@pytest.mark.parametrize(
    ("strategy", "shop", "verdict"),
    [
        (Strategy(), 5, Verdict(False, "strategy_unified")),
        (Strategy("tenant"), 5, Verdict(True, "tenant")),
        (Strategy("tenant", enable_tenant_reads=False), 5, Verdict(False, "tenant_reads_disabled")),
        (Strategy("shop-list", shop_ids=frozenset({5})), 5, Verdict(True, "tenant")),
        (Strategy("shop-list", shop_ids=frozenset({5})), 6, Verdict(False, "not_selected")),
        (Strategy("shop-list", canary_shop_ids=frozenset({6})), 6, Verdict(False, "not_selected")),
        (Strategy("canary", canary_shop_ids=frozenset({6})), 6, Verdict(True, "tenant")),
        (Strategy("canary", shop_ids=frozenset({5})), 5, Verdict(False, "not_selected")),
        (Strategy("percentage", percentage=100), 5, Verdict(True, "tenant")),
        (Strategy("percentage", percentage=0), 5, Verdict(False, "not_selected")),
        (Strategy("percentage", percentage=84), 5, Verdict(True, "tenant")),  # bucket 83
        (Strategy("percentage", percentage=83), 5, Verdict(False, "not_selected")),
        # overrides
        (Strategy("tenant", deactivated=frozenset({5})), 5, Verdict(False, "deactivated")),
        (Strategy("shop-list", activated=frozenset({5})), 5, Verdict(True, "activated")),
        (Strategy("percentage", activated=frozenset({5}), deactivated=frozenset({5})), 5,
         Verdict(False, "deactivated")),
        (Strategy("unified", activated=frozenset({5})), 5, Verdict(False, "strategy_unified")),
        (Strategy("tenant", activated=frozenset({5}), enable_tenant_reads=False), 5,
         Verdict(False, "tenant_reads_disabled")),
    ],
)  # fmt: skip
def test_verdicts(strategy: Strategy, shop: int, verdict: Verdict) -> None:
    assert strategy.verdict(shop, ALL) == verdict


def test_eligibility_as_a_set_or_a_callable() -> None:
    strategy = Strategy("tenant", activated=frozenset({9}))
    assert strategy.verdict(5, {5}).tenant
    assert strategy.verdict(5, frozenset()) == Verdict(False, "not_eligible")
    assert strategy.verdict(9, lambda shop: shop != 9) == Verdict(False, "not_eligible")
    assert strategy.verdict(9, lambda shop: True) == Verdict(True, "activated")
    # eligibility is not even asked when the strategy says no
    asked: list[int] = []

    def eligible(shop: int) -> bool:
        asked.append(shop)
        return True

    Strategy().verdict(5, eligible)
    Strategy("shop-list").verdict(5, eligible)
    assert asked == []
    Strategy("tenant").verdict(5, eligible)
    assert asked == [5]


def test_from_config_and_seed_environment() -> None:
    section = RoutingSection(strategy="shop-list", shop_ids=(1, 2), canary_shop_ids=(3,), percentage=5)
    strategy = Strategy.from_config(section, activated=[7], deactivated=[2])
    assert strategy == Strategy(
        "shop-list", 5, frozenset({1, 2}), frozenset({3}), True, frozenset({7}), frozenset({2})
    )
    assert strategy.verdict(1, ALL).tenant and not strategy.verdict(2, ALL).tenant
    config = parse_config(
        {"routing": {"strategy": "tenant"}},
        environ={"MIGRATION_STRATEGY": "canary", "ENABLE_TENANT_READS": "false"},
    )
    seeded = Strategy.from_config(config.routing)
    assert seeded.name == "canary" and seeded.verdict(1, ALL) == Verdict(False, "tenant_reads_disabled")


def test_overrides_make_a_new_strategy() -> None:
    base = Strategy("shop-list", shop_ids=frozenset({1}))
    changed = base.with_overrides(activated={2})
    assert base.activated == frozenset() and changed.activated == frozenset({2})
    assert changed.with_overrides(deactivated={1}).verdict(1, ALL) == Verdict(False, "deactivated")
    with pytest.raises(AttributeError):
        base.name = "tenant"  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"name": "everything"}, {"name": "percentage", "percentage": 101}])
def test_invalid_strategy(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Strategy(**kwargs)  # type: ignore[arg-type]
