"""``pgtenantproxy.shop_id`` as the session's SETs leave it, across transactions.

The proxy cannot ask the server, so it follows PostgreSQL's rules for a setting:

* ``SET`` / ``SET SESSION`` lasts past the transaction if it commits;
* ``SET LOCAL`` lasts until the transaction ends, committed or not;
* ``RESET`` / ``SET ... TO DEFAULT`` / ``RESET ALL`` / ``DISCARD ALL`` clear it
  (back to the startup value, which is a source of its own);
* a rolled-back transaction (or savepoint) takes its SETs back.

Protocol: the session calls :meth:`before_batch` with the statements of each
unit it sends to unified (units sent to a tenant are reads and change nothing),
and :meth:`on_ready` at each ReadyForQuery, with the status byte and whether an
ErrorResponse came in that unit. ``before_batch`` simulates the unit assuming
success (an implicit transaction, i.e. statements outside a block, commits at
the unit's end); ``on_ready`` confirms or corrects. After an error the proxy
cannot always know which statements ran: when the setting could have moved, the
value becomes UNKNOWN, which identifies no shop (routing goes to unified) until
a later SET or RESET makes it certain again. Changes made inside functions
(``set_config`` in a function body, a procedure's COMMIT) are invisible here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from pgtenantproxy.routing.model import SetShop, StatementAnalysis, TxControl

TX_IDLE, TX_IN_BLOCK, TX_FAILED = ord("I"), ord("T"), ord("E")


class Mark(enum.Enum):
    INVALID = "invalid"  # set to something that is not a shop id
    UNKNOWN = "unknown"  # the proxy lost track (an error after a change)


Value = int | None | Mark


@dataclass
class _Tx:
    pending: Value  # the value a commit keeps
    current: Value  # the value statements see (SET LOCAL changes only this)
    explicit: bool = True
    failed: bool = False  # status 'E': a COMMIT now rolls back
    savepoints: list[tuple[str | None, Value, Value]] = field(default_factory=list)

    def copy(self) -> _Tx:
        return _Tx(self.pending, self.current, self.explicit, self.failed, list(self.savepoints))

    def clean(self, committed: Value) -> bool:
        values = [self.pending, self.current, *(v for _, p, c in self.savepoints for v in (p, c))]
        return all(v == committed for v in values)


@dataclass
class _Unit:
    committed: Value
    tx: _Tx | None
    touched: bool = False  # a statement sets or resets the shop setting
    tx_control: bool = False
    commits: bool = False  # a COMMIT / PREPARE TRANSACTION
    statements: int = 0


class SessionShop:
    def __init__(self) -> None:
        self._committed: Value = None
        self._tx: _Tx | None = None
        self._units: deque[_Unit] = deque()

    @property
    def value(self) -> Value:
        """What the session's next statement sees."""
        return self._tx.current if self._tx is not None else self._committed

    # -- simulation -------------------------------------------------------------------------

    def before_batch(self, statements: Iterable[StatementAnalysis]) -> None:
        snapshot = _Unit(self._committed, self._tx.copy() if self._tx else None)
        for stmt in statements:
            snapshot.statements += 1
            if stmt.tx is not None:
                snapshot.tx_control = True
                snapshot.commits = snapshot.commits or stmt.tx.op in ("commit", "prepare")
                self._control(stmt.tx)
            if stmt.set_shop is not None:
                snapshot.touched = True
                self._set(stmt.set_shop)
        if self._tx is not None and not self._tx.explicit:  # the unit's implicit transaction commits
            self._committed, self._tx = self._tx.pending, None
        self._units.append(snapshot)

    def _frame(self) -> _Tx:
        if self._tx is None:
            self._tx = _Tx(self._committed, self._committed, explicit=False)
        return self._tx

    def _set(self, change: SetShop) -> None:
        value: Value
        if change.action == "reset":
            value = None
        elif change.action == "unknown":
            value = Mark.UNKNOWN
        else:
            value = Mark.INVALID if change.shop_id is None else change.shop_id
        frame = self._frame()
        frame.current = value
        if not change.local:
            frame.pending = value

    def _control(self, tx: TxControl) -> None:
        if tx.op == "begin":
            self._frame().explicit = True
        elif tx.op in ("commit", "prepare", "rollback"):
            if self._tx is not None and tx.op != "rollback" and not self._tx.failed:
                self._committed = self._tx.pending
            self._tx = None
            if tx.chain:
                self._frame().explicit = True
        elif self._tx is not None and tx.op in ("savepoint", "release", "rollback_to"):
            self._savepoint(self._tx, tx)

    @staticmethod
    def _savepoint(frame: _Tx, tx: TxControl) -> None:
        if tx.op == "savepoint":
            frame.savepoints.append((tx.savepoint, frame.pending, frame.current))
            return
        names = [name for name, _, _ in frame.savepoints]
        if tx.savepoint not in names:
            return  # the server refuses it: an error follows
        index = len(names) - 1 - names[::-1].index(tx.savepoint)
        if tx.op == "release":
            del frame.savepoints[index:]
        else:
            _, frame.pending, frame.current = frame.savepoints[index]
            frame.failed = False
            del frame.savepoints[index + 1 :]

    # -- confirmation -----------------------------------------------------------------------

    def on_ready(self, status: int, *, error: bool) -> None:
        """A ReadyForQuery arrived for the oldest unit passed to :meth:`before_batch`."""
        unit = self._units.popleft() if self._units else None
        self._settle(unit, status, error)
        if self._tx is not None and not self._units:
            self._tx.failed = status == TX_FAILED

    def _settle(self, unit: _Unit | None, status: int, error: bool) -> None:
        if not error and status != TX_FAILED:
            if not self._units:
                self._sync_block(status)
            return
        if unit is None:
            unit = _Unit(self._committed, self._tx)
        if self._units:  # later units were simulated on top of this one's success
            if unit.touched or any(u.touched for u in self._units) or not self._is_clean():
                self._lose_track(status)
            return
        self._after_error(unit, status)

    def _is_clean(self) -> bool:
        return self._tx is None or self._tx.clean(self._committed)

    def _sync_block(self, status: int) -> None:
        in_block = status != TX_IDLE
        if not in_block and self._tx is not None:
            if not self._tx.clean(self._committed):
                self._committed = Mark.UNKNOWN
            self._tx = None
        elif in_block and self._tx is None:
            self._tx = _Tx(self._committed, self._committed)

    def _after_error(self, unit: _Unit, status: int) -> None:
        in_block = status != TX_IDLE
        if not unit.touched and (unit.tx is None or unit.tx.clean(unit.committed)):
            # every value in play equals the committed one: nothing can have moved
            self._committed = unit.committed
            self._tx = _Tx(unit.committed, unit.committed) if in_block else None
            return
        # Only a COMMIT that ran can have changed the committed value; a unit that is a
        # lone COMMIT and failed did not run (its transaction rolled back).
        ran_commit = unit.commits and unit.statements > 1
        self._committed = Mark.UNKNOWN if ran_commit else unit.committed
        if not in_block:
            self._tx = None  # whatever was not committed was rolled back
        elif not unit.touched and not unit.tx_control and unit.tx is not None:
            self._tx = unit.tx.copy()  # an error inside a block undoes nothing by itself
        else:
            self._tx = _Tx(Mark.UNKNOWN, Mark.UNKNOWN)

    def _lose_track(self, status: int) -> None:
        self._committed = Mark.UNKNOWN
        self._tx = _Tx(Mark.UNKNOWN, Mark.UNKNOWN) if status != TX_IDLE else None
