"""One client unit on a tenant connection, sans-IO: one write out, one answer back.

:meth:`TenantUnit.request` gives the bytes to write, all at once: what the
borrowed connection needs first, then the unit as the client sent it.

1. **Settings** that differ from the connection's (``SET a = '..'; SET b = '..'``,
   a simple Query with a ReadyForQuery of its own, so it is never part of the
   transaction that follows). Skipped for a transaction's continuation.
2. The **head**, extended-protocol messages with no Sync of their own, so that
   a failure in them makes the server skip the unit (up to the next Sync):
   the deferred **BEGIN** (Parse/Bind/Execute of the unnamed statement, as pgjdbc
   sends it), then **re-preparing** (Close + Parse of each named statement the
   unit binds or describes that the connection lacks or has with another text;
   the unnamed one always). A simple-Query unit after a head is followed by a
   Sync of ours: its ReadyForQuery is skipped.
3. The unit.

A COPY FROM STDIN the proxy started itself (``copy_in``, :mod:`.copy_in`) has its
answer edited first (:class:`~pgtenantproxy.protocol.copy_answers.CopyInReply`), and
a simple Query's trailing Sync of ours is not in the request: a server in copy-in
mode would ignore it, so the machine sends it after the COPY's data
(:attr:`TenantUnit.sync_after_copy`).

:meth:`TenantUnit.feed` takes the answer and returns what the client gets:
everything the settings and the head caused is removed (their answers are
counted: ParseComplete, BindComplete, CommandComplete, CloseComplete); the
unit's own answer is held back (a read that may still fall back) or passed as
it comes (``primary``, or once :data:`HOLD_LIMIT` bytes were released).

Outcomes (:class:`Outcome`): ``DONE``; ``FALLBACK`` when nothing reached the
client and the unit may run elsewhere (a failed head, which made the server
skip the unit; a read answered with an error that means the tenant side is
broken; a lost connection or a timeout before any byte); ``FAILED`` when bytes
had reached the client. The connection's :class:`TenantLink` state
(``prepared``, ``settings``) is updated as the request is built and cleared
when the preparations failed.
"""

from __future__ import annotations

import enum
import struct

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.copy_answers import CopyInReply
from pgtenantproxy.protocol.errors import QUERY_CANCELED
from pgtenantproxy.protocol.framing import FrameScanner
from pgtenantproxy.protocol.messages import SYNC_MESSAGE, CloseOrDescribe, ErrorFields, Parse, Query, frame
from pgtenantproxy.session.contract import TenantLink
from pgtenantproxy.session.statements import PreparedStatements

#: Bytes of a read's answer held back for a possible fallback before they are released.
HOLD_LIMIT = 256 * 1024

#: SQLSTATE classes that mean "the tenant side is broken", not "the query is wrong".
BROKEN_CLASSES = ("08", "53", "57", "58", "XX", "3D", "28", "42P01", "42703", "42883", "42704", "26000")

#: What a link may hold under a statement name when it is not known which text (or whether at all):
#: a later Parse of the name is preceded by a Close, a Bind of it re-prepares.
UNKNOWN_SQL = "\x00unknown"

