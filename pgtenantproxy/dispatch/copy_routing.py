"""Where a COPY runs once some shop's rows live on its own database (``tenant_primary``, ``retired``).

:func:`copy_decision` is asked first by :func:`~pgtenantproxy.dispatch.write_routing.write_decision`
(so only while a shop is ``tenant_primary`` or the session's transaction is pinned to
a shop's database). It answers a :class:`~pgtenantproxy.session.decision.Decision`,
None ("not a COPY decided here": write routing's other rules apply), or
:data:`UNIFIED_AS_USUAL` (the COPY runs on unified exactly as before this feature:
the caller goes on as for any unified unit, and no other write rule applies to it).

* ``COPY t [(cols)] FROM STDIN`` into a tenant table, outside a transaction on
  unified: :class:`~pgtenantproxy.session.decision.CopyFirstRow` (the tenant
  column's position, the row width, the data format). The session machine starts
  the COPY itself and asks again with the first row's shop in
  ``facts.copy_first_row`` (:mod:`pgtenantproxy.session.copy_in`): a
  ``tenant_primary``/``retired`` shop's COPY runs on its database; a shop held by a
  cutover waits; any other shop's (or a COPY without rows) runs on unified as usual.
  Inside a transaction pinned to shop N the COPY runs on N's database, and a first
  row of another shop is refused (0A000).
* Not routed by its rows, so on unified as usual: a position the proxy cannot know
  (no column list and the catalog does not know the table, or a list without the
  tenant column), options it does not read (``WHERE``, ``DEFAULT``, ``ON_ERROR``...),
  a client encoding that may hide ASCII bytes inside characters (SJIS, BIG5, GBK,
  UHC, GB18030, JOHAB), or a transaction already open on unified. (Inside a pinned
  transaction such a COPY is refused by the pinned rule instead.)
* ``COPY (SELECT ... WHERE shop_id = N) TO STDOUT`` (a query of one shop's tenant
  tables, nothing outside the allow-list) for a ``tenant_primary`` shop N: N's
  database, the CopyOut sub-protocol relayed from it;
  the relation form ``COPY t TO STDOUT`` (every shop's rows) stays on unified.

A shop's database has the tenant tables with unified's columns in unified's order
(its schema is a clone), so a position read from unified's catalog holds there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Set
from typing import Protocol

from pgtenantproxy.dispatch.copy_columns import CopyColumns
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.copy_rows import CopyFormat
from pgtenantproxy.routing import RoutedUnit
from pgtenantproxy.routing.model import CopyTarget, StatementAnalysis
from pgtenantproxy.routing.primary import Touch, statement_movable
from pgtenantproxy.routing.tables import is_tenant_table
from pgtenantproxy.session.decision import CopyFirstRow, Decision, Hold, Refuse, ToTenant, ToUnified
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.refusals import copy_row_refusal

#: "Run this COPY on unified, as any unified unit" (see the module docstring).
UNIFIED_AS_USUAL: Decision = ToUnified(reason="copy_unified")

#: Options that do not change how rows are cut or where the tenant column is.
_HARMLESS = frozenset({"freeze", "force_not_null", "force_null", "force_quote"})
#: Client-only encodings: a byte below 0x80 may be part of a character (PostgreSQL's COPY knows it).
_ASCII_UNSAFE = frozenset({
    "sjis", "shiftjis", "mskanji", "win932", "windows932", "shiftjis2004", "big5", "win950", "windows950",
    "gbk", "win936", "windows936", "uhc", "win949", "windows949", "gb18030", "johab",
})  # fmt: skip
_NOT_ALNUM = re.compile(r"[^a-z0-9]")


class CopyView(Protocol):
    """What :func:`copy_decision` reads of a unit (a :class:`.write_routing.UnitView`)."""

    @property
    def routed(self) -> RoutedUnit: ...
    @property
    def touch(self) -> Touch: ...
    @property
    def label(self) -> tuple[str, str]: ...


class CopyLanes(Protocol):
    """What :func:`copy_decision` reads of the catalog (a :class:`.write_routing.Lanes`)."""

    @property
    def primary(self) -> frozenset[int]: ...
    @property
    def holding(self) -> frozenset[int]: ...
    @property
    def copy_columns(self) -> CopyColumns: ...


def copy_decision(
    view: CopyView,
    facts: SessionFacts,
    lanes: CopyLanes,
    tenant_tables: Set[str],
    *,
    held: Callable[[int], Callable[[], bool]],
    hold_s: float,
) -> Decision | None:
    if not lanes.primary and facts.pinned_shop is None:
        return None
    stmt = _copy_statement(view, facts)
    if stmt is None or stmt.copy is None or not stmt.copy.stdio:
        return None
    copy = stmt.copy
    tenant = copy.table is None or is_tenant_table(copy.table, tenant_tables)
    if not tenant or (copy.table is not None and view.touch.global_tables):
        return None  # a global table, or a temporary table shadowing a tenant table
    if copy.is_from:
        return _copy_in(view, facts, lanes, copy, held, hold_s)
    return _copy_out(view, facts, lanes, stmt)


def _copy_statement(view: CopyView, facts: SessionFacts) -> StatementAnalysis | None:
    """The unit's one COPY statement (after the lazy BEGIN that goes with it, if any)."""
    statements = view.routed.statements
    if facts.deferred_begin is not None:
        statements = statements[1:]
    return statements[0] if len(statements) == 1 else None


