"""The plain relay keeps exactly the state a message-by-message tracker would keep.

:class:`ReferenceRelay` is the relay's bookkeeping written the obvious way: both
streams cut into whole messages by the reference scanner, every message looked
at. The real :class:`Relay` walks chunks inline, counts instead of collecting,
takes known layouts from one ``unpack_from`` and leaves the rest to its
scanners. For random interleavings of client and server chunks (valid, invalid,
split anywhere, often of the same length as an earlier chunk with another
layout), with questions asked at random moments and ``close_when_idle`` set at
random moments, both must forward the same bytes, call back the same way at the
same moment (violation, terminate, idle) and answer every question (``idle``,
``server_at_boundary``, ``server_said_fatal``, ``owed``, ``tx_status``) alike.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.server import relay as relay_module
from pgtenantproxy.server.relay import Relay
from tests.unit.test_scanner_equivalence import ReferenceScanner

ANSWERED = {c.QUERY, c.SYNC, c.FUNCTION_CALL}
FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")


def msg(mtype: int, body: bytes = b"") -> bytes:
    return struct.pack("!Bi", mtype, len(body) + 4) + body


class ReferenceRelay:
    """The relay's bookkeeping, chunk by chunk, on whole messages (slow, obviously right)."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.client = ReferenceScanner(frozenset(range(256)), c.FRONTEND_LIMITS)
        self.server = ReferenceScanner(frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE}), None)
        self.events = events
        self.owed = 0
        self.unsynced = False
        self.tx_status = c.TX_IDLE
        self.fatal = False
        self.close_when_idle = False

    @property
    def idle(self) -> bool:
        return self.owed == 0 and not self.unsynced and self.tx_status == c.TX_IDLE

    def from_client(self, data: bytes) -> None:
        try:
            frames = self.client.feed(data)
        except ProtocolViolation as exc:
            self.events.append(("violation", exc.message))
            return
        self.events.append(("to server", data))
        terminate = False
        for mtype, _ in frames:
            if mtype == c.TERMINATE:
                terminate = True
            elif mtype in ANSWERED:
                self.owed += 1
        self.unsynced = not self.client.at_boundary or self.client.last_type not in ANSWERED
        if terminate:
            self.unsynced = False
            self.events.append(("terminate",))

    def from_server(self, data: bytes) -> None:
        self.events.append(("to client", data))
        frames = self.server.feed(data)
        if not frames:
            return
        for mtype, body in frames:
            if mtype == c.READY_FOR_QUERY:
                self.tx_status = body[0] if body else c.TX_IDLE
                if self.owed:
                    self.owed -= 1
            elif FATAL[0] in body or FATAL[1] in body:
                self.fatal = True
        if self.close_when_idle and self.idle:
            self.events.append(("idle",))

    def answers(self) -> tuple[Any, ...]:
        return self.idle, self.server.at_boundary, self.fatal, self.owed, self.tx_status


class FakeTransport:
    """Enough of an asyncio transport for an Endpoint: writes are recorded as events."""

    def __init__(self, events: list[tuple[Any, ...]], label: str) -> None:
        self.write: Callable[[bytes], None] = lambda data: events.append((label, data))
        self.aborted = False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def real_relay(events: list[tuple[Any, ...]]) -> tuple[Relay, Endpoint, Endpoint]:
    client, server = Endpoint("client"), Endpoint("unified")
    client.connection_made(FakeTransport(events, "to client"))  # type: ignore[arg-type]
    server.connection_made(FakeTransport(events, "to server"))  # type: ignore[arg-type]
    relay = Relay(
        client,
        server,
        on_violation=lambda exc: events.append(("violation", exc.message)),
        on_idle=lambda: events.append(("idle",)),
        on_terminate=lambda: events.append(("terminate",)),
    )
    relay.start(b"", b"")
    return relay, client, server


def answers(relay: Relay) -> tuple[Any, ...]:
    return relay.idle, relay.server_at_boundary, relay.server_said_fatal, relay.owed, relay.tx_status


# --- streams ------------------------------------------------------------------------

_frontend = sorted(c.FRONTEND_LIMITS)


