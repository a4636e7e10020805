"""What a unit touches, for the write routing of ``tenant_primary`` shops (pure).

After a shop's write cutover its rows live on its tenant database, so a unit
of that shop may run there even when it writes or opens a transaction. Which
units may: :func:`touch` summarises a unit's statements (with their
identifications) into a :class:`Touch`, and the dispatcher decides from it.

A statement is *movable* (it may run on a shop's tenant database, in that
shop's context) when it is understood and is a SELECT/INSERT/UPDATE/DELETE,
or plain transaction control (BEGIN, COMMIT, ROLLBACK, savepoints); every
table it names is a tenant table (not a temporary table shadowing one); and
it calls nothing outside the read allow-list except functions whose effect is
the same on any database holding the shop's rows (sequences, random values,
the clock, casts, system columns). SET, SHOW, DDL, COPY, CALL, DO, advisory
locks, session-dependent functions and every user-defined function are not
movable: they stay where the session's own server is (unified), or are
refused inside a tenant transaction.

Invariants: a unit is routed to shop N's database only when every statement
is movable, no statement touching tenant tables lacks a single shop, and the
shops named are exactly {N}; a statement with no table at all (``SELECT 1``,
``COMMIT``) names no shop and is *neutral*.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

from pgtenantproxy.routing import functions
from pgtenantproxy.routing.identify import Identification
from pgtenantproxy.routing.model import StatementAnalysis
from pgtenantproxy.routing.tables import is_shadowed, is_tenant_table

#: Functions outside the read allow-list a movable statement may still call.
MOVABLE_FUNCTIONS = frozenset(
    """
    nextval currval lastval setval random setseed gen_random_uuid uuid_generate_v1 uuid_generate_v4
    clock_timestamp timeofday pg_sleep pg_sleep_for pg_sleep_until
    """.split()
)
_MOVABLE_KINDS = frozenset({"select", "insert", "update", "delete", "transaction"})
_MOVABLE_TX = frozenset({"begin", "commit", "rollback", "savepoint", "release", "rollback_to"})


@dataclass(frozen=True, slots=True)
class Touch:
    """What one unit touches (its statements together)."""

    #: Shops named by the statements that touch tenant tables.
    shops: frozenset[int] = frozenset()
    #: Some statement touching tenant tables names no single shop.
    unknown: bool = False
    #: Some statement names a table that is not a tenant table (or a temp table shadowing one).
    global_tables: bool = False
    #: Some statement writes rows.
    writes: bool = False
    #: Every statement may run on a shop's tenant database (see the module docstring).
    movable: bool = True
    #: A statement opens, ends or nests a transaction, or locks rows.
    transactional: bool = False

    def only(self, shop_id: int) -> bool:
        """May the unit run on ``shop_id``'s tenant database (nothing else touched)?"""
        return self.movable and not self.unknown and self.shops <= {shop_id}

    @property
    def single(self) -> int | None:
        """The one shop this unit belongs to, if it may run on that shop's database."""
        if self.movable and not self.unknown and len(self.shops) == 1:
            return next(iter(self.shops))
        return None

    @property
    def quiet(self) -> bool:
        """A plain read: no write, no lock, no transaction control."""
        return not self.writes and not self.transactional


def _unsafe_movable(unsafe: str) -> bool:
    if unsafe.startswith("::") or unsafe in functions.SYSTEM_COLUMNS:
        return True
    return unsafe.removeprefix("pg_catalog.") in MOVABLE_FUNCTIONS


def statement_movable(stmt: StatementAnalysis) -> bool:
    if not stmt.understood or stmt.kind not in _MOVABLE_KINDS or stmt.set_shop is not None:
        return False
    if stmt.kind == "transaction":
        return stmt.tx is not None and stmt.tx.op in _MOVABLE_TX
    return all(_unsafe_movable(u) for u in stmt.unsafe)


def touch(
    statements: Sequence[StatementAnalysis],
    idents: Sequence[Identification],
    tenant_tables: Set[str],
    shadowed: Set[str] = frozenset(),
) -> Touch:
    shops: set[int] = set()
    unknown = global_tables = writes = transactional = False
    movable = True
    for stmt, ident in zip(statements, idents, strict=True):
        movable = movable and statement_movable(stmt)
        writes = writes or stmt.has_write
        transactional = transactional or stmt.kind == "transaction" or stmt.has_locking
        tenant = False
        for occ in stmt.occurrences:
            shadows = is_shadowed(occ.table, shadowed)
            if shadows or not is_tenant_table(occ.table, tenant_tables):
                global_tables = True
            else:
                tenant = True
        if tenant:
            if ident.shop_id is None:
                unknown = unknown or ident.reason != "nowhere"  # keys that exist nowhere touch no row
            else:
                shops.add(ident.shop_id)
    movable = movable and not global_tables
    return Touch(frozenset(shops), unknown, global_tables, writes, movable, transactional)
