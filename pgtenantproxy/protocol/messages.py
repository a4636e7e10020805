"""The messages the proxy looks inside: one small class each, parse and build.

Every class parses from a message *body* (or, for startup packets, from the
whole packet) and builds the complete wire bytes. Parsers raise only
:class:`ProtocolViolation`. Messages not listed here are relayed opaquely.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import FEATURE_NOT_SUPPORTED, ProtocolViolation, ProxyError

_I = struct.Struct("!I")
_i = struct.Struct("!i")
_II = struct.Struct("!II")


def frame(mtype: int, body: bytes) -> bytes:
    """Wrap a body in a typed message header."""
    return bytes((mtype,)) + _I.pack(len(body) + 4) + body


def _cstrings(data: bytes) -> list[bytes]:
    """Split NUL-terminated strings; the data must end with a NUL."""
    if not data or data[-1] != 0:
        raise ProtocolViolation("invalid string in message")
    return data[:-1].split(b"\x00")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True)
class SSLRequest:
    @staticmethod
    def build() -> bytes:
        return _II.pack(8, c.SSL_REQUEST_CODE)


@dataclass(frozen=True)
class GSSENCRequest:
    @staticmethod
    def build() -> bytes:
        return _II.pack(8, c.GSSENC_REQUEST_CODE)


@dataclass(frozen=True)
class CancelRequest:
    """CancelRequest: backend pid and secret key (4 bytes in 3.0, up to 256 in 3.2)."""

    pid: int
    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, packet: bytes) -> CancelRequest:
        key = packet[12:]
        if len(packet) < 16 or len(key) > c.MAX_CANCEL_KEY_LENGTH:
            raise ProtocolViolation("invalid length of cancel request packet")
        (pid,) = _i.unpack_from(packet, 8)
        return cls(pid, bytes(key))

    def build(self) -> bytes:
        body = _I.pack(c.CANCEL_REQUEST_CODE) + _i.pack(self.pid) + self.key
        return _I.pack(len(body) + 4) + body


@dataclass(frozen=True)
class StartupMessage:
    """StartupMessage: protocol version and parameters (user, database, options...).

    ``raw`` keeps the packet exactly as the client sent it: the proxy forwards
    it unchanged so the server sees every parameter the client chose.
    """

    protocol: int
    params: dict[str, str]
    raw: bytes = field(repr=False)

    @classmethod
    def parse(cls, packet: bytes) -> StartupMessage:
        if len(packet) < 8:
            raise ProtocolViolation("invalid length of startup packet")
        (protocol,) = _I.unpack_from(packet, 4)
        major, minor = protocol >> 16, protocol & 0xFFFF
        if major != 3:
            raise ProxyError(
                FEATURE_NOT_SUPPORTED,
                f"unsupported frontend protocol {major}.{minor}: "
                "server supports 3.0 to 3.2",
            )
        # name NUL value NUL ... then one final NUL (PostgreSQL's ProcessStartupPacket):
        # no empty name, no name without a value, nothing after the terminator.
        body = bytes(packet[8:])
        if body != b"\x00" and not body.endswith(b"\x00\x00"):
            raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
        parts = body[:-2].split(b"\x00") if body != b"\x00" else []
        if len(parts) % 2 or b"" in parts[::2]:
            raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
        params = {_decode(parts[i]): _decode(parts[i + 1]) for i in range(0, len(parts), 2)}
        if "user" not in params or not params["user"]:
            raise ProxyError("28000", "no PostgreSQL user name specified in startup packet")
        return cls(protocol, params, bytes(packet))

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        return self.params.get("database") or self.params["user"]

    @staticmethod
    def build(params: dict[str, str], protocol: int = c.PROTOCOL_3_0) -> bytes:
        body = _I.pack(protocol)
        for key, value in params.items():
            body += key.encode() + b"\x00" + value.encode() + b"\x00"
        body += b"\x00"
        return _I.pack(len(body) + 4) + body


@dataclass(frozen=True)
class Authentication:
    """AuthenticationXXX ('R'): the request code and its payload."""

    code: int
    payload: bytes

    @classmethod
    def parse(cls, body: bytes) -> Authentication:
        if len(body) < 4:
            raise ProtocolViolation("invalid authentication message")
        (code,) = _i.unpack_from(body, 0)
        return cls(code, bytes(body[4:]))

    @property
    def needs_response(self) -> bool:
        return self.code in c.AUTH_NEEDS_RESPONSE

    def sasl_mechanisms(self) -> list[str]:
        return [_decode(m) for m in _cstrings(self.payload) if m]

    @staticmethod
    def build(code: int, payload: bytes = b"") -> bytes:
        return frame(c.AUTHENTICATION, _i.pack(code) + payload)

    @classmethod
    def build_sasl(cls, mechanisms: list[str]) -> bytes:
        payload = b"".join(m.encode() + b"\x00" for m in mechanisms) + b"\x00"
        return cls.build(c.AUTH_SASL, payload)


@dataclass(frozen=True)
class SASLInitialResponse:
    """SASLInitialResponse ('p' after AuthenticationSASL): the chosen mechanism and its first message."""

    mechanism: str
    data: bytes = field(repr=False)

    @classmethod
    def parse(cls, body: bytes) -> SASLInitialResponse:
        end = body.find(b"\x00")
        if end <= 0 or len(body) < end + 5:
            raise ProtocolViolation("malformed SASLInitialResponse message")
        (length,) = _i.unpack_from(body, end + 1)
        data = bytes(body[end + 5 :])
        if length != len(data) and not (length == -1 and not data):
            raise ProtocolViolation("malformed SASLInitialResponse message")
        return cls(_decode(body[:end]), data)

    @property
    def gs2_flag(self) -> str:
        """SCRAM's channel-binding flag: 'n' (unsupported), 'y' (supported, not offered), 'p' (in use)."""
        return chr(self.data[0]) if self.data else ""


