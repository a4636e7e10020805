"""Routing by key, and pins that follow foreign keys (pure: lookups are answered by a :class:`KeyView`).

After a shop's cutover an unchanged app still names rows by key alone
(``UPDATE repairs SET status = $1 WHERE id = $2``) and joins by foreign key
(``repairs r JOIN customers c ON c.id = r.customer_id WHERE r.shop_id = $1``).
:func:`occurrence_shops` gives each table occurrence of a statement the shops
whose rows it can touch, from three kinds of evidence:

* its tenant-column pins (the analyser's, ``$n`` resolved from Bind);
* a condition on the table's key column (``id = 5``, ``id = $1``, ``id IN
  (...)``, ``id = ANY($1)``): each key's shop, from the :class:`KeyView`
  (cache, id blocks, or a lookup the caller runs: :data:`PENDING` until then).
  A key that exists nowhere touches no row: it adds no shop, and an occurrence
  whose keys all exist nowhere is *empty* (it touches nothing);
* equalities along a foreign key the view says is shop-consistent (every
  referencing row references a row of its own shop): ``c.id = r.customer_id``
  with ``repairs(customer_id) -> customers(id)`` gives ``c`` the shops of
  ``r`` and the other way round, with the analyser's direction rules (outer
  joins, correlation, ``IN (SELECT ...)`` from the subquery out). Tenant-column
  links spread the new shops too.

Invariant: a shop is added to an occurrence only when every row of it that
can affect the result belongs to that shop (the pin rule of
:mod:`.walker`), given that keys are unique and the foreign key consistent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from pgtenantproxy.routing.identify import BoundParams, Identification, QueryShops, resolve_all
from pgtenantproxy.routing.model import KeyValue, StatementAnalysis
from pgtenantproxy.routing.param_values import CAST_OIDS, param_array, param_text
from pgtenantproxy.routing.tables import DEFAULT_SCHEMA, is_tenant_table
from pgtenantproxy.routing.values import int_text


class Pending:
    """A key whose shop is being looked up."""

    __slots__ = ()


PENDING = Pending()
KeyShop = int | None | Pending  # a shop, nowhere (no such key), or not known yet


class KeyView(Protocol):
    """What routing asks about keys (answers from memory; misses are looked up by the caller)."""

    def is_key(self, table: str, column: str) -> bool:
        """Is ``column`` a single-column unique key of ``table`` (``schema.name``) routed by key?"""

    def consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        """Is ``a.a_col = b.b_col`` a shop-consistent foreign key (either way round)?"""

    def shop_of(self, table: str, column: str, key: str) -> KeyShop:
        """The shop owning ``key`` (its text form), None if no shop has it, or PENDING."""


def label(table: str) -> str:
    """A table as written (``orders``, ``public.orders``) as ``schema.name``."""
    return table if "." in table else f"{DEFAULT_SCHEMA}.{table}"


@dataclass(frozen=True, slots=True)
class OccurrenceShops:
    """Per occurrence: the shops it touches (None: unknown), and whether some key is being looked up."""

    shops: tuple[frozenset[int] | None, ...]
    pending: bool = False
    unresolved: bool = False  # a tenant-column pin whose $n has no usable value


def wants_keys(stmt: StatementAnalysis) -> bool:
    """Could keys or foreign keys tell this statement anything the pins did not?"""
    return bool(stmt.keys or stmt.edges) and any(not o.pins for o in stmt.occurrences)


def occurrence_shops(
    stmt: StatementAnalysis, params: BoundParams | None, tenant_tables: Set[str], view: KeyView
) -> OccurrenceShops:
    occs = stmt.occurrences
    shops: list[set[int] | None] = []
    unresolved = pending = False
    for occ in occs:
        if not occ.pins:
            shops.append(None)
            continue
        resolved = [resolve_all(ref, params) for ref in occ.pins]
        unresolved = unresolved or None in resolved
        shops.append({shop for values in resolved if values is not None for shop in values})
    empty: set[int] = set()
    for cond in stmt.keys:
        occ = occs[cond.occ]
        if shops[cond.occ] is not None or not is_tenant_table(occ.table, tenant_tables):
            continue
        table = label(occ.table)
        if not view.is_key(table, cond.column):
            continue
        keys = key_texts(cond.values, params)
        if keys is None:
            continue
        found: set[int] = set()
        for key in keys:
            shop = view.shop_of(table, cond.column, key)
            if isinstance(shop, Pending):
                pending = True
            elif shop is not None:
                found.add(shop)
        if found:
            shops[cond.occ] = found
        elif not pending:
            empty.add(cond.occ)
    _spread(stmt, shops, view)
    out = tuple(frozenset(s) if s is not None else (frozenset() if i in empty else None)
                for i, s in enumerate(shops))
    return OccurrenceShops(out, pending, unresolved)


def keyed_query_shops(
    stmt: StatementAnalysis, params: BoundParams | None, tenant_tables: Set[str], view: KeyView
) -> QueryShops:
    """:func:`~pgtenantproxy.routing.identify.query_shops` with keys and foreign keys as evidence."""
    found = occurrence_shops(stmt, params, tenant_tables, view)
    shops: set[int] = set()
    unpinned = tenant = False
    for occ, touched in zip(stmt.occurrences, found.shops, strict=True):
        if not is_tenant_table(occ.table, tenant_tables):
            continue
        tenant = True
        if touched is None:
            unpinned = True
        else:
            shops.update(touched)
    nowhere = tenant and not shops and not unpinned and not found.pending
    return QueryShops(frozenset(shops), unpinned, found.unresolved, found.pending, nowhere)


def _spread(stmt: StatementAnalysis, shops: list[set[int] | None], view: KeyView) -> None:
    """Shops flow along tenant-column links and consistent foreign keys until nothing changes."""
    occs = stmt.occurrences
    flows = [(a, b, both) for a, b, both in stmt.links]
    for e in stmt.edges:
        if view.consistent(label(occs[e.a].table), e.a_col, label(occs[e.b].table), e.b_col):
            flows.append((e.a, e.b, e.both))
    if not flows:
        return
    changed = True
    while changed:
        changed = False
        for a, b, both in flows:
            for src, dst in ((a, b), (b, a)) if both else ((a, b),):
                have = shops[src]
                if not have:
                    continue
                target = shops[dst]
                if target is None:
                    shops[dst] = set(have)
                    changed = True
                elif not have <= target:
                    target |= have
                    changed = True


# -- key values ---------------------------------------------------------------------------------

def key_texts(values: Sequence[KeyValue], params: BoundParams | None) -> list[str] | None:
    """The keys named, as text (integers in decimal, UUIDs in canonical form), or None if unreadable."""
    out: list[str] = []
    for value in values:
        if value.text is not None:
            out.append(value.text)
            continue
        found = params.raw(value.param) if params is not None and value.param is not None else None
        if found is None:
            return None
        raw, fmt, oid = found
        if raw is None:
            continue  # = NULL matches nothing
        oid = oid or CAST_OIDS.get(value.cast or "", 0)
        if value.array:
            elements = param_array(raw, fmt, oid)
            if elements is None:
                return None
            out.extend(elements)
            continue
        text = param_text(raw, fmt, oid)
        if text is None:
            return None
        out.append(text)
    return out


def canonical(key: str, kind: str) -> str | None:
    """A key's text as the directory stores it: ``int`` keys in decimal, ``uuid`` canonical."""
    if kind == "int":
        value = int_text(key)
        return None if value is None else str(value)
    if kind == "uuid":
        try:
            return str(uuid.UUID(key.strip()))
        except ValueError:
            return None
    return key


