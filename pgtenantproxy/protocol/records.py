"""Client messages parsed once: the record every later step reads, sans-IO.

The routed session parses each client message exactly once, here, into a
:class:`ClientMessage`: its type and body (forwarded untouched), and what the
proxy needs from inside it, by type:

* ``Parse``: ``name`` (the statement), ``sql``, and the :class:`Parse` itself;
* ``Bind``: ``portal``, ``name`` (the statement it binds), and the :class:`Bind`
  (parameter values, for routing);
* ``Execute``: ``portal``;
* ``Describe`` / ``Close``: ``target`` (``S`` statement, ``P`` portal) and ``name``
  (statement) or ``portal``;
* ``Query``: ``sql``.

Strictness follows the relay before it: a malformed ``Parse``, ``Close`` or
``Query`` is a protocol violation (the session ends with FATAL 08P01); a
malformed ``Bind``, ``Execute`` or ``Describe`` is kept with ``malformed`` set,
so the unit goes to the unified server, which reports the error exactly as
PostgreSQL does (an ERROR, the session goes on).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import Message, check_frame
from pgtenantproxy.protocol.messages import Bind, CloseOrDescribe, Execute, Parse, Query

_I = struct.Struct("!I")
_i = struct.Struct("!i")


class ClientMessage:
    """One client message and the fields the proxy reads from it (see the module docstring)."""

    __slots__ = ("_raw", "bind", "body", "malformed", "name", "parse", "portal", "sql", "target", "type")

    def __init__(self, mtype: int, body: bytes, raw: bytes | None = None) -> None:
        self.type = mtype
        self.body = body
        self._raw = raw
        self.name = ""
        self.portal = ""
        self.sql: str | None = None
        self.target = ""
        self.parse: Parse | None = None
        self.bind: Bind | None = None
        self.malformed = False

    @classmethod
    def of(cls, msg: Message) -> ClientMessage:
        """Parse ``msg`` once (raises :class:`ProtocolViolation` as the module docstring says)."""
        rec = cls(msg.type, msg.body)
        reader = _READERS.get(msg.type)
        if reader is not None:
            reader(rec)
        return rec

    @classmethod
    def from_wire(cls, raw: bytes) -> ClientMessage:
        """Parse one whole message as it came on the wire (header included)."""
        mtype = raw[0]
        rec = cls(mtype, raw[5:], raw)
        reader = _READERS.get(mtype)
        if reader is not None:
            reader(rec)
        return rec

    @classmethod
    def of_query(cls, body: bytes) -> ClientMessage:
        """A Query message of the proxy's own (``body``: the SQL, NUL-terminated)."""
        rec = cls(c.QUERY, body)
        _read_query(rec)
        return rec

    def raw(self) -> bytes:
        """The message as it travels on the wire."""
        raw = self._raw
        if raw is None:
            raw = self._raw = bytes((self.type,)) + _I.pack(len(self.body) + 4) + self.body
        return raw

    @property
    def statement(self) -> str | None:
        """The prepared statement a Bind uses or a Describe ``S`` names (None otherwise)."""
        if self.type == c.BIND and not self.malformed:
            return self.name
        if self.type == c.DESCRIBE and self.target == "S":
            return self.name
        return None

    def __repr__(self) -> str:
        return f"ClientMessage({chr(self.type)!r}, name={self.name!r}, portal={self.portal!r})"


def _read_parse(rec: ClientMessage) -> None:
    parse = rec.parse = Parse.parse(rec.body)
    rec.name, rec.sql = parse.name, parse.sql


def _read_query(rec: ClientMessage) -> None:
    rec.sql = Query.parse(rec.body).sql


def _read_close(rec: ClientMessage) -> None:
    target = CloseOrDescribe.parse(rec.body)
    rec.target = target.kind
    if target.kind == "S":
        rec.name = target.name
    else:
        rec.portal = target.name


def _read_describe(rec: ClientMessage) -> None:
    try:
        _read_close(rec)
    except ProtocolViolation:
        rec.malformed = True


def _read_bind(rec: ClientMessage) -> None:
    try:
        bind = rec.bind = Bind.parse(rec.body)
    except ProtocolViolation:
        rec.malformed = True
        return
    rec.portal, rec.name = bind.portal, bind.statement


def _read_execute(rec: ClientMessage) -> None:
    try:
        rec.portal = Execute.parse(rec.body).portal
    except ProtocolViolation:
        rec.malformed = True


_READERS = {
    c.PARSE: _read_parse,
    c.QUERY: _read_query,
    c.CLOSE: _read_close,
    c.DESCRIBE: _read_describe,
    c.BIND: _read_bind,
    c.EXECUTE: _read_execute,
}


class ClientReader:
    """Splits the client's stream into :class:`ClientMessage` records, each header checked as
    PostgreSQL checks it (:func:`~pgtenantproxy.protocol.framing.check_frame`) as soon as it is
    complete. A chunk of whole messages is sliced in place; a message split across chunks is
    gathered in a ``bytearray`` (a 1 GB message costs no quadratic copying)."""

    __slots__ = ("_buf", "_limits", "_need")

    def __init__(self, limits: Mapping[int, int] = c.FRONTEND_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._need = 0  # bytes ``_buf`` must hold before it can yield the next message

    @property
    def has_partial(self) -> bool:
        return bool(self._buf)

    def feed(self, data: bytes) -> list[ClientMessage]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf = bytearray()
        out: list[ClientMessage] = []
        limits = self._limits
        pos, n = 0, len(data)
        from_wire = ClientMessage.from_wire
        while pos + 5 <= n:
            mtype = data[pos]
            (length,) = _i.unpack_from(data, pos + 1)
            if length < 4 or length - 4 > limits.get(mtype, -1):
                check_frame(mtype, length, limits, c.LARGE_MESSAGE_LIMIT)  # raises
            end = pos + 1 + length
            if end > n:
                self._need = end - pos
                break
            out.append(from_wire(data[pos:end]))
            pos = end
        else:
            self._need = 5
        if pos < n:
            self._buf = bytearray(data[pos:])
        return out