@dataclass(frozen=True)
class BackendKeyData:
    """BackendKeyData ('K'): process id and cancel secret key."""

    pid: int
    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, body: bytes) -> BackendKeyData:
        if len(body) < 8 or len(body) - 4 > c.MAX_CANCEL_KEY_LENGTH:
            raise ProtocolViolation("invalid BackendKeyData message")
        (pid,) = _i.unpack_from(body, 0)
        return cls(pid, bytes(body[4:]))

    def build(self) -> bytes:
        return frame(c.BACKEND_KEY_DATA, _i.pack(self.pid) + self.key)


@dataclass(frozen=True)
class ParameterStatus:
    name: str
    value: str

    @classmethod
    def parse(cls, body: bytes) -> ParameterStatus:
        parts = _cstrings(body)
        if len(parts) != 2:
            raise ProtocolViolation("invalid ParameterStatus message")
        return cls(_decode(parts[0]), _decode(parts[1]))

    def build(self) -> bytes:
        return frame(
            c.PARAMETER_STATUS, self.name.encode() + b"\x00" + self.value.encode() + b"\x00"
        )


@dataclass(frozen=True)
class ReadyForQuery:
    status: int

    @classmethod
    def parse(cls, body: bytes) -> ReadyForQuery:
        if len(body) != 1 or body[0] not in (c.TX_IDLE, c.TX_IN_BLOCK, c.TX_FAILED):
            raise ProtocolViolation("invalid ReadyForQuery message")
        return cls(body[0])

    @classmethod
    def idle(cls) -> ReadyForQuery:
        return cls(c.TX_IDLE)

    def build(self) -> bytes:
        return frame(c.READY_FOR_QUERY, bytes((self.status,)))


@dataclass(frozen=True)
class ErrorFields:
    """ErrorResponse / NoticeResponse fields, keyed by their one-letter codes."""

    fields: dict[str, str]

    @classmethod
    def parse(cls, body: bytes) -> ErrorFields:
        out: dict[str, str] = {}
        for item in _cstrings(body):
            if item:
                out[chr(item[0])] = _decode(item[1:])
        return cls(out)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True)
class Query:
    sql: str

    @classmethod
    def parse(cls, body: bytes) -> Query:
        return cls(_decode(_cstrings(body)[0]))

    def build(self) -> bytes:
        return frame(c.QUERY, self.sql.encode() + b"\x00")


