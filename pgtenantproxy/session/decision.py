"""The router's answer for one unit: where it runs, or what the proxy does instead.

One small frozen dataclass per kind of answer, all sharing the labels metrics
and the readiness recorder read (:class:`Decision`):

* :class:`ToUnified`: the session's own (unified) server;
* :class:`ToTenant`: shop N's database (``primary``: a cut-over shop's unit, which
  may write and open a transaction there and never falls back);
* :class:`Refuse`: raise :attr:`Refuse.error` instead, on the server holding the
  session's transaction;
* :class:`Hold`: wait while the shop's cutover hold lasts, then decide again;
* :class:`AnswerBegin` / :class:`AnswerEnd`: the proxy answers a lazy BEGIN (and a
  COMMIT/ROLLBACK right after it) itself;
* :class:`Aside`: Parse/Describe only, run on unified outside the deferred
  transaction (the client's ReadyForQuery says it is still in one);
* :class:`CopyFirstRow`: a COPY FROM STDIN whose database its first row decides:
  the proxy starts it itself, reads that row, then asks again with
  :attr:`~pgtenantproxy.session.facts.SessionFacts.copy_first_row` set
  (:mod:`pgtenantproxy.session.copy_in`).

:attr:`Decision.target` is a :class:`Target` (a label for metrics), fixed per
class; code dispatches on the class (``match``), never on strings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from pgtenantproxy.protocol.copy_rows import CopyFormat

TEXT_FORMAT = CopyFormat()


class Target(enum.StrEnum):
    UNIFIED = "unified"
    TENANT = "tenant"
    REFUSE = "refuse"
    HOLD = "hold"
    BEGIN = "begin"
    LOCAL = "local"
    ASIDE = "aside"
    COPY = "copy"


class Refusal(NamedTuple):
    """An error the proxy raises instead of running a unit."""

    sqlstate: str
    message: str
    hint: str


@dataclass(frozen=True, slots=True)
class Decision:
    shop_id: int | None = None
    reason: str = ""
    source: str | None = None
    #: For metrics: the unit's statement kind (select|insert|update|delete|other) and first table.
    kind: str = "other"
    table: str = ""
    #: What the router wants back in ``completed`` (the readiness recorder's note); opaque here.
    note: object | None = None
    #: The catalog epoch a unified write was decided under (0: not tracked): a proxy acknowledges a
    #: newer epoch only once such units of older epochs have completed.
    epoch: int = 0

    target: ClassVar[Target]

    @property
    def tenant(self) -> bool:
        return self.target is Target.TENANT


#: (the client's SQL text, the text unified runs instead) pairs: a federated read.
Rewrites = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ToUnified(Decision):
    #: Texts unified runs instead of the client's (federated reads): applied to the unit's Query/Parse
    #: messages and to the statements it binds.
    rewrites: Rewrites = ()
    target: ClassVar[Target] = Target.UNIFIED


@dataclass(frozen=True, slots=True)
class ToTenant(Decision):
    #: A tenant_primary shop's unit: may write and open a transaction there; never falls back.
    primary: bool = False
    #: SQL-level prepared statements the unit EXECUTEs: (name, its PREPARE, its DEALLOCATE), defined on
    #: the connection first when it lacks them.
    sql_prepares: tuple[tuple[str, str, str], ...] = ()
    #: Keep the connection after the unit (it may draw from a sequence) until the session's next
    #: statement, so a lastval()/currval() right after it is answered there.
    linger: bool = False
    target: ClassVar[Target] = Target.TENANT


_NO_REFUSAL = Refusal("0A000", "", "")


@dataclass(frozen=True, slots=True)
class Refuse(Decision):
    error: Refusal = _NO_REFUSAL
    target: ClassVar[Target] = Target.REFUSE


@dataclass(frozen=True, slots=True)
class Hold(Decision):
    #: Is the shop still held (polled), and the longest wait in seconds.
    held: Callable[[], bool] = bool
    hold_s: float = 0.0
    #: Called once with a callback the waiter invokes when ``held`` may have turned false (no polling
    #: delay): a key lookup's completion. None: polled only.
    wake: Callable[[Callable[[], None]], None] | None = None
    #: The error when the wait times out (None: the cutover hold's 55P03).
    timeout_error: Refusal | None = None
    target: ClassVar[Target] = Target.HOLD


@dataclass(frozen=True, slots=True)
class AnswerBegin(Decision):
    #: The command tag the proxy answers with, and the BEGIN's SQL replayed where the transaction runs.
    tag: str = "BEGIN"
    begin_sql: str = "BEGIN"
    target: ClassVar[Target] = Target.BEGIN


@dataclass(frozen=True, slots=True)
class AnswerEnd(Decision):
    tag: str = "COMMIT"
    target: ClassVar[Target] = Target.LOCAL


@dataclass(frozen=True, slots=True)
class AnswerDeferred(Decision):
    """A statement of a deferred transaction that needs no shop (``SET LOCAL``, ``SAVEPOINT``...): the
    proxy answers it and replays it after the lazy BEGIN wherever the transaction then runs."""

    tag: str = "SET"
    sql: str = ""
    target: ClassVar[Target] = Target.LOCAL


@dataclass(frozen=True, slots=True)
class AnswerLocal(Decision):
    """A statement the proxy answers itself, the transaction staying where it is: ``DEALLOCATE``
    inside a transaction on a shop's database (the client's registry forgets the statements; the
    servers keep theirs, replaced when the client parses the name again)."""

    tag: str = "DEALLOCATE"
    target: ClassVar[Target] = Target.LOCAL


@dataclass(frozen=True, slots=True)
class Aside(Decision):
    rewrites: Rewrites = ()
    target: ClassVar[Target] = Target.ASIDE


@dataclass(frozen=True, slots=True)
class CopyFirstRow(Decision):
    """COPY ... FROM STDIN into a tenant table, run where its first row's shop lives.

    ``shop_id`` is the shop whose transaction the session has open (the COPY runs there
    whatever its rows say), else None. What the proxy needs to read the rows and to
    start the COPY itself: the tenant column's position in a row (from 0), the number
    of columns of a row (the CopyInResponse), and the data format.
    """

    column: int = 0
    columns: int = 1
    format: CopyFormat = TEXT_FORMAT
    target: ClassVar[Target] = Target.COPY


#: The reason of an :class:`Aside` that runs a read of global tables (or of nothing) for a deferred
#: transaction: its error fails the transaction, as directly.
DEFERRED_READ = "deferred_read"
#: The reason of a :class:`ToTenant` that runs lastval()/currval() on the connection that drew the value.
SESSION_SEQUENCE = "session_sequence"

#: Units the session must keep on unified (after a Flush, COPY, a FunctionCall...).
UNIFIED_PINNED = ToUnified(reason="pinned")
