"""Message boundaries on a byte stream, with no I/O.

Three readers, all fed with ``feed(data)``:

* :class:`StartupReader` reads the untyped first packet of a connection
  (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) and enforces
  PostgreSQL's startup packet size limits.
* :class:`MessageReader` reads whole typed messages (type byte, int32 length,
  body) for the handshake phase, where the proxy looks at every message.
* :class:`FrameScanner` is the relay hot path: it only *finds* boundaries,
  skipping the bodies of messages it is not asked to watch (the caller forwards
  the original bytes untouched) and returning the bodies of those it is.

Invariants: nothing here raises anything but :class:`ProtocolViolation` on bad
input; a frame split at any offset across ``feed`` calls yields the same
messages as the frame fed whole.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import NamedTuple

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.messages import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

_uint32 = struct.Struct("!I").unpack_from
_int32 = struct.Struct("!i").unpack_from

StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


class Message(NamedTuple):
    """A typed protocol message: its type byte and its body (length excluded)."""

    type: int
    body: bytes

    def raw(self) -> bytes:
        """The message as it travels on the wire."""
        return bytes((self.type,)) + struct.pack("!I", len(self.body) + 4) + self.body


class StartupReader:
    """Reads the one untyped packet a connection starts with."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_packet(self) -> StartupPacket | None:
        """The next packet, or None until enough bytes have arrived."""
        if len(self._buf) < 4:
            return None
        (length,) = _int32(self._buf, 0)
        if length < 8 or length > c.MAX_STARTUP_PACKET_LENGTH:
            raise ProtocolViolation("invalid length of startup packet")
        if len(self._buf) < length:
            return None
        packet = bytes(self._buf[:length])
        del self._buf[:length]
        return parse_startup_packet(packet)

    def leftover(self) -> bytes:
        """Bytes received after the packet (pipelined data, or a TLS ClientHello)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Classify and parse a complete startup packet (length prefix included)."""
    if len(packet) < 8:
        raise ProtocolViolation("invalid length of startup packet")
    (code,) = _uint32(packet, 4)
    if code == c.SSL_REQUEST_CODE and len(packet) == 8:
        return SSLRequest()
    if code == c.GSSENC_REQUEST_CODE and len(packet) == 8:
        return GSSENCRequest()
    if code == c.CANCEL_REQUEST_CODE:
        return CancelRequest.parse(packet)
    return StartupMessage.parse(packet)


