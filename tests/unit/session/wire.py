"""Protocol byte vectors for the session machine's tests: client messages and server answers.

Everything is built with :mod:`pgtenantproxy.protocol.messages` (``frame`` and the
message classes) so the bytes are the real wire format; nothing here knows the machine.
"""

from __future__ import annotations

import struct

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import error_response
from pgtenantproxy.protocol.messages import (
    SYNC_MESSAGE,
    TERMINATE,
    CloseOrDescribe,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    frame,
)

# --- client -> server ---------------------------------------------------------------------
SYNC = SYNC_MESSAGE
FLUSH = frame(c.FLUSH, b"")
X = TERMINATE


def q(sql: str) -> bytes:
    return Query(sql).build()


def parse(name: str, sql: str, types: tuple[int, ...] = ()) -> bytes:
    return Parse(name, sql, types).build()


def bind(statement: str = "", portal: str = "", params: tuple[bytes | None, ...] = ()) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", 0)
    return frame(c.BIND, body)


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(c.EXECUTE, portal.encode() + b"\x00" + struct.pack("!i", max_rows))


def describe(kind: str, name: str = "") -> bytes:
    return frame(c.DESCRIBE, kind.encode() + name.encode() + b"\x00")


def close(kind: str, name: str = "") -> bytes:
    return CloseOrDescribe(kind, name).build_close()


def extended(sql: str, name: str = "", params: tuple[bytes | None, ...] = ()) -> bytes:
    """Parse/Bind/Describe(P)/Execute/Sync of one statement (libpq's PQexecParams shape)."""
    return parse(name, sql) + bind(name, "", params) + describe("P") + execute() + SYNC


def run_prepared(name: str, params: tuple[bytes | None, ...] = ()) -> bytes:
    """Bind/Describe(P)/Execute/Sync of a statement prepared before."""
    return bind(name, "", params) + describe("P") + execute() + SYNC


# --- server -> client ---------------------------------------------------------------------
PARSE_COMPLETE = frame(ord("1"), b"")
BIND_COMPLETE = frame(ord("2"), b"")
CLOSE_COMPLETE = frame(ord("3"), b"")
NO_DATA = frame(ord("n"), b"")


def rfq(status: str = "I") -> bytes:
    return ReadyForQuery(ord(status)).build()


def cc(tag: str) -> bytes:
    return frame(ord("C"), tag.encode() + b"\x00")


def row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for name in names:
        body += name.encode() + b"\x00" + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
    return frame(ord("T"), body)


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return frame(ord("D"), body)


def param_description(*oids: int) -> bytes:
    return frame(ord("t"), struct.pack(f"!h{len(oids)}I", len(oids), *oids))


def error(sqlstate: str, message: str = "boom", severity: str = "ERROR") -> bytes:
    return error_response(sqlstate, message, severity=severity)


def notice(message: str = "note") -> bytes:
    body = b"SNOTICE\x00VNOTICE\x00C00000\x00M" + message.encode() + b"\x00\x00"
    return frame(ord("N"), body)


def notification(channel: str = "ch", payload: str = "hi", pid: int = 42) -> bytes:
    return frame(ord("A"), struct.pack("!i", pid) + channel.encode() + b"\x00" + payload.encode() + b"\x00")


def parameter_status(name: str, value: str) -> bytes:
    return ParameterStatus(name, value).build()


def rows(*values: bytes, tag: str | None = None, status: str = "I") -> bytes:
    """A one-column SELECT's whole answer to a simple Query."""
    body = row_description("v") + b"".join(data_row(v) for v in values)
    return body + cc(tag or f"SELECT {len(values)}") + rfq(status)


def select_answer(value: bytes = b"1", status: str = "I") -> bytes:
    return rows(value, status=status)


def extended_rows(*values: bytes, status: str = "I", parsed: bool = True) -> bytes:
    """The answer to :func:`extended` (or :func:`run_prepared` with ``parsed=False``)."""
    head = (PARSE_COMPLETE if parsed else b"") + BIND_COMPLETE + row_description("v")
    return head + b"".join(data_row(v) for v in values) + cc(f"SELECT {len(values)}") + rfq(status)


def messages(data: bytes) -> list[tuple[str, bytes]]:
    """Split a byte stream into (type, body); raises AssertionError if it is not whole messages."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        assert pos + 5 <= len(data), f"truncated header at {pos}: {data[pos:]!r}"
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        end = pos + 1 + length
        assert length >= 4 and end <= len(data), f"bad message at {pos}: {data[pos:pos + 16]!r}"
        out.append((chr(data[pos]), data[pos + 5 : end]))
        pos = end
    return out


def types(data: bytes) -> str:
    """The message types of a stream, as one string (e.g. ``"TDCZ"``)."""
    return "".join(t for t, _ in messages(data))


def sqlstate_of(data: bytes) -> str | None:
    """The SQLSTATE of the first ErrorResponse in a stream."""
    for t, body in messages(data):
        if t == "E":
            for item in body.split(b"\x00"):
                if item[:1] == b"C":
                    return item[1:].decode()
    return None
