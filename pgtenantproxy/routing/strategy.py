"""The read strategies: which shops read from their tenant database.

The five strategies of the seed (``[routing] strategy``):

* ``unified``: none (the default, and the instant rollback switch: overrides
  are ignored);
* ``tenant``: every shop;
* ``percentage``: the shops whose bucket is below ``percentage``. The bucket is
  the first 8 bytes of SHA-256 of the shop id's decimal text, as a big-endian
  unsigned integer, modulo 100: the same on every machine, every restart and
  every Python version (Python's ``hash()`` is salted per process, so it is
  not used). Raising the percentage only ever adds shops;
* ``shop-list``: the shops in ``shop_ids``;
* ``canary``: the shops in ``canary_shop_ids`` (a small first set, kept apart
  from the shop list so operators can grow one while watching the other).

Per-shop overrides (from the control schema or the admin API later):
``deactivated`` shops never read from tenant, ``activated`` shops do under any
strategy but ``unified``. ``enable_tenant_reads = false`` (seed:
``ENABLE_TENANT_READS``) turns everything off. Whatever the strategy says, a
shop reads from tenant only when it is *eligible* (its tenant database is
ready; later: mirroring and caught up with the session's writes), which the
caller passes per call.

A :class:`Strategy` is immutable; overrides make a new one, so a config reload
or an API change swaps it atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass

from pgtenantproxy.config import STRATEGIES, RoutingSection

Eligibility = Callable[[int], bool] | Set[int]


@dataclass(frozen=True, slots=True)
class Verdict:
    tenant: bool
    #: tenant, activated, tenant_reads_disabled, strategy_unified, deactivated, not_selected, not_eligible
    reason: str


def percentage_bucket(shop_id: int) -> int:
    """The shop's bucket in 0..99 for the percentage strategy (stable everywhere)."""
    digest = hashlib.sha256(str(shop_id).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _is_eligible(eligible: Eligibility, shop_id: int) -> bool:
    return eligible(shop_id) if callable(eligible) else shop_id in eligible


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str = "unified"
    percentage: int = 0
    shop_ids: frozenset[int] = frozenset()
    canary_shop_ids: frozenset[int] = frozenset()
    enable_tenant_reads: bool = True
    activated: frozenset[int] = frozenset()
    deactivated: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.name!r} (known: {', '.join(STRATEGIES)})")
        if not 0 <= self.percentage <= 100:
            raise ValueError("percentage must be between 0 and 100")

    @classmethod
    def from_config(
        cls,
        routing: RoutingSection,
        *,
        activated: Iterable[int] = (),
        deactivated: Iterable[int] = (),
    ) -> Strategy:
        return cls(
            name=routing.strategy,
            percentage=routing.percentage,
            shop_ids=frozenset(routing.shop_ids),
            canary_shop_ids=frozenset(routing.canary_shop_ids),
            enable_tenant_reads=routing.enable_tenant_reads,
            activated=frozenset(activated),
            deactivated=frozenset(deactivated),
        )

    def with_overrides(
        self, *, activated: Iterable[int] | None = None, deactivated: Iterable[int] | None = None
    ) -> Strategy:
        return dataclasses.replace(
            self,
            activated=self.activated if activated is None else frozenset(activated),
            deactivated=self.deactivated if deactivated is None else frozenset(deactivated),
        )

    def selects(self, shop_id: int) -> Verdict:
        """What the strategy and overrides say, before eligibility."""
        if not self.enable_tenant_reads:
            return Verdict(False, "tenant_reads_disabled")
        if self.name == "unified":
            return Verdict(False, "strategy_unified")
        if shop_id in self.deactivated:
            return Verdict(False, "deactivated")
        if shop_id in self.activated:
            return Verdict(True, "activated")
        if self.name == "tenant":
            chosen = True
        elif self.name == "percentage":
            chosen = percentage_bucket(shop_id) < self.percentage
        elif self.name == "shop-list":
            chosen = shop_id in self.shop_ids
        else:
            chosen = shop_id in self.canary_shop_ids
        return Verdict(True, "tenant") if chosen else Verdict(False, "not_selected")

    def verdict(self, shop_id: int, eligible: Eligibility) -> Verdict:
        """Whether reads of ``shop_id`` go to its tenant database, and why."""
        selected = self.selects(shop_id)
        if selected.tenant and not _is_eligible(eligible, shop_id):
            return Verdict(False, "not_eligible")
        return selected
