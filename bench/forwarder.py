"""A bare asyncio + uvloop TCP byte forwarder: the "Python floor" for the proxy benchmarks.

Usage::

    python bench/forwarder.py --listen-port 6433 --target-host 127.0.0.1 --target-port 5432

Method: each accepted client gets an ``asyncio.Protocol`` pair (client side,
server side) on uvloop. ``data_received`` on one side is ``transport.write``
on the other: no parsing, no state, nothing but the bytes (only what a client
sends before its server connection is up is held, then written).
Flow control: when a side's write buffer passes its high-water mark
(``pause_writing``) the peer stops reading until it drains
(``resume_writing``). When either side closes, the peer is closed. Since it
only moves bytes, clients authenticate end to end with the server (SCRAM
included). Listens on 127.0.0.1 only; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import cast

import uvloop


class Side(asyncio.Protocol):
    """One end of a forwarded connection: what it receives, ``forward`` writes to ``peer``."""

    transport: asyncio.Transport
    peer: Side | None
    forward: Callable[[bytes], object]

    def __init__(self, peer: Side) -> None:  # the server side of a connected client side
        self.peer = peer
        self.forward = peer.transport.write

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.forward(data)

    def pause_writing(self) -> None:  # our write buffer passed high water: the peer stops reading
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()


class ClientSide(Side):
    """The accepted end: connects its server side, holding what arrives until then."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.peer = None
        self.early: list[bytes] = []
        self.forward = self.early.append

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.pause_reading()  # uvloop may still deliver a first read: kept in ``early``
        self.connecting = asyncio.get_running_loop().create_task(self._connect())  # keep a reference

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(lambda: Side(self), *self.target)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():  # the client left meanwhile
            server.transport.close()
            return
        for chunk in self.early:
            server.transport.write(chunk)
        self.peer, self.forward, self.early = server, server.transport.write, []
        self.transport.resume_reading()


async def serve(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientSide(host, port), "127.0.0.1", listen_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-port", type=int, required=True, help="port to listen on (127.0.0.1)")
    parser.add_argument("--target-host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    parser.add_argument("--target-port", type=int, required=True, help="server port")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.listen_port, args.target_host, args.target_port))


if __name__ == "__main__":
    main()
