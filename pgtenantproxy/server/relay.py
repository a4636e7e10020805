"""The established session's hot path: bytes relayed both ways, boundaries tracked.

Client chunks are validated (types and lengths, as PostgreSQL checks them) and
forwarded as they came. Server chunks are forwarded as they came. The
:class:`FrameScanner` on each side only finds boundaries, so the relay knows

* the transaction status from the last ReadyForQuery ('I', 'T', 'E'),
* how many answers are still owed: each Query, Sync and FunctionCall the client
  sends is answered by exactly one ReadyForQuery,

which together say whether the session is idle (safe to close on shutdown) or
busy (a server is working for this client; cancel it if the client vanishes).
"""

from __future__ import annotations

from collections.abc import Callable

from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import FrameScanner

_ANSWERED = frozenset({c.QUERY, c.SYNC, c.FUNCTION_CALL})
#: The client scanner's tally: 1 per answered message, Terminate above any count a chunk can reach.
_TERMINATED = 1 << 32
_ANSWERS = _TERMINATED - 1
_CLIENT_WEIGHTS = {**dict.fromkeys(_ANSWERED, 1), c.TERMINATE: _TERMINATED}
_SERVER_WATCH = frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE})
_FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")
_READY_FOR_QUERY = c.READY_FOR_QUERY


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
        # Hot path: bound once.
        self._client_tally = self._client_scanner.tally
        self._server_feed = self._server_scanner.feed
        self._on_violation = on_violation
        self._on_idle = on_idle
        self._on_terminate = on_terminate
        self._to_server = server.write
        self._to_client = client.write
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
        self.server.start_relay(self.from_server, server_leftover)
        self.client.start_relay(self.from_client, client_leftover)

    def from_client(self, data: bytes) -> None:
        try:
            tally = self._client_tally(data)
        except ProtocolViolation as exc:
            self._on_violation(exc)
            return
        self._to_server(data)
        scanner = self._client_scanner
        if tally:
            if tally >= _TERMINATED:
                self.owed += tally & _ANSWERS
                self.unsynced = False
                self._on_terminate()
                return
            self.owed += tally
        self.unsynced = not scanner.at_boundary or scanner.last_type not in _ANSWERED

    def from_server(self, data: bytes) -> None:
        self._to_client(data)
        frames = self._server_feed(data)
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