class MessageReader:
    """Reads whole typed messages; used while the proxy inspects every message.

    ``limits`` maps each accepted type to its longest body; with ``limits=None``
    any type is accepted up to ``default_limit`` (the server side, which the
    proxy trusts to speak the protocol).
    """

    def __init__(
        self,
        limits: Mapping[int, int] | None = None,
        *,
        default_limit: int = c.LARGE_MESSAGE_LIMIT,
    ) -> None:
        self._buf = bytearray()
        self._limits = limits
        self._default_limit = default_limit

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> Message | None:
        if len(self._buf) < 5:
            return None
        mtype = self._buf[0]
        (length,) = _int32(self._buf, 1)
        check_frame(mtype, length, self._limits, self._default_limit)
        if len(self._buf) < length + 1:
            return None
        body = bytes(self._buf[5 : length + 1])
        del self._buf[: length + 1]
        return Message(mtype, body)

    def leftover(self) -> bytes:
        """Bytes not yet consumed as messages (handed to the relay phase)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def check_frame(
    mtype: int, length: int, limits: Mapping[int, int] | None, default_limit: int
) -> None:
    """Reject a frame header PostgreSQL would reject."""
    if limits is None:
        limit = default_limit
    else:
        found = limits.get(mtype)
        if found is None:
            raise ProtocolViolation(f"invalid frontend message type {mtype}")
        limit = found
    if length < 4 or length - 4 > limit:
        raise ProtocolViolation("invalid message length")


class Frame(NamedTuple):
    """A watched message found by :class:`FrameScanner`."""

    type: int
    body: bytes


# Builds a Frame without the Python-level NamedTuple.__new__ (hot path: ~60 ns less per frame).
_new_tuple = tuple.__new__
# A frame header's type byte and signed length in one call (hot path: one call per message).
_frame_header = struct.Struct("!Bi").unpack_from
# Per-type ceiling of the length field for a scanner without limits: any type, any length >= 4.
_NO_CEILINGS: tuple[int, ...] = (0x7FFFFFFF,) * 256


class FrameScanner:
    """Finds message boundaries in a relayed stream without copying bodies.

    Two ways to feed it (a scanner is fed one way only):

    * ``feed(chunk)`` returns the watched messages completed by the chunk, in
      order, with their bodies;
    * ``tally(chunk)`` returns the sum of the weights of the messages completed
      by the chunk (``weights``: type -> int; by default 1 per watched type)
      and keeps no body at all: for a relay that only counts.

    Bodies of other messages are skipped by length. Validation (types and
    lengths) is applied when ``limits`` is given, as for client streams.
    ``at_boundary`` is True when the stream so far ends exactly at a message
    boundary; ``last_type`` is the type of the last complete message (0
    before any).

    Hot path: a chunk that starts at a boundary (nearly all of them) goes
    straight into one loop over headers, with state in locals. Only a message
    split across chunks takes the slower :meth:`_resume` path. Each header is
    read with one ``unpack_from`` and checked with two comparisons: length at
    least 4 and at most a per-type ceiling (limit + 4; 3 for a type not
    accepted, so that no length passes; no ceiling at all without limits);
    :func:`check_frame` (which owns the error messages) is called only when
    that check fails, and then always raises. Whether a message ends inside
    the chunk is decided once, after the loop: the loop only ever leaves with
    the last header it read.
    """

    __slots__ = (
        "_body", "_body_need", "_body_type", "_ceilings", "_head", "_limits", "_skip", "_watch",
        "_weights", "at_boundary", "last_type",
    )

    def __init__(
        self,
        watch: frozenset[int],
        limits: Mapping[int, int] | None = None,
        *,
        weights: Mapping[int, int] | None = None,
    ) -> None:
        self._watch = watch
        self._limits = limits
        self._ceilings = _NO_CEILINGS if limits is None else _ceilings(limits)
        self._weights: list[int] | None = None if weights is None else _table(weights)
        self._skip = 0  # bytes of a skipped (or counted) body still to come
        self._head = b""  # a partial 5-byte header
        self._body: bytearray | None = None  # a partial watched body
        self._body_type = 0
        self._body_need = 0
        #: True when the stream so far ends exactly at a message boundary
        #: (nothing of a message pending: no skip, no partial header, no partial body).
        self.at_boundary = True
        #: Type of the last complete message seen (0 before any).
        self.last_type = 0

    @property
    def ceilings(self) -> tuple[int, ...]:
        """Per type, the largest length field accepted (limit + 4); a length under 4 never is."""
        return self._ceilings

    @property
    def weights(self) -> list[int]:
        """Per type, what a complete message adds to :meth:`tally`'s sum."""
        if self._weights is None:
            self._weights = _table(dict.fromkeys(self._watch, 1))
        return self._weights

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        pos = 0
        if not self.at_boundary:
            data, pos = self._resume(data, out)
            if pos < 0:
                return out
        n = len(data)
        last_start = n - 5  # the last position a whole header can start at
        watch = self._watch
        mtype = last = self.last_type
        if self._limits is None:  # a stream the proxy trusts (a server's): only lengths under 4 fail
            while pos <= last_start:
                last = mtype  # the message before this header ended inside the chunk
                mtype, length = _frame_header(data, pos)
                if length < 4:
                    self.last_type, self.at_boundary = last, True
                    check_frame(mtype, length, None, c.LARGE_MESSAGE_LIMIT)  # raises
                if mtype in watch:
                    end = pos + length + 1
                    if end > n:  # the body continues in the next chunk: collect it
                        self._collect(data, pos, end, mtype, last)
                        return out
                    out.append(_new_tuple(Frame, (mtype, data[pos + 5 : end])))
                pos += length + 1
        else:
            ceilings = self._ceilings
            while pos <= last_start:
                last = mtype
                mtype, length = _frame_header(data, pos)
                if length < 4 or length > ceilings[mtype]:
                    self.last_type, self.at_boundary = last, True
                    check_frame(mtype, length, self._limits, c.LARGE_MESSAGE_LIMIT)  # raises
                if mtype in watch:
                    end = pos + length + 1
                    if end > n:
                        self._collect(data, pos, end, mtype, last)
                        return out
                    out.append(_new_tuple(Frame, (mtype, data[pos + 5 : end])))
                pos += length + 1
        if pos == n:  # the chunk ends at a boundary (nearly always)
            self.last_type = mtype
            self.at_boundary = True
        else:
            self._end_chunk(data, pos, n, mtype, last)
        return out

    def _collect(self, data: bytes, pos: int, end: int, mtype: int, last: int) -> None:
        """A watched message at ``pos`` continues in the next chunk: keep what came of its body."""
        self._body = bytearray(data[pos + 5 :])
        self._body_need = end - len(data)
        self._body_type = mtype
        self.last_type, self.at_boundary = last, False

    def tally(self, data: bytes) -> int:
        """The sum of the weights of the messages the chunk completes (validated as by :meth:`feed`)."""
        weights = self._weights
        if weights is None:
            weights = self._weights = _table(dict.fromkeys(self._watch, 1))
        total = 0
        pos = 0
        if not self.at_boundary:
            data, pos, total = self._resume_tally(data, weights)
            if pos < 0:
                return total
        n = len(data)
        last_start = n - 5
        ceilings = self._ceilings
        mtype = last = self.last_type
        while pos <= last_start:
            last = mtype
            mtype, length = _frame_header(data, pos)
            if length < 4 or length > ceilings[mtype]:
                self.last_type, self.at_boundary = last, True
                check_frame(mtype, length, self._limits, c.LARGE_MESSAGE_LIMIT)  # raises
            total += weights[mtype]
            pos += length + 1
        if pos == n:  # the chunk ends at a boundary (nearly always)
            self.last_type = mtype
            self.at_boundary = True
            return total
        if pos > n:
            total -= weights[mtype]  # counted when its body ends
        self._end_chunk(data, pos, n, mtype, last)
        return total

    def _end_chunk(self, data: bytes, pos: int, n: int, mtype: int, last: int) -> None:
        """State at the end of a chunk the loop left at ``pos``, its last header of type ``mtype``."""
        if pos == n:
            self.last_type, self.at_boundary = mtype, True
        elif pos > n:  # the last message's body continues in the next chunk
            self._skip = pos - n
            self._body_type = mtype
            self.last_type, self.at_boundary = last, False
        else:  # a partial header
            self._head = bytes(data[pos:])
            self.last_type, self.at_boundary = mtype, False

    def _resume_tally(self, data: bytes, weights: list[int]) -> tuple[bytes, int, int]:
        """:meth:`_resume` for :meth:`tally`: also returns the weight of a message it completes."""
        if self._body is not None:  # a body :meth:`feed` was collecting: count it instead
            self._skip, self._body = self._body_need, None
        if self._head:
            data, self._head = self._head + data, b""
            return data, 0, 0
        n = len(data)
        if self._skip > n:
            self._skip -= n
            return data, -1, 0
        pos, self._skip = self._skip, 0
        self.last_type = self._body_type
        if pos == n:  # the body ends exactly with this chunk
            self.at_boundary = True
            return data, -1, weights[self._body_type]
        return data, pos, weights[self._body_type]

    def _resume(self, data: bytes, out: list[Frame]) -> tuple[bytes, int]:
        """Finish what the previous chunk left open.

        Returns the data to scan on and where to start; the position is -1
        when this chunk is used up.
        """
        if self._head:
            # A header split across chunks: re-join it (rare, one small copy).
            data, self._head = self._head + data, b""
            return data, 0
        n = len(data)
        if self._skip:
            if self._skip > n:
                self._skip -= n
                return data, -1
            pos, self._skip = self._skip, 0
            self.last_type = self._body_type
            if pos == n:  # the body ends exactly with this chunk
                self.at_boundary = True
                return data, -1
            return data, pos
        if self._body is None:  # nothing pending (only after a violation)
            return data, 0
        take = min(self._body_need, n)
        self._body += data[:take]
        self._body_need -= take
        if self._body_need:
            return data, -1
        out.append(Frame(self._body_type, bytes(self._body)))
        self.last_type = self._body_type
        self._body = None
        return data, take


def _ceilings(limits: Mapping[int, int]) -> tuple[int, ...]:
    """Per-type ceiling of the length field: limit + 4, or 3 (nothing passes) for a type not in ``limits``."""
    table = [3] * 256
    for mtype, limit in limits.items():
        if 0 <= mtype < 256:
            table[mtype] = limit + 4
    return tuple(table)


def _table(weights: Mapping[int, int]) -> list[int]:
    table = [0] * 256
    for mtype, weight in weights.items():
        if 0 <= mtype < 256:
            table[mtype] = weight
    return table
