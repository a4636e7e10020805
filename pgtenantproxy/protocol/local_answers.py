"""Answers the proxy gives or removes itself, for transactions it moves (sans-IO).

* :func:`command_complete` + ReadyForQuery: the proxy's own answer to a
  deferred ``BEGIN`` (and a ``COMMIT``/``ROLLBACK`` right after it);
  :func:`extended_reply`: the same for an extended-protocol unit (Parse?
  Bind Describe? Execute Sync), message for message what the server answers
  to a statement that returns no rows; :func:`answerable` tells whether a
  unit has a shape the proxy can answer that way.
* :func:`refusal_unit`: a simple Query that makes the *server* raise the
  proxy's error (``DO ... RAISE``). Running a refusal on the server that holds
  the session's transaction, instead of answering it locally, keeps the
  transaction state honest: the transaction fails there like after any error,
  so a later COMMIT cannot commit half of it.
* :class:`ReplyFilter`: removes the answer to a statement the proxy sent on
  its own (the deferred ``BEGIN``, already answered) from a server's stream:
  its CommandComplete and its ReadyForQuery; anything else that arrives
  meanwhile (notices, notifications, parameter changes, an error) passes. Or
  rewrites the status of a ReadyForQuery (a Parse/Describe-only batch that
  unified answers while the client believes it is in a deferred transaction).
  Or (``quiet``) removes a whole batch of the proxy's own (re-preparing a
  statement on unified) except notices, notifications and parameter changes.
"""

from __future__ import annotations

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.messages import Query, ReadyForQuery, frame
from pgtenantproxy.protocol.records import ClientMessage

COMMAND_COMPLETE = ord("C")
PARSE_COMPLETE = frame(ord("1"), b"")
BIND_COMPLETE = frame(ord("2"), b"")
NO_DATA = frame(ord("n"), b"")
NO_PARAMETERS = frame(ord("t"), b"\x00\x00")
#: What passes a ``quiet`` filter: NoticeResponse, NotificationResponse, ParameterStatus.
_ASYNC = frozenset({ord("N"), ord("A"), ord("S")})
_DOLLAR = "$pgtenantproxy$"


def command_complete(tag: str, status: int) -> bytes:
    """CommandComplete ``tag`` followed by ReadyForQuery ``status``."""
    return frame(COMMAND_COMPLETE, tag.encode("ascii") + b"\x00") + ReadyForQuery(status).build()


def answerable(unit: Unit) -> bool:
    """Is ``unit`` one parameterless statement, run once: ``Parse? Describe(S)? Bind Describe? Execute Sync``?

    Only then can :func:`extended_reply` answer it (names must match: the Bind
    uses the Parse's statement, Describe and Execute the Bind's portal).
    """
    return _shape(unit.messages) is not None


def _shape(messages: list[ClientMessage]) -> list[bytes] | None:
    """The answer per message of an :func:`answerable` unit (None: another shape)."""
    if not messages or messages[-1].type != c.SYNC:
        return None
    out: list[bytes] = []
    parsed: str | None = None
    bind: ClientMessage | None = None
    executed = False
    for msg in messages[:-1]:
        if executed or msg.malformed:
            return None
        if msg.type == c.PARSE and parsed is None and bind is None:
            if msg.parse is None or msg.parse.param_types:
                return None
            parsed = msg.name
            out.append(PARSE_COMPLETE)
        elif msg.type == c.BIND and bind is None:
            if msg.bind is None or msg.bind.params or (parsed is not None and msg.name != parsed):
                return None
            bind = msg
            out.append(BIND_COMPLETE)
        elif msg.type == c.DESCRIBE:
            if msg.target == "P" and bind is not None and msg.portal == bind.portal:
                out.append(NO_DATA)
            elif msg.target == "S" and bind is None and parsed is not None and msg.name == parsed:
                out.append(NO_PARAMETERS + NO_DATA)
            else:
                return None
        elif msg.type == c.EXECUTE and bind is not None and msg.portal == bind.portal:
            executed = True
            out.append(b"")  # the CommandComplete: filled in by extended_reply
        else:
            return None
    return out if executed else None