@st.composite
def client_message(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 39))
    if kind == 0:  # a header PostgreSQL rejects
        bad = [(ord("Z"), 4), (0, 8), (c.SYNC, c.SMALL_MESSAGE_LIMIT + 5), (c.QUERY, 3), (c.BIND, -1)]
        mtype, length = draw(st.sampled_from(bad))
        return struct.pack("!Bi", mtype, length) + draw(st.binary(max_size=8))
    usual = [c.QUERY, c.SYNC, c.PARSE, c.BIND, c.EXECUTE, c.DESCRIBE, c.FLUSH, c.FUNCTION_CALL, c.CLOSE,
             c.COPY_DATA, c.TERMINATE]
    mtype = draw(st.sampled_from(usual if kind > 1 else _frontend))
    return msg(mtype, draw(st.binary(max_size=30)))


@st.composite
def server_message(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 49))
    if kind == 49:  # a length no server sends: the stream cannot be framed any more
        mtype = draw(st.sampled_from([ord("D"), c.READY_FOR_QUERY]))
        return struct.pack("!Bi", mtype, draw(st.integers(-2, 3)))
    kind %= 10
    if kind <= 3:
        status = draw(st.sampled_from([b"I", b"T", b"E", b"", b"IX"]))  # and two malformed ones
        return msg(c.READY_FOR_QUERY, status)
    if kind == 4:
        severity = draw(st.sampled_from([b"ERROR", b"FATAL", b"PANIC", b"WARNING"]))
        return msg(c.ERROR_RESPONSE, b"SERROR\x00V" + severity + b"\x00C08P01\x00Mx\x00\x00")
    mtype = draw(st.sampled_from([ord(t) for t in "12TDCnsNAS"]))
    return msg(mtype, draw(st.binary(max_size=40)) if draw(st.booleans()) else b"Z\x00\x00\x00\x05I")