TERMINATE = frame(c.TERMINATE, b"")
SSL_ACCEPT = b"S"
SSL_REFUSE = b"N"


def _cstring_at(body: bytes, pos: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``pos`` and the position after its NUL."""
    end = body.find(b"\x00", pos)
    if end < 0:
        raise ProtocolViolation("invalid string in message")
    return body[pos:end], end + 1


def _int16_at(body: bytes, pos: int) -> int:
    if pos + 2 > len(body):
        raise ProtocolViolation("insufficient data left in message")
    return int.from_bytes(body[pos : pos + 2], "big", signed=True)


@dataclass(frozen=True)
class Parse:
    """Parse ('P'): statement name, SQL text, parameter type OIDs."""

    name: str
    sql: str
    param_types: tuple[int, ...]

    @classmethod
    def parse(cls, body: bytes) -> Parse:
        name, pos = _cstring_at(body, 0)
        sql, pos = _cstring_at(body, pos)
        count = _int16_at(body, pos)
        pos += 2
        if count < 0 or pos + 4 * count > len(body):
            raise ProtocolViolation("insufficient data left in message")
        types = struct.unpack_from(f"!{count}I", body, pos) if count else ()
        return cls(_decode(name), _decode(sql), tuple(types))

    def build(self) -> bytes:
        body = self.name.encode() + b"\x00" + self.sql.encode() + b"\x00"
        body += struct.pack(f"!h{len(self.param_types)}I", len(self.param_types), *self.param_types)
        return frame(c.PARSE, body)


@dataclass(frozen=True)
class Bind:
    """Bind ('B'): portal, statement, parameter formats and values, result formats."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    @classmethod
    def parse(cls, body: bytes) -> Bind:
        portal, pos = _cstring_at(body, 0)
        statement, pos = _cstring_at(body, pos)
        formats, pos = _int16_list(body, pos)
        count = _int16_at(body, pos)
        pos += 2
        if count < 0:
            raise ProtocolViolation("invalid parameter count in Bind message")
        params: list[bytes | None] = []
        for _ in range(count):
            if pos + 4 > len(body):
                raise ProtocolViolation("insufficient data left in message")
            (length,) = _i.unpack_from(body, pos)
            pos += 4
            if length < 0:
                params.append(None)
                continue
            if pos + length > len(body):
                raise ProtocolViolation("insufficient data left in message")
            params.append(bytes(body[pos : pos + length]))
            pos += length
        results, pos = _int16_list(body, pos)
        return cls(_decode(portal), _decode(statement), formats, tuple(params), results)

    def param_format(self, index: int) -> int:
        """Format code (0 text, 1 binary) of parameter ``index`` (0-based)."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index] if index < len(self.param_formats) else 0


def _int16_list(body: bytes, pos: int) -> tuple[tuple[int, ...], int]:
    count = _int16_at(body, pos)
    pos += 2
    if count < 0 or pos + 2 * count > len(body):
        raise ProtocolViolation("insufficient data left in message")
    values = struct.unpack_from(f"!{count}h", body, pos) if count else ()
    return tuple(values), pos + 2 * count


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int

    @classmethod
    def parse(cls, body: bytes) -> Execute:
        portal, pos = _cstring_at(body, 0)
        if pos + 4 > len(body):
            raise ProtocolViolation("insufficient data left in message")
        (max_rows,) = _i.unpack_from(body, pos)
        return cls(_decode(portal), max_rows)


@dataclass(frozen=True)
class CloseOrDescribe:
    """Close ('C') or Describe ('D'): 'S' statement or 'P' portal, and its name."""

    kind: str
    name: str

    @classmethod
    def parse(cls, body: bytes) -> CloseOrDescribe:
        if not body or body[0] not in (ord("S"), ord("P")):
            raise ProtocolViolation("invalid Close/Describe target")
        name, _ = _cstring_at(body, 1)
        return cls(chr(body[0]), _decode(name))

    def build_close(self) -> bytes:
        return frame(c.CLOSE, self.kind.encode() + self.name.encode() + b"\x00")


SYNC_MESSAGE = frame(c.SYNC, b"")
