"""The established session's hot path: bytes relayed both ways, boundaries tracked.

Client chunks are validated (types and lengths, as PostgreSQL checks them) and
forwarded as they came. Server chunks are forwarded as they came. The relay
finds the message boundaries on each side, so it knows

* the transaction status from the last ReadyForQuery ('I', 'T', 'E'),
* how many answers are still owed: each Query, Sync and FunctionCall the client
  sends is answered by exactly one ReadyForQuery,

which together say whether the session is idle (safe to close on shutdown) or
busy (a server is working for this client; cancel it if the client vanishes).

Hot path. A chunk that starts and ends at a message boundary (nearly all) is
walked inline, header by header, with the client scanner's own tables (the
checks :meth:`FrameScanner.tally` makes); anything else (a message split
across chunks, a header that fails) goes to the :class:`FrameScanner` of its
side, which starts afresh on the chunk and owns the errors. Before walking,
a chunk is checked against the layout last learned for its length
(:class:`Layouts`): one ``unpack_from`` reads the headers the chunk would have
in that layout, and if they are those, the walk's outcome is known.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import FrameScanner

_ANSWERED = frozenset({c.QUERY, c.SYNC, c.FUNCTION_CALL})
#: The client tally: 1 per answered message, Terminate above any count a chunk can reach.
_TERMINATED = 1 << 32
_ANSWERS = _TERMINATED - 1
_CLIENT_WEIGHTS = {**dict.fromkeys(_ANSWERED, 1), c.TERMINATE: _TERMINATED}
_SERVER_WATCH = frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE})
_FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")
_READY_FOR_QUERY = c.READY_FOR_QUERY
_ERROR_RESPONSE = c.ERROR_RESPONSE
_TX_IDLE = c.TX_IDLE
_frame_header = struct.Struct("!Bi").unpack_from  # a header's type byte and length

#: A learned layout: the unpack_from of its headers, the headers (type, length, type, ...), and the
#: walk's outcome: the count, the last type, where the last ReadyForQuery's status byte is (-1: none).
Layout = tuple[Callable[[bytes], tuple[int, ...]], tuple[int, ...], int, int, int]


#: For a length whose chunks have too many messages to learn: ``len(chunk)`` never equals ``()``.
_TOO_LONG: Layout = (len, (), 0, 0, -1)  # type: ignore[assignment]


class Layouts:
    """Chunk layouts already walked, by chunk length.

    A layout is the (type, length) of each message of a chunk that starts and
    ends at a boundary. ``Struct("!Bi<n>xBi...").unpack_from(chunk)`` reads,
    in one call, the headers a chunk of that length has where the layout puts
    them; if they equal the layout's, walking the chunk would visit exactly
    those messages, so the walk's outcome (what the chunk counts, its last
    type) is the layout's: no guess, the same answer. A length is learned the
    second time a chunk of it is walked (once is only noted), up to ``limit``
    lengths of at most ``max_messages`` messages; when full, all is forgotten.
    """

    __slots__ = ("known", "limit", "max_messages", "seen")

    def __init__(self, *, limit: int = 256, max_messages: int = 16) -> None:
        self.known: dict[int, Layout] = {}
        self.seen: set[int] = set()
        self.limit = limit
        self.max_messages = max_messages

    def note(self, data: bytes, count: int) -> None:
        """``data`` (which starts and ends at a boundary) was walked, and counted ``count``."""
        n = len(data)
        if n not in self.seen:
            if len(self.seen) >= self.limit:
                self.seen.clear()
            self.seen.add(n)
            return
        heads: list[int] = []
        status_at = -1
        pos = 0
        while pos < n:
            if len(heads) >= 2 * self.max_messages:
                self.known[n] = _TOO_LONG  # not again
                return
            mtype, length = _frame_header(data, pos)
            heads += (mtype, length)
            if mtype == _READY_FOR_QUERY:
                status_at = pos + 5 if length > 4 else -1
            pos += length + 1
        if len(self.known) >= self.limit:
            self.known.clear()
        fmt = "!" + "".join(f"Bi{length - 4}x" for length in heads[1::2])
        self.known[n] = (struct.Struct(fmt).unpack_from, tuple(heads), count, heads[-2], status_at)


#: Shared by every session: a layout does not depend on the session (client limits are PostgreSQL's).
CLIENT_LAYOUTS = Layouts()
#: Server chunks without an ErrorResponse (its body must be looked at).
SERVER_LAYOUTS = Layouts()


class Relay:
    """Relays one client and one server endpoint and tracks the session's state."""

    def __init__(
        self,
        client: Endpoint,
        server: Endpoint,
        *,
        on_violation: Callable[[ProtocolViolation], None],
        on_idle: Callable[[], None],
        on_terminate: Callable[[], None],
    ) -> None:
        #: Call on_idle at the next idle ReadyForQuery (graceful shutdown).
        self.close_when_idle = False
        #: The server sent a FATAL/PANIC error: it will close, and said why.
        self.server_said_fatal = False
        self.client = client
        self.server = server
        self.tx_status = c.TX_IDLE
        self.owed = 0  # ReadyForQuery messages the server still owes
        self.unsynced = False  # extended-protocol messages sent since the last Sync
        self._client_scanner = FrameScanner(_ANSWERED, c.FRONTEND_LIMITS, weights=_CLIENT_WEIGHTS)
        self._server_scanner = FrameScanner(_SERVER_WATCH)
        # The client scanner's own tables, for the inline walk.
        self._ceilings = self._client_scanner.ceilings
        self._weights = self._client_scanner.weights
        self._on_violation = on_violation
        self._on_idle = on_idle
        self._on_terminate = on_terminate
        client.peer = server
        server.peer = client

    @property
    def idle(self) -> bool:
        return self.owed == 0 and not self.unsynced and self.tx_status == c.TX_IDLE

    @property
    def server_at_boundary(self) -> bool:
        """True when a message of the proxy's own can be sent to the client now."""
        return self._server_scanner.at_boundary

    def start(self, server_leftover: bytes, client_leftover: bytes) -> None:
        self.server.start_relay(self.from_server, server_leftover, dedicated=True)
        self.client.start_relay(self.from_client, client_leftover, dedicated=True)

    # --- client -> server ------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        scanner = self._client_scanner
        if scanner.at_boundary:
            n = len(data)
            known = CLIENT_LAYOUTS.known.get(n)
            if known is not None and known[0](data) == known[1]:
                tally = known[2]
                mtype = known[3]
            else:
                ceilings = self._ceilings
                weights = self._weights
                last_start = n - 5
                pos = tally = 0
                mtype = scanner.last_type
                while pos <= last_start:
                    mtype, length = _frame_header(data, pos)
                    if length < 4 or length > ceilings[mtype]:
                        break  # (pos < n then)
                    tally += weights[mtype]
                    pos += length + 1
                if pos != n or not n:  # a header failed, or the last message goes on
                    self._from_client(data)
                    return
                if known is None:
                    CLIENT_LAYOUTS.note(data, tally)
            scanner.last_type = mtype
            send = self.server.send  # (an attribute, not a method: no LOAD_METHOD)
            send(data)
            self.unsynced = mtype not in _ANSWERED
            if tally:
                if tally >= _TERMINATED:
                    self.owed += tally & _ANSWERS
                    self.unsynced = False
                    self._on_terminate()
                    return
                self.owed += tally
            return
        self._from_client(data)

    def _from_client(self, data: bytes) -> None:
        """Any chunk, by the scanner itself."""
        scanner = self._client_scanner
        try:
            tally = scanner.tally(data)
        except ProtocolViolation as exc:
            self._on_violation(exc)
            return
        send = self.server.send
        send(data)
        if tally:
            self.owed += tally & _ANSWERS
        self.unsynced = not scanner.at_boundary or scanner.last_type not in _ANSWERED
        if tally >= _TERMINATED:
            self.unsynced = False
            self._on_terminate()

    # --- server -> client ------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        send = self.client.send
        send(data)
        scanner = self._server_scanner
        if scanner.at_boundary:
            n = len(data)
            known = SERVER_LAYOUTS.known.get(n)
            if known is not None and known[0](data) == known[1]:
                scanner.last_type = known[3]
                if known[2]:
                    self.tx_status = data[known[4]] if known[4] >= 0 else _TX_IDLE
                    if self.owed > known[2]:
                        self.owed -= known[2]
                    else:
                        self.owed = 0
                    if self.close_when_idle and self.idle:
                        self._on_idle()
                return
            last_start = n - 5
            pos = answers = errors = 0
            status = _TX_IDLE
            fatal = False
            mtype = scanner.last_type
            while pos <= last_start:
                mtype, length = _frame_header(data, pos)
                if length < 4:
                    break
                if mtype in _SERVER_WATCH:
                    end = pos + length + 1
                    if end > n:
                        break
                    if mtype == _READY_FOR_QUERY:
                        answers += 1
                        status = data[pos + 5] if length > 4 else _TX_IDLE
                    else:
                        errors += 1
                        body = data[pos + 5 : end]
                        if _FATAL[0] in body or _FATAL[1] in body:
                            fatal = True
                    pos = end
                else:
                    pos += length + 1
            if pos == n and n:  # (a break leaves pos < n)
                scanner.last_type = mtype
                if not errors:
                    if known is None:
                        SERVER_LAYOUTS.note(data, answers)
                    if not answers:
                        return
                if answers:
                    self.tx_status = status
                    if self.owed > answers:
                        self.owed -= answers
                    else:
                        self.owed = 0
                if fatal:
                    self.server_said_fatal = True
                if self.close_when_idle and self.idle:
                    self._on_idle()
                return
        self._from_server(data)

    def _from_server(self, data: bytes) -> None:
        """Any chunk, by the scanner itself."""
        frames = self._server_scanner.feed(data)
        if not frames:
            return
        for mtype, body in frames:
            if mtype == _READY_FOR_QUERY:
                self.tx_status = body[0] if body else c.TX_IDLE
                if self.owed:
                    self.owed -= 1
            elif _FATAL[0] in body or _FATAL[1] in body:
                self.server_said_fatal = True
        if self.close_when_idle and self.idle:
            self._on_idle()