def _cut(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def session_script(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    """Client and server chunks interleaved, with questions and close_when_idle in between."""
    client = _cut(draw, b"".join(draw(st.lists(client_message(), max_size=10))))
    server = _cut(draw, b"".join(draw(st.lists(server_message(), max_size=12))))
    script: list[tuple[str, bytes]] = []
    while client or server:
        if client and server:
            side = draw(st.sampled_from(["client", "server"]))
        else:
            side = "client" if client else "server"
        script.append((side, (client if side == "client" else server).pop(0)))
        extra = draw(st.integers(0, 15))
        if extra == 0:
            script.append(("ask", b""))
        elif extra == 1:
            script.append(("close when idle", b""))
    return script


def _run(script: list[tuple[str, bytes]], ask_every_step: bool) -> None:
    ref_events: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    reference = ReferenceRelay(ref_events)
    relay, client, server = real_relay(events)
    for step, (what, data) in enumerate(script):
        if what == "client":
            reference.from_client(data)
            client.data_received(data)  # the relay's own sink, installed by start_relay
        elif what == "server":
            try:
                reference.from_server(data)
            except ProtocolViolation as exc:
                # A server stream that cannot be framed: raised out of data_received (the
                # transport then drops the server), after the chunk went to the client.
                with pytest.raises(ProtocolViolation) as raised:
                    server.data_received(data)
                assert raised.value.message == exc.message
                assert events == ref_events
                return
            server.data_received(data)
        elif what == "close when idle":
            reference.close_when_idle = True
            relay.close_when_idle = True
        if what == "ask" or ask_every_step:
            assert answers(relay) == reference.answers(), f"step {step}: {what}"
        assert events == ref_events, f"step {step}: {what}"
        if ref_events and ref_events[-1][0] in ("violation", "terminate", "idle"):
            break  # the session ends here
    assert answers(relay) == reference.answers()
    assert events == ref_events


@settings(max_examples=400, deadline=None)
@given(session_script())
def test_same_state_as_chunk_by_chunk_tracking(script: list[tuple[str, bytes]]) -> None:
    _run(script, ask_every_step=False)


@settings(max_examples=200, deadline=None)
@given(session_script())
def test_same_state_when_asked_after_every_chunk(script: list[tuple[str, bytes]]) -> None:
    _run(script, ask_every_step=True)


def test_known_layouts_give_what_the_walk_gives() -> None:
    """A layout learned from one chunk, checked against chunks of the same length (same layout or not)."""
    relay_module.CLIENT_LAYOUTS.known.clear()
    relay_module.SERVER_LAYOUTS.known.clear()
    parse, bind = msg(c.PARSE, b"\x00q\x00\x00\x00"), msg(c.BIND, b"\x00" * 8)
    execute = msg(c.EXECUTE, b"\x00" * 5)
    request = parse + bind + execute + msg(c.SYNC)
    other = parse + msg(c.QUERY, b"\x00" * 8) + execute + msg(c.FLUSH)
    bad = parse + b"Z" + bind[1:] + execute + msg(c.SYNC)  # a type no client may send
    head = msg(ord("1")) + msg(ord("2"))
    answer = head + msg(ord("D"), b"\x00\x01\x00\x00\x00\x0212") + msg(c.READY_FOR_QUERY, b"T")
    notice = head + msg(ord("N"), b"\x00\x01\x00\x00\x00\x0212") + msg(c.READY_FOR_QUERY, b"E")
    error = head + msg(c.ERROR_RESPONSE, b"\x00VFATAL\x00") + msg(c.READY_FOR_QUERY, b"I")
    assert len(request) == len(other) == len(bad) and len(answer) == len(notice) == len(error)
    script = [("client", request), ("server", answer)] * 3 + [
        ("client", other), ("ask", b""), ("client", request), ("server", notice), ("ask", b""),
        ("client", request), ("server", error), ("ask", b""), ("client", bad),
    ]
    _run(script, ask_every_step=False)
    assert len(request) in relay_module.CLIENT_LAYOUTS.known
    assert len(answer) in relay_module.SERVER_LAYOUTS.known


def test_a_length_with_too_many_messages_is_not_learned() -> None:
    layouts = relay_module.Layouts(max_messages=2)
    chunk = msg(c.SYNC) * 3
    layouts.note(chunk, 3)
    layouts.note(chunk, 3)
    known = layouts.known[len(chunk)]
    assert known[0](chunk) != known[1]  # never matches: walked every time


def test_layouts_are_forgotten_when_full() -> None:
    layouts = relay_module.Layouts(limit=2)
    for n in (1, 2, 3):
        chunk = msg(c.QUERY, b"x" * n)
        layouts.note(chunk, 1)
        layouts.note(chunk, 1)
    assert list(layouts.known) == [len(msg(c.QUERY, b"xxx"))]


def test_pipelined_answers_and_a_fatal_error() -> None:
    script = [
        ("client", msg(c.QUERY, b"a\x00") + msg(c.QUERY, b"b\x00")),
        ("server", msg(c.READY_FOR_QUERY, b"T") + msg(ord("C"), b"x\x00")),
        ("server", msg(c.READY_FOR_QUERY, b"I") + msg(c.ERROR_RESPONSE, b"SFATAL\x00VFATAL\x00\x00")[:7]),
        ("ask", b""),
        ("server", msg(c.ERROR_RESPONSE, b"SFATAL\x00VFATAL\x00\x00")[7:]),
    ]
    _run(script, ask_every_step=False)


@pytest.mark.parametrize("split", [False, True])
def test_close_when_idle_on_an_error_alone(split: bool) -> None:
    """Any ErrorResponse or ReadyForQuery is a moment to look at idleness, not only a ReadyForQuery."""
    error = msg(c.ERROR_RESPONSE, b"SERROR\x00VERROR\x00\x00")
    chunks = [error[:4], error[4:]] if split else [error]
    script = [("close when idle", b""), *(("server", chunk) for chunk in chunks)]
    _run(script, ask_every_step=False)


@pytest.mark.parametrize(
    "chunk",
    [
        msg(c.READY_FOR_QUERY, b"I") + struct.pack("!Bi", ord("D"), 2),
        # Read with the bad length, the rest would frame exactly to the chunk's end: still refused.
        struct.pack("!Bi", ord("D"), 3) + struct.pack("!i", 4),
    ],
)
def test_server_stream_that_cannot_be_framed(chunk: bytes) -> None:
    """Raised out of data_received, as before (the transport then drops the server), after forwarding."""
    events: list[tuple[Any, ...]] = []
    _relay, _client, server = real_relay(events)
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        server.data_received(chunk)
    assert events == [("to client", chunk)]


async def test_dedicated_endpoint_gets_chunks_directly_and_send_stops_when_lost() -> None:
    """On a real loop (uvloop in the proxy), data goes straight to the sink; send is a no-op once lost."""
    got: list[bytes] = []
    done = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        await reader.read(5)
        writer.close()
        done.set_result(None)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_connection(lambda: Endpoint("unified"), "127.0.0.1", port)
    first = await endpoint.receive()
    endpoint.start_relay(got.append, first, dedicated=True)
    endpoint.send(b"world")
    await done
    for _ in range(100):
        if not endpoint.is_open:
            break
        await asyncio.sleep(0.01)
    assert b"".join(got) == b"hello"
    assert not endpoint.is_open
    endpoint.send(b"after the end")  # dropped, like write()
    endpoint.write(b"after the end")
    srv.close()
    await srv.wait_closed()
