"""One socket of a session (the client's or a server's), as an asyncio Protocol.

An endpoint has two modes. During the handshake, received bytes are buffered
and read with ``await receive()``. Once the session is established,
``start_relay(sink)`` hands every received chunk straight to ``sink`` from
``data_received``: no task switch, no copy, on the hot path. With
``start_relay(sink, dedicated=True)`` (an endpoint that never goes back to
buffering) the transport calls ``sink`` itself, one Python call less per chunk.
``send`` is :meth:`Endpoint.write` without a Python frame of its own: the
transport's ``write`` while the connection is up, a no-op once it is lost.

Flow control is symmetric: when this endpoint's write buffer fills up, its peer
stops reading (``pause_writing`` -> ``peer.pause_reading``), so a 64 MiB value
or a COPY never piles up in the proxy's memory.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol, cast

logger = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024


class FlowPeer(Protocol):
    """The other side of a relay: paused while this endpoint cannot write."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def _drop(data: bytes) -> None:
    """Where writes go when there is no connection (none yet, or lost)."""


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF or reset)."""


class Endpoint(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: FlowPeer | None = None
        self.sink: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None
        self.is_tls = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._write_paused = False
        #: What :meth:`write` does, for hot paths: look it up at each call (it changes).
        self.send: Callable[[bytes], object] = _drop

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.send = self.transport.write

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(data)
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        self.send = _drop
        self._wake()
        if self.peer is not None:
            self.peer.resume_reading()
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.peer is not None:
            self.peer.resume_reading()

    # --- used by the session ----------------------------------------------
    @property
    def is_open(self) -> bool:
        return not self._lost and self.transport is not None and not self.transport.is_closing()

    @property
    def has_buffered(self) -> bool:
        """Bytes (or EOF) arrived while nobody was reading: unexpected on an idle connection."""
        return bool(self._buf) or self._eof

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    async def receive(self) -> bytes:
        """Buffered bytes, waiting for some; raises ConnectionClosed at EOF."""
        while not self._buf:
            if self._eof:
                raise ConnectionClosed(self.name)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def start_relay(
        self, sink: Callable[[bytes], None], pending: bytes = b"", *, dedicated: bool = False
    ) -> None:
        """Switch to push mode; bytes already buffered go to the sink first.

        ``dedicated``: the endpoint stays in push mode to the end (``sink`` is
        never set back to None), so the transport may call ``sink`` directly
        instead of :meth:`data_received`.
        """
        buffered = bytes(self._buf) + pending if pending else bytes(self._buf)
        self._buf.clear()
        self.sink = sink
        if dedicated and self.transport is not None and not self._lost:
            self.data_received = sink  # type: ignore[method-assign,assignment]
            # uvloop keeps the protocol's bound data_received from connection_made: renew it.
            self.transport.set_protocol(self)
        if buffered:
            sink(buffered)

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        if transport is None:
            raise ConnectionClosed(self.name)
        self.transport = transport
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        if not self._lost:
            self.send = transport.write
        self.is_tls = True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
