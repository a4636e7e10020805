"""What the analyser learns about SQL text: immutable values, cached per text.

An analysis is *table-set agnostic*: it records every table occurrence with the
shop ids that pin it (the tenant-column equalities that restrict the rows of
that occurrence which can affect the result), not whether the table is a tenant
table. Which tables are tenant tables is decided at routing time, so a cached
analysis stays valid when the tenancy registry changes.

A pin is a :class:`ShopRef`: a literal shop id, a ``$n`` parameter resolved
from the Bind message later, or "unknown" (a value the analyser cannot read as
a shop id; only recorded for written values, see :mod:`.walker`). An occurrence
whose pin set holds several refs is pinned only if they all resolve to the same
shop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The setting a session uses to declare its shop (``SET pgtenantproxy.shop_id = N``).
SHOP_SETTING = "pgtenantproxy.shop_id"

StatementKind = Literal["select", "insert", "update", "delete", "ddl", "transaction", "set", "show", "other"]


@dataclass(frozen=True, slots=True)
class ShopRef:
    """Where a shop id comes from: a literal, a ``$n`` parameter, or neither (unknown)."""

    value: int | None = None
    param: int | None = None
    #: The type a parameter is cast to in the SQL (``$1::int8``), used to decode binary values.
    cast: str | None = None
    #: The parameter is an array of shop ids (``shop_id = ANY($1)``): any of its elements.
    array: bool = False

    @property
    def known(self) -> bool:
        return self.value is not None or self.param is not None


UNKNOWN_REF = ShopRef()


@dataclass(frozen=True, slots=True)
class TableOccurrence:
    """One appearance of a table in a statement, as written (``schema.name`` or ``name``)."""

    table: str
    pins: frozenset[ShopRef] = frozenset()
    written: bool = False


@dataclass(frozen=True, slots=True)
class KeyValue:
    """What a key column is compared with: a literal (as text), or a ``$n`` parameter.

    ``array``: the value is a list of keys (``= ANY($1)``, ``= ANY('{1,2}')``);
    ``IN (1, 2)`` is recorded as several values instead.
    """

    text: str | None = None
    param: int | None = None
    cast: str | None = None
    array: bool = False


@dataclass(frozen=True, slots=True)
class KeyCondition:
    """``occurrence.column = value [OR ...]`` among the AND-ed conditions restricting the occurrence."""

    occ: int
    column: str
    values: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class ColumnEdge:
    """``a.a_col = b.b_col`` between two occurrences (not the tenant column): rows of ``b`` that can
    affect the result match a row of ``a`` (and the other way round when ``both``)."""

    a: int
    a_col: str
    b: int
    b_col: str
    both: bool = True


@dataclass(frozen=True, slots=True)
class SetShop:
    """A change of ``pgtenantproxy.shop_id`` made by a statement.

    ``action`` is ``set`` (``shop_id`` None when the value is not a shop id),
    ``reset`` (RESET, SET TO DEFAULT, RESET ALL, DISCARD ALL), or ``unknown``
    (``set_config`` with values only known at run time).
    """

    action: Literal["set", "reset", "unknown"]
    shop_id: int | None = None
    local: bool = False


@dataclass(frozen=True, slots=True)
class TxControl:
    """A transaction-control statement, as the session's SET tracking needs it."""

    op: Literal["begin", "commit", "rollback", "savepoint", "release", "rollback_to", "prepare", "other"]
    savepoint: str | None = None
    chain: bool = False


@dataclass(frozen=True, slots=True)
class CopyTarget:
    """A COPY statement as routing needs it: where its data goes or comes from, and its layout.

    Options are as written (None: PostgreSQL's default); ``header`` is true for ``HEADER
    true|on|1|match``; ``other`` names the options the proxy does not read (``force_null``,
    ``freeze``, ``default``, ``on_error``...) and ``where`` for a ``WHERE`` clause.
    """

    #: The table as written (``schema.name`` or ``name``); None for ``COPY (query) TO``.
    table: str | None
    #: The column list (identifiers as stored); None: every column, in the table's order.
    columns: tuple[str, ...] | None = None
    #: The tenant column's position in ``columns`` (None: no list, or not in it).
    tenant_index: int | None = None
    is_from: bool = False
    #: STDIN / STDOUT (not a file or a program on the server).
    stdio: bool = True
    format: str = "text"
    delimiter: str | None = None
    null: str | None = None
    quote: str | None = None
    escape: str | None = None
    header: bool = False
    encoding: str | None = None
    other: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatementAnalysis:
    kind: StatementKind
    understood: bool = True
    #: A SELECT/VALUES that reads only: no locking, no writes, nothing outside the allow-list.
    read_only: bool = False
    has_write: bool = False
    has_locking: bool = False
    #: Functions, casts and columns outside the allow-list (why a SELECT is not read_only).
    unsafe: tuple[str, ...] = ()
    occurrences: tuple[TableOccurrence, ...] = ()
    #: Every tenant-column equality that pins an occurrence, and every written shop value, in order.
    shop_refs: tuple[ShopRef, ...] = ()
    set_shop: SetShop | None = None
    #: The setting a SET/RESET statement changes, lower case ("search_path"; "all" for RESET ALL).
    setting: str | None = None
    tx: TxControl | None = None
    #: Temporary tables this statement creates (they may shadow tenant tables by name).
    temp_tables: tuple[str, ...] = ()
    #: Why the statement is not understood.
    note: str | None = None
    #: A COPY statement's table, columns, direction and data format (None: not a COPY).
    copy: CopyTarget | None = None
    #: Key equalities on table occurrences (routing by key), and equalities between occurrences'
    #: columns (pins follow proven foreign keys along them).
    keys: tuple[KeyCondition, ...] = ()
    edges: tuple[ColumnEdge, ...] = ()
    #: Tenant-column links between occurrences, as (from, to, both): pins found at routing time
    #: (keys, foreign keys) spread along them too.
    links: tuple[tuple[int, int, bool], ...] = ()

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o.table for o in self.occurrences))

    @property
    def may_write(self) -> bool:
        """Could change data: writes, and anything not provably harmless (unknown functions too)."""
        return self.has_write or bool(self.unsafe) or not self.understood


@dataclass(frozen=True, slots=True)
class Analysis:
    """The analysis of one SQL text (one Query message or one Parse)."""

    statements: tuple[StatementAnalysis, ...]
    #: pglast fingerprint of the whole text (constants removed): safe for logs.
    fingerprint: str | None = None
    #: Parse error or size limit, when the text could not be analysed.
    error: str | None = None
    #: Shop ids named by ``/* shop_id=N */`` comments in the text.
    comment_shops: frozenset[int] = frozenset()

    @property
    def understood(self) -> bool:
        return self.error is None and all(s.understood for s in self.statements)

    @property
    def kinds(self) -> tuple[StatementKind, ...]:
        return tuple(s.kind for s in self.statements)

    @property
    def read_only(self) -> bool:
        return bool(self.statements) and all(s.read_only for s in self.statements)

    @property
    def has_write(self) -> bool:
        return any(s.has_write for s in self.statements)

    @property
    def has_locking(self) -> bool:
        return any(s.has_locking for s in self.statements)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for s in self.statements for t in s.tables))

    @property
    def shop_refs(self) -> tuple[ShopRef, ...]:
        return tuple(r for s in self.statements for r in s.shop_refs)

    @property
    def set_shop(self) -> SetShop | None:
        """The last change of the shop setting in the text, if any."""
        found = None
        for s in self.statements:
            if s.set_shop is not None:
                found = s.set_shop
        return found
