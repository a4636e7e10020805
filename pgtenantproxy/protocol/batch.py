"""Client messages grouped into the units a router decides on, sans-IO.

A unit is what one ReadyForQuery answers:

* a simple ``Query`` ('Q'), possibly several statements;
* an extended-protocol batch: Parse/Bind/Describe/Execute/Close up to and
  including ``Sync``;
* a ``FunctionCall`` ('F').

Two cases cannot wait for a whole unit, and are *pinned* to the session's own
(unified) server: a ``Flush`` (the client wants answers before its Sync, so
what came so far is released at once, and the rest of that batch follows it),
and COPY sub-protocol messages (CopyData/CopyDone/CopyFail), which belong to a
COPY that is always running on the unified server. A simple ``Query`` ends
the server's extended batch (asyncpg prepares with Parse/Describe/Flush, then
may send a ``BEGIN`` Query before the Bind/Execute/Sync), so the batch after
it is not pinned.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.records import ClientMessage

_EXTENDED = frozenset({c.PARSE, c.BIND, c.DESCRIBE, c.EXECUTE, c.CLOSE})
_COPY = frozenset({c.COPY_DATA, c.COPY_DONE, c.COPY_FAIL})


class UnitKind(enum.StrEnum):
    EXTENDED = "extended"
    QUERY = "query"
    FUNCTION = "function"
    COPY = "copy"
    TERMINATE = "terminate"
    OTHER = "other"


@dataclass
class Unit:
    """Messages the router sends to one place.

    ``complete`` is True when the unit ends with its Sync/Query/FunctionCall
    (one ReadyForQuery owed); ``pinned`` units must go to the unified server.
    """

    messages: list[ClientMessage] = field(default_factory=list)
    complete: bool = False
    pinned: bool = False
    kind: UnitKind = UnitKind.EXTENDED
    #: The unit's bytes when they arrived as one chunk of their own (forwarded as they came).
    wire: bytes | None = None

    def raw(self) -> bytes:
        wire = self.wire
        if wire is not None:
            return wire
        return b"".join(m.raw() for m in self.messages)


class BatchAssembler:
    """Feed client messages in order; take out units ready to route."""

    def __init__(self) -> None:
        self._pending: list[ClientMessage] = []
        self._pinned = False  # a Flush released part of the current batch already

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def feed(self, msg: ClientMessage) -> list[Unit]:
        mtype = msg.type
        if mtype in _EXTENDED:
            self._pending.append(msg)
            return []
        if mtype == c.SYNC:
            return [self._close(msg)]
        if mtype == c.FLUSH:
            self._pending.append(msg)
            unit = Unit(self._pending, complete=False, pinned=True)
            self._pending, self._pinned = [], True
            return [unit]
        out = self._release_pending()
        if mtype == c.QUERY:
            out.append(Unit([msg], complete=True, kind=UnitKind.QUERY))
            self._pinned = False  # a simple Query ends whatever extended batch came before it
        elif mtype == c.FUNCTION_CALL:
            out.append(Unit([msg], complete=True, pinned=True, kind=UnitKind.FUNCTION))
        elif mtype in _COPY:
            out.append(Unit([msg], pinned=True, kind=UnitKind.COPY))
        elif mtype == c.TERMINATE:
            out.append(Unit([msg], pinned=True, kind=UnitKind.TERMINATE))
        else:
            out.append(Unit([msg], pinned=True, kind=UnitKind.OTHER))
        return out

    def _close(self, sync: ClientMessage) -> Unit:
        self._pending.append(sync)
        unit = Unit(self._pending, complete=True, pinned=self._pinned)
        self._pending, self._pinned = [], False
        return unit

    def _release_pending(self) -> list[Unit]:
        """Messages without their Sync before a Query/COPY message: unified, in order."""
        if not self._pending:
            return []
        unit = Unit(self._pending, complete=False, pinned=True)
        self._pending = []
        self._pinned = True
        return [unit]