@dataclass(frozen=True)
class AnyOwner:
    """A :class:`KeyView` that says every key has an owner (``shop``): for the readiness recorder,
    which asks whether a statement *could* be placed once its keys' shops are known."""

    keys: Callable[[str, str], bool]
    fks: Callable[[str, str, str, str], bool]
    shop: int = -1

    def is_key(self, table: str, column: str) -> bool:
        return self.keys(table, column)

    def consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        return self.fks(a, a_col, b, b_col)

    def shop_of(self, table: str, column: str, key: str) -> KeyShop:
        return self.shop


def names_no_shop(
    statements: Sequence[tuple[StatementAnalysis, BoundParams | None]],
    idents: Sequence[Identification],
    tenant_tables: Set[str],
    view: KeyView,
) -> bool:
    """Does some statement touch tenant tables with no shop, even once its keys' shops are known?
    (DDL aside: it is not routed by shop.)"""
    for (stmt, params), ident in zip(statements, idents, strict=True):
        if ident.shop_id is not None or ident.reason in ("nowhere", "key_pending") or stmt.kind == "ddl":
            continue
        if not any(is_tenant_table(o.table, tenant_tables) for o in stmt.occurrences):
            continue
        if not wants_keys(stmt):
            return True
        found = keyed_query_shops(stmt, params, tenant_tables, view)
        if found.unpinned or len(found.shops) != 1 or found.unresolved:
            return True
    return False