def statement_answers(unit: Unit) -> list[bytes] | None:
    """The answer per message of an :func:`answerable` unit, the Execute's empty (None: another shape)."""
    return _shape(unit.messages)


def extended_reply(unit: Unit, tag: str, status: int) -> bytes:
    """The server's answer to an :func:`answerable` unit whose statement completes with ``tag``."""
    parts = _shape(unit.messages)
    if parts is None:
        raise ValueError("not an answerable extended unit")
    done = frame(COMMAND_COMPLETE, tag.encode("ascii") + b"\x00")
    return b"".join(p or done for p in parts) + ReadyForQuery(status).build()


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''").replace(_DOLLAR, "") + "'"


def refusal_sql(sqlstate: str, message: str, hint: str) -> str:
    if len(sqlstate) != 5 or not sqlstate.isalnum():
        raise ValueError(f"not a SQLSTATE: {sqlstate!r}")
    return (
        f"DO {_DOLLAR}BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', "
        f"MESSAGE = {_literal(message)}, HINT = {_literal(hint)}; END{_DOLLAR}"
    )


def refusal_unit(sqlstate: str, message: str, hint: str) -> Unit:
    raw = Query(refusal_sql(sqlstate, message, hint)).build()
    return Unit([ClientMessage.of_query(raw[5:])], complete=True, kind=UnitKind.QUERY)


class ReplyFilter:
    """Edit one statement's answer in a server stream, up to its ReadyForQuery.

    ``rewrite_to=None`` *skips* the answer (its CommandComplete and
    ReadyForQuery vanish; other messages pass). With a status byte, every
    message passes, but the client's copy of the ReadyForQuery says
    ``rewrite_to`` (a statement run outside the transaction the client
    believes it is in). ``quiet`` skips every answer but notices,
    notifications and parameter changes (errors too: the proxy's own
    batch). :meth:`feed` returns ``(for the relay's own bookkeeping, for the
    client, the rest)``: the rest (after the
    ReadyForQuery, once :attr:`done`) is not this filter's business.
    """

    def __init__(
        self, rewrite_to: int | None = None, *, quiet: bool = False, failed_to: int | None = None
    ) -> None:
        self.rewrite_to = rewrite_to
        self.quiet = quiet
        #: The status the client's ReadyForQuery says instead when the answer held an ErrorResponse.
        self.failed_to = failed_to
        self.errored = False
        self._buf = b""
        self.done = False
        #: The status of the ReadyForQuery the server sent.
        self.status = c.TX_IDLE

    @property
    def skipped(self) -> bool:
        """The answer's ReadyForQuery is removed (the relay's bookkeeping never sees it)."""
        return self.rewrite_to is None

    def feed(self, data: bytes) -> tuple[bytes, bytes, bytes]:
        buf = self._buf + data if self._buf else data
        seen: list[bytes] = []
        client: list[bytes] = []
        pos, n = 0, len(buf)
        while pos + 5 <= n:
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if end > n:
                break
            mtype, message = buf[pos], buf[pos:end]
            pos = end
            if mtype == c.READY_FOR_QUERY:
                self.done, self._buf = True, b""
                self.status = message[5] if len(message) > 5 else c.TX_IDLE
                if self.rewrite_to is not None:
                    seen.append(message)
                    status = self.rewrite_to
                    if self.errored and self.failed_to is not None:
                        status = self.failed_to
                    client.append(ReadyForQuery(status).build())
                return b"".join(seen), b"".join(client), buf[pos:]
            self.errored = self.errored or mtype == c.ERROR_RESPONSE
            dropped = mtype == COMMAND_COMPLETE or (self.quiet and mtype not in _ASYNC)
            if self.rewrite_to is None and dropped:
                continue
            seen.append(message)
            client.append(message)
        self._buf = buf[pos:]
        return b"".join(seen), b"".join(client), b""