def _copy_in(
    view: CopyView,
    facts: SessionFacts,
    lanes: CopyLanes,
    copy: CopyTarget,
    held: Callable[[int], Callable[[], bool]],
    hold_s: float,
) -> Decision | None:
    kind, table = view.label
    pinned = facts.pinned_shop
    first = facts.copy_first_row
    if first is not None:  # the session machine asks again, with the first row
        shop = first.shop_id
        if pinned is not None:
            if shop is None or shop == pinned:
                return ToTenant(pinned, "copy_first_row", kind=kind, table=table, primary=True)
            error = copy_row_refusal(copy.table or table, 1, shop_id=shop, runs_on=pinned, transaction=True)
            return Refuse(pinned, "refused", kind=kind, table=table, error=error)
        if shop is not None and shop in lanes.holding:
            return Hold(shop, "held", kind=kind, table=table, held=held(shop), hold_s=hold_s)
        if shop is not None and shop in lanes.primary:
            return ToTenant(shop, "copy_first_row", kind=kind, table=table, primary=True)
        return UNIFIED_AS_USUAL
    if pinned is None and facts.tx_status != c.TX_IDLE:
        return UNIFIED_AS_USUAL  # its transaction is on unified: there, as before
    layout = _layout(copy, lanes.copy_columns)
    fmt = _format(copy, facts)
    if layout is None or fmt is None:
        return None if pinned is not None else UNIFIED_AS_USUAL
    column, columns = layout
    return CopyFirstRow(pinned, "copy_first_row", kind=kind, table=copy.table or table, column=column,
                        columns=columns, format=fmt)


def _layout(copy: CopyTarget, known: CopyColumns) -> tuple[int, int] | None:
    """(the tenant column's position in a row, the row's width), when the proxy can know it."""
    if copy.columns is not None:
        return None if copy.tenant_index is None else (copy.tenant_index, len(copy.columns))
    return known.layout(copy.table) if copy.table is not None else None


def _format(copy: CopyTarget, facts: SessionFacts) -> CopyFormat | None:
    """The data's layout, when the proxy can read it byte by byte."""
    if any(option not in _HARMLESS for option in copy.other):
        return None
    for encoding in (copy.encoding, facts.settings.get("client_encoding")):
        if encoding is not None and _NOT_ALNUM.sub("", encoding.lower()) in _ASCII_UNSAFE:
            return None
    try:
        return CopyFormat.of(copy.format, delimiter=copy.delimiter, null=copy.null, quote=copy.quote,
                             escape=copy.escape, header=copy.header)
    except ValueError:
        return None


def _copy_out(
    view: CopyView, facts: SessionFacts, lanes: CopyLanes, stmt: StatementAnalysis
) -> Decision | None:
    kind, table = view.label
    pinned = facts.pinned_shop
    assert stmt.copy is not None
    if stmt.copy.table is not None:  # every shop's rows of the table
        return None if pinned is not None else UNIFIED_AS_USUAL
    touch = view.touch
    if touch.global_tables or touch.unknown or len(touch.shops) != 1 or not _readable(stmt):
        return None
    (shop,) = touch.shops
    if pinned is not None:
        return ToTenant(pinned, "copy_out", kind=kind, table=table, primary=True) if shop == pinned else None
    if facts.tx_status == c.TX_IDLE and shop in lanes.primary:
        return ToTenant(shop, "copy_out", kind=kind, table=table, primary=True)
    return None


def _readable(stmt: StatementAnalysis) -> bool:
    """Could the COPY's query run on a shop's database (understood, nothing outside the allow-list)?

    Its ``INSERT/UPDATE/DELETE ... RETURNING`` of the shop's rows may: that is where they live.
    """
    return statement_movable(dataclasses.replace(stmt, kind="select"))