_BIND_UNNAMED = frame(c.BIND, b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
_EXECUTE_UNNAMED = frame(c.EXECUTE, b"\x00" + struct.pack("!i", 0))
#: Asynchronous messages: they may arrive at any time and answer nothing.
_ASYNC = frozenset({c.NOTICE_RESPONSE, ord("A"), c.PARAMETER_STATUS})


class Outcome(enum.Enum):
    DONE = "done"
    FALLBACK = "fallback"
    FAILED = "failed"  # bytes already reached the client, then the tenant failed


#: Key prefix, in a link's ``settings``, of the SQL-level prepared statements it holds (value: the PREPARE).
SQL_PREPARED = "\x00prepared:"


class Phase(enum.Enum):
    """Where the answer is: the settings' reply, the head's, the unit's, our Sync's, or done."""

    SETTINGS = "settings"
    HEAD = "head"
    SKIPPED = "skipped"  # the head failed: the server skips to the next Sync
    BODY = "body"
    TRAILER = "trailer"
    DONE = "done"


def is_broken(sqlstate: str) -> bool:
    return sqlstate.startswith(BROKEN_CLASSES)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class TenantUnit:
    def __init__(
        self,
        unit: Unit,
        statements: PreparedStatements,
        settings: dict[str, str],
        *,
        primary: bool = False,
        begin_sql: str | None = None,
        replay: tuple[str, ...] = (),
        continuing: bool = False,
        failed_tx: bool = False,
        copy_in: CopyInReply | None = None,
        sql_prepares: tuple[tuple[str, str, str], ...] = (),
    ) -> None:
        self.unit = unit
        self.statements = statements
        self.settings = settings
        self.primary = primary
        self.begin_sql = begin_sql
        self.replay = replay
        self.continuing = continuing
        self.failed_tx = failed_tx
        self.copy_in = copy_in
        self.sql_prepares = sql_prepares
        #: Our Sync is owed after the COPY's data (see the module docstring).
        self.sync_after_copy = False
        self.phase = Phase.BODY
        #: Answers of the head still to skip (ParseComplete, BindComplete, CommandComplete, CloseComplete).
        self._head_left = 0
        self._trailer = False
        self._buf = b""
        self._scanner = FrameScanner(frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE}))
        self._held: list[bytes] = []
        self._held_size = 0
        self._link: TenantLink | None = None
        #: The answer is passed to the client as it comes (no fallback possible any more).
        self.forwarded = primary
        #: The unit's answer held an ErrorResponse (metrics count the unit as an error).
        self.answered_error = False
        self.broken_error = False
        self.prep_failed: str | None = None
        #: The head failed, so the server skipped the unit: it did not run.
        self.skipped = False
        #: The client cancelled this unit: 57014 is the answer it asked for.
        self.client_cancelled = False
        #: The transaction status of the last ReadyForQuery.
        self.status = c.TX_IDLE

    # --- the request ---------------------------------------------------------------
    def request(self, link: TenantLink) -> bytes:
        """Everything to write on ``link``, in one piece (see the module docstring)."""
        self._link = link
        out: list[bytes] = []
        if not self.continuing:
            settings = self._settings(link)
            if settings:
                out.append(settings)
                self.phase = Phase.SETTINGS
        head = self._head(link)
        if head:
            out.append(head)
            if self.phase is Phase.BODY:
                self.phase = Phase.HEAD
        out.append(self.unit.raw())
        if head and self.unit.kind is UnitKind.QUERY:
            if self.copy_in is None:
                out.append(SYNC_MESSAGE)
            else:
                self.sync_after_copy = True
            self._trailer = True
        return b"".join(out)

    def _settings(self, link: TenantLink) -> bytes:
        wanted = {k: v for k, v in self.settings.items() if link.settings.get(k) != v}
        if not wanted:
            return b""
        link.settings.update(wanted)
        return Query("".join(f"SET {name} = {_literal(value)};" for name, value in wanted.items())).build()

    def _head(self, link: TenantLink) -> bytes:
        out: list[bytes] = []
        if self.begin_sql is not None:
            for sql in (self.begin_sql, *self.replay):  # the lazy BEGIN, and what the proxy answered after it
                out += [Parse("", sql, ()).build(), _BIND_UNNAMED, _EXECUTE_UNNAMED]
                self._head_left += 3
        for name, prepare, deallocate in self.sql_prepares:  # SQL-level statements EXECUTE needs
            key = SQL_PREPARED + name
            had = link.settings.get(key)
            if had == prepare:
                continue
            for sql in ((deallocate, prepare) if had is not None else (prepare,)):
                out += [Parse("", sql, ()).build(), _BIND_UNNAMED, _EXECUTE_UNNAMED]
                self._head_left += 3
            link.settings[key] = prepare
        if not self.failed_tx and self.unit.kind is UnitKind.EXTENDED:
            out += self._preparation(link)
        return b"".join(out)

    def _preparation(self, link: TenantLink) -> list[bytes]:
        """Close stale names the unit re-parses; Close + Parse what it uses but did not parse."""
        out: list[bytes] = []
        prepared = link.prepared
        parsed_here: set[str] = set()
        for msg in self.unit.messages:
            if msg.type == c.PARSE:
                parsed_here.add(msg.name)
                if msg.name and msg.name in prepared:
                    out.append(CloseOrDescribe("S", msg.name).build_close())
                    del prepared[msg.name]
                    self._head_left += 1
                continue
            name = msg.statement
            if name is None or name in parsed_here:
                continue
            parsed_here.add(name)
            record = self.statements.get(name)
            if record is None:
                continue  # unknown here too: the server says so, as it would directly
            if name == "" or prepared.get(name) != record.sql:
                out += [CloseOrDescribe("S", name).build_close(), record.raw()]
                self._head_left += 2
                if name:
                    prepared[name] = record.sql or ""
        return out

    # --- the answer ----------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` the client gets now (``phase`` is DONE after the last)."""
        if self.phase is not Phase.BODY:
            data = self._skip(data)
            if not data:
                return b""
        return self._body(data)

    def _skip(self, data: bytes) -> bytes:
        """Consume the answers of what the proxy sent itself; return the rest (the unit's answer)."""
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        while pos + 5 <= n and self.phase not in (Phase.BODY, Phase.DONE):
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if end > n:
                break
            mtype, body = buf[pos], buf[pos + 5 : end]
            pos = end
            self._skipped(mtype, body)
        self._buf = b"" if self.phase in (Phase.BODY, Phase.DONE) else buf[pos:]
        return buf[pos:] if self.phase is Phase.BODY else b""

    def _skipped(self, mtype: int, body: bytes) -> None:
        phase = self.phase
        if mtype == c.ERROR_RESPONSE:
            if phase is not Phase.TRAILER and self.prep_failed is None:
                self.prep_failed = ErrorFields.parse(body).message or "error"
                self._forget_preparations()
            if phase is Phase.HEAD:
                self.phase = Phase.SKIPPED
                self.skipped = True
        elif mtype == c.READY_FOR_QUERY:
            self.status = body[0] if body else c.TX_IDLE
            if phase is Phase.SETTINGS:
                self.phase = Phase.HEAD if self._head_left else Phase.BODY
            else:  # SKIPPED or TRAILER: the last answer of this unit
                self.phase = Phase.DONE
        elif phase is Phase.HEAD and mtype not in _ASYNC:
            self._head_left -= 1
            if not self._head_left:
                self.phase = Phase.BODY

    def _forget_preparations(self) -> None:
        """The preparations failed: what the link has is not known any more (each name may exist)."""
        link = self._link
        if link is not None:
            for name in link.prepared:
                link.prepared[name] = UNKNOWN_SQL
            link.settings.clear()

    def _body(self, data: bytes) -> bytes:
        copy_in = self.copy_in
        if copy_in is not None and not copy_in.done:
            _, edited, rest = copy_in.feed(data)
            data = edited + rest
            if not data:
                return b""
        if self._trailer:
            data = self._body_exact(data)
        else:
            for frame_ in self._scanner.feed(data):
                if frame_.type == c.READY_FOR_QUERY:
                    self.status = frame_.body[0] if frame_.body else c.TX_IDLE
                    self.phase = Phase.DONE
                else:
                    self._error(frame_.body)
        if self.forwarded:
            return data
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT and not self.broken_error and self.phase is Phase.BODY:
            return self.release()
        return b""

    def _body_exact(self, data: bytes) -> bytes:
        """The unit's answer up to its ReadyForQuery, message by message (our Sync's answer follows it)."""
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        while pos + 5 <= n:
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if end > n:
                break
            mtype, body = buf[pos], buf[pos + 5 : end]
            pos = end
            if mtype == c.ERROR_RESPONSE:
                self._error(body)
            elif mtype == c.READY_FOR_QUERY:
                self.status = body[0] if body else c.TX_IDLE
                self.phase, self._buf = Phase.TRAILER, b""
                self._skip(buf[pos:])
                return buf[:pos]
        self._buf = buf[pos:]
        return buf[:pos]

    def _error(self, body: bytes) -> None:
        self.answered_error = True
        if self.forwarded:
            return
        sqlstate = ErrorFields.parse(body).sqlstate
        if is_broken(sqlstate) and not (self.client_cancelled and sqlstate == QUERY_CANCELED):
            self.broken_error = True

    def release(self) -> bytes:
        """Held-back bytes, now for the client (no fallback after this)."""
        self.forwarded = True
        data = b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        return data

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def outcome(self) -> Outcome:
        """How the finished unit ended (see the module docstring)."""
        if self.skipped or (self.prep_failed is not None and not self.forwarded):
            return Outcome.FALLBACK
        if self.broken_error and not self.forwarded:
            return Outcome.FALLBACK
        return Outcome.DONE
