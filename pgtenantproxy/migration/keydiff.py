"""Deciding, key by key, whether the tenant differs from unified while both may be changing (pure).

A key is judged from three reads: unified (``a``), then, once the shop's
mirror drained past ``a``, the tenant (``t``), then unified again (``b``).
Every write committed before ``a`` is on the tenant by the time of ``t``
(:mod:`.drain`), so for a correct mirror ``t`` is one of the versions unified
had between ``a`` and ``b``. Hence:

* ``t`` equals ``a`` or ``b``: **settled**, the sides agree;
* else, when ``a == b`` (unified did not change in between): a real
  difference: **missing** on the tenant (no row there), **extra** on the
  tenant (no row on unified) or **changed**;
* else (unified changed meanwhile): **in flight**, judged again later.

A value is the row's hash, ``None`` when the side has no row with that key.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

SETTLED = "settled"
MISSING = "missing"
EXTRA = "extra"
CHANGED = "changed"
IN_FLIGHT = "in_flight"

Hashes = Mapping[str, int | None]


def classify_key(a: int | None, t: int | None, b: int | None) -> str:
    """One key's verdict from its unified (``a``), tenant (``t``), unified-again (``b``) hashes."""
    if t == a or t == b:
        return SETTLED
    if a != b:
        return IN_FLIGHT
    if t is None:
        return MISSING
    if a is None:
        return EXTRA
    return CHANGED


def classify(a: Hashes, t: Hashes, b: Hashes) -> dict[str, str]:
    """Verdicts of every key seen in any of the three reads, except the settled ones."""
    verdicts: dict[str, str] = {}
    for key in sorted({*a, *t, *b}):
        verdict = classify_key(a.get(key), t.get(key), b.get(key))
        if verdict != SETTLED:
            verdicts[key] = verdict
    return verdicts


def differing_ranges(unified: list[tuple[int, Decimal]], tenant: list[tuple[int, Decimal]]) -> list[int]:
    """Indexes of the ranges whose ``(rows, sum)`` checksums differ."""
    if len(unified) != len(tenant):
        raise ValueError(f"{len(unified)} unified checksums but {len(tenant)} tenant checksums")
    return [i for i, (u, t) in enumerate(zip(unified, tenant, strict=True)) if u != t]
