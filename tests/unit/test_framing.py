"""Framing: startup packets, typed messages, the relay's boundary scanner.

Byte vectors first (each packet kind, each limit PostgreSQL enforces), then
the split invariant (a stream fed in pieces, cut at every offset, gives what
it gives fed whole), then hypothesis fuzzing: random, truncated and oversized
frames never make anything but ProtocolViolation / ProxyError come out of
``protocol/``.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.framing import (
    Frame,
    FrameScanner,
    Message,
    MessageReader,
    StartupPacket,
    StartupReader,
    parse_startup_packet,
)
from pgtenantproxy.protocol.messages import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)


def msg(mtype: str | int, body: bytes = b"") -> bytes:
    """A typed message, framed by hand (independent of the code under test)."""
    t = mtype if isinstance(mtype, int) else ord(mtype)
    return bytes((t,)) + struct.pack("!i", len(body) + 4) + body


def header(mtype: str | int, length: int) -> bytes:
    t = mtype if isinstance(mtype, int) else ord(mtype)
    return bytes((t,)) + struct.pack("!i", length)


STREAM = b"".join(
    [
        msg("Q", b"SELECT 1\x00"),
        msg("P", b"s1\x00SELECT $1\x00\x00\x00"),
        msg("B", b"\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00"),
        msg("E", b"\x00\x00\x00\x00\x00"),
        msg("S"),
        msg("d", b"x" * 300),
        msg("H"),
        msg("X"),
    ]
)
STREAM_TYPES = [ord(t) for t in "QPBESdHX"]


# --- StartupReader --------------------------------------------------------------


def read_startup(data: bytes) -> tuple[StartupPacket | None, bytes]:
    reader = StartupReader()
    reader.feed(data)
    return reader.next_packet(), reader.leftover()


def test_startup_ssl_request() -> None:
    packet, rest = read_startup(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    assert isinstance(packet, SSLRequest)
    assert rest == b""


def test_startup_ssl_request_then_client_hello_is_leftover() -> None:
    packet, rest = read_startup(SSLRequest.build() + b"\x16\x03\x01")
    assert isinstance(packet, SSLRequest)
    assert rest == b"\x16\x03\x01"


def test_startup_gssenc_request() -> None:
    packet, _ = read_startup(b"\x00\x00\x00\x08\x04\xd2\x16\x30")
    assert isinstance(packet, GSSENCRequest)


def test_startup_cancel_request_30() -> None:
    packet, _ = read_startup(b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xca\xfe\xba\xbe")
    assert packet == CancelRequest(12345, b"\xca\xfe\xba\xbe")


@pytest.mark.parametrize("key_len", [8, 32, 64, 256])
def test_startup_cancel_request_32_long_key(key_len: int) -> None:
    key = bytes((i * 7) % 256 for i in range(key_len))
    raw = struct.pack("!IIi", 12 + key_len, c.CANCEL_REQUEST_CODE, 99) + key
    packet, _ = read_startup(raw)
    assert packet == CancelRequest(99, key)


def test_startup_cancel_key_too_long() -> None:
    raw = struct.pack("!IIi", 12 + 257, c.CANCEL_REQUEST_CODE, 99) + b"k" * 257
    reader = StartupReader()
    reader.feed(raw)
    with pytest.raises(ProtocolViolation):
        reader.next_packet()


def test_startup_message_with_params() -> None:
    body = b"\x00\x03\x00\x00user\x00app\x00database\x00shop\x00application_name\x00t\x00\x00"
    packet, rest = read_startup(struct.pack("!I", len(body) + 4) + body + b"Q")
    assert isinstance(packet, StartupMessage)
    assert packet.params == {"user": "app", "database": "shop", "application_name": "t"}
    assert packet.protocol == c.PROTOCOL_3_0
    assert rest == b"Q"


def test_startup_message_protocol_32() -> None:
    packet, _ = read_startup(StartupMessage.build({"user": "u"}, c.PROTOCOL_3_2))
    assert isinstance(packet, StartupMessage) and packet.protocol == c.PROTOCOL_3_2


def test_startup_protocol_20_is_0a000() -> None:
    body = struct.pack("!I", 2 << 16) + b"user\x00u\x00\x00"
    reader = StartupReader()
    reader.feed(struct.pack("!I", len(body) + 4) + body)
    with pytest.raises(ProxyError) as info:
        reader.next_packet()
    assert info.value.sqlstate == "0A000"
    assert info.value.severity == "FATAL"
    assert "2.0" in info.value.message


@pytest.mark.parametrize(
    "length", [-1, -(2**31), 0, 3, 4, 7, c.MAX_STARTUP_PACKET_LENGTH + 1, 2**31 - 1]
)
def test_startup_bad_length(length: int) -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!i", length))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_packet()
    assert info.value.sqlstate == "08P01"
    assert info.value.message == "invalid length of startup packet"


def test_startup_longest_allowed_packet() -> None:
    pad = b"x" * (c.MAX_STARTUP_PACKET_LENGTH - 4 - 4 - 9 - 2)
    body = struct.pack("!I", c.PROTOCOL_3_0) + b"user\x00u\x00o\x00" + pad + b"\x00\x00"
    raw = struct.pack("!I", len(body) + 4) + body
    assert len(raw) == c.MAX_STARTUP_PACKET_LENGTH
    packet, _ = read_startup(raw)
    assert isinstance(packet, StartupMessage)


def test_startup_minimal_length_8_is_a_layout_error() -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!II", 8, c.PROTOCOL_3_0))
    with pytest.raises(ProtocolViolation):
        reader.next_packet()


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\x00\x00\x00\x08\x00\x03\x00"])
def test_parse_startup_packet_truncated(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_startup_packet(raw)


def test_startup_reader_waits_for_whole_packet() -> None:
    raw = StartupMessage.build({"user": "bob", "database": "shop"})
    for cut in range(len(raw)):
        reader = StartupReader()
        reader.feed(raw[:cut])
        assert reader.next_packet() is None
        reader.feed(raw[cut:])
        packet = reader.next_packet()
        assert isinstance(packet, StartupMessage) and packet.raw == raw


def test_startup_reader_ssl_then_startup() -> None:
    reader = StartupReader()
    startup = StartupMessage.build({"user": "bob"})
    reader.feed(SSLRequest.build() + startup)
    assert isinstance(reader.next_packet(), SSLRequest)
    packet = reader.next_packet()
    assert isinstance(packet, StartupMessage) and packet.raw == startup
    assert reader.next_packet() is None


# --- MessageReader ----------------------------------------------------------------


def read_all(reader: MessageReader, chunks: Iterable[bytes]) -> list[Message]:
    out: list[Message] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (m := reader.next_message()) is not None:
            out.append(m)
    return out


def test_message_reader_whole() -> None:
    got = read_all(MessageReader(c.FRONTEND_LIMITS), [STREAM])
    assert [m.type for m in got] == STREAM_TYPES
    assert got[0] == Message(ord("Q"), b"SELECT 1\x00")
    assert b"".join(m.raw() for m in got) == STREAM


def test_message_reader_split_at_every_offset() -> None:
    whole = read_all(MessageReader(c.FRONTEND_LIMITS), [STREAM])
    for cut in range(len(STREAM) + 1):
        assert read_all(MessageReader(c.FRONTEND_LIMITS), [STREAM[:cut], STREAM[cut:]]) == whole


def test_message_reader_byte_by_byte() -> None:
    whole = read_all(MessageReader(), [STREAM])
    assert read_all(MessageReader(), [STREAM[i : i + 1] for i in range(len(STREAM))]) == whole


def test_message_reader_leftover() -> None:
    reader = MessageReader()
    reader.feed(msg("Z", b"I") + b"D\x00\x00")
    assert reader.next_message() == Message(ord("Z"), b"I")
    assert reader.next_message() is None
    assert reader.leftover() == b"D\x00\x00"
    assert reader.leftover() == b""


@pytest.mark.parametrize("mtype", [0, ord("Z"), ord("R"), ord("A"), ord("x"), 255])
def test_message_reader_unknown_frontend_type(mtype: int) -> None:
    reader = MessageReader(c.FRONTEND_LIMITS)
    reader.feed(header(mtype, 4))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_message()
    assert info.value.message == f"invalid frontend message type {mtype}"
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    ("mtype", "length"),
    [
        ("Q", 3),
        ("Q", 0),
        ("Q", -1),
        ("Q", -(2**31)),
        ("S", c.SMALL_MESSAGE_LIMIT + 5),
        ("p", c.SMALL_MESSAGE_LIMIT + 5),
        ("Q", c.LARGE_MESSAGE_LIMIT + 5),
        ("d", 2**31 - 1),
    ],
)
def test_message_reader_invalid_length(mtype: str, length: int) -> None:
    reader = MessageReader(c.FRONTEND_LIMITS)
    reader.feed(header(mtype, length))
    with pytest.raises(ProtocolViolation) as info:
        reader.next_message()
    assert info.value.message == "invalid message length"


@pytest.mark.parametrize(("mtype", "limit"), [("S", c.SMALL_MESSAGE_LIMIT), ("Q", c.LARGE_MESSAGE_LIMIT)])
def test_message_reader_length_at_limit_is_accepted(mtype: str, limit: int) -> None:
    reader = MessageReader(c.FRONTEND_LIMITS)
    reader.feed(header(mtype, limit + 4))
    assert reader.next_message() is None  # waits for the body, no error


def test_message_reader_default_limit_without_limits() -> None:
    reader = MessageReader(default_limit=10)
    reader.feed(msg("Z", b"I") + header("D", 15))
    assert reader.next_message() == Message(ord("Z"), b"I")
    with pytest.raises(ProtocolViolation):
        reader.next_message()


def test_message_reader_any_type_without_limits() -> None:
    assert read_all(MessageReader(), [msg(0), msg(255, b"ab")]) == [Message(0, b""), Message(255, b"ab")]


# --- FrameScanner -------------------------------------------------------------------


def scan(scanner: FrameScanner, chunks: Iterable[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(scanner.feed(chunk))
    return out


WATCH = frozenset({c.QUERY, c.SYNC, c.TERMINATE, c.COPY_DATA})


def test_frame_scanner_whole() -> None:
    scanner = FrameScanner(WATCH, c.FRONTEND_LIMITS)
    frames = scan(scanner, [STREAM])
    assert frames == [
        Frame(ord("Q"), b"SELECT 1\x00"),
        Frame(ord("S"), b""),
        Frame(ord("d"), b"x" * 300),
        Frame(ord("X"), b""),
    ]
    assert scanner.at_boundary and scanner.last_type == ord("X")


def _state(scanner: FrameScanner) -> tuple[bool, int]:
    return scanner.at_boundary, scanner.last_type


@pytest.mark.parametrize("watch", [frozenset(), WATCH, frozenset(range(256))])
def test_frame_scanner_split_at_every_offset(watch: frozenset[int]) -> None:
    whole_scanner = FrameScanner(watch, c.FRONTEND_LIMITS)
    whole = scan(whole_scanner, [STREAM])
    for cut in range(len(STREAM) + 1):
        scanner = FrameScanner(watch, c.FRONTEND_LIMITS)
        assert scan(scanner, [STREAM[:cut], STREAM[cut:]]) == whole
        assert _state(scanner) == _state(whole_scanner)


@pytest.mark.parametrize("watch", [frozenset(), WATCH])
def test_frame_scanner_split_at_every_pair_of_offsets(watch: frozenset[int]) -> None:
    stream = msg("Q", b"SELECT 1\x00") + msg("P", b"abcdefgh") + msg("S")
    whole = scan(FrameScanner(watch), [stream])
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            scanner = FrameScanner(watch)
            assert scan(scanner, [stream[:i], stream[i:j], stream[j:]]) == whole
            assert _state(scanner) == (True, ord("S"))


def test_frame_scanner_byte_by_byte_state() -> None:
    """at_boundary / last_type after every single byte of a stream."""
    parts = [msg("Q", b"SELECT 1\x00"), msg("P", b"abc"), msg("S")]
    scanner = FrameScanner(frozenset({c.QUERY}))
    assert _state(scanner) == (True, 0)
    last = 0
    for part in parts:
        for i, byte in enumerate(part):
            scanner.feed(bytes((byte,)))
            complete = i == len(part) - 1
            if complete:
                last = part[0]
            assert _state(scanner) == (complete, last), (part, i)


def test_frame_scanner_skipped_body_ending_at_chunk_end_sets_last_type() -> None:
    """An unwatched body that ends exactly where a chunk ends is complete there."""
    scanner = FrameScanner(frozenset({c.SYNC}))
    scanner.feed(msg("S"))
    bind = msg("B", b"b" * 100)
    scanner.feed(bind[:50])
    assert _state(scanner) == (False, ord("S"))
    scanner.feed(bind[50:])
    assert _state(scanner) == (True, ord("B"))


def test_frame_scanner_watched_body_ending_at_chunk_end() -> None:
    scanner = FrameScanner(frozenset({c.QUERY}))
    query = msg("Q", b"q" * 100)
    assert scanner.feed(query[:50]) == []
    assert _state(scanner) == (False, 0)
    assert scanner.feed(query[50:]) == [Frame(ord("Q"), b"q" * 100)]
    assert _state(scanner) == (True, ord("Q"))


def test_frame_scanner_empty_chunks() -> None:
    scanner = FrameScanner(WATCH)
    assert scanner.feed(b"") == []
    query = msg("Q", b"x\x00")
    for piece in (query[:3], b"", query[3:7], b"", query[7:]):
        scanner.feed(piece)
    assert _state(scanner) == (True, ord("Q"))


@pytest.mark.parametrize("mtype", [ord("Z"), ord("A"), 0, 255])
def test_frame_scanner_unknown_type_with_limits(mtype: int) -> None:
    scanner = FrameScanner(WATCH, c.FRONTEND_LIMITS)
    scanner.feed(msg("Q", b"x\x00"))
    with pytest.raises(ProtocolViolation, match=f"invalid frontend message type {mtype}$"):
        scanner.feed(header(mtype, 4))


def test_frame_scanner_unknown_type_split_header() -> None:
    scanner = FrameScanner(WATCH, c.FRONTEND_LIMITS)
    scanner.feed(b"Z\x00\x00")
    with pytest.raises(ProtocolViolation, match="invalid frontend message type 90"):
        scanner.feed(b"\x00\x04")


@pytest.mark.parametrize("limits", [None, c.FRONTEND_LIMITS])
@pytest.mark.parametrize("length", [-1, 0, 3, -(2**31)])
def test_frame_scanner_short_length_always_rejected(limits: dict[int, int] | None, length: int) -> None:
    scanner = FrameScanner(WATCH, limits)
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        scanner.feed(header("Q", length))


def test_frame_scanner_over_limit() -> None:
    scanner = FrameScanner(WATCH, c.FRONTEND_LIMITS)
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        scanner.feed(header("S", c.SMALL_MESSAGE_LIMIT + 5))


def test_frame_scanner_without_limits_accepts_any_type_and_huge_length() -> None:
    scanner = FrameScanner(frozenset({c.READY_FOR_QUERY}))
    assert scanner.feed(header("D", 2**31 - 1) + b"x" * 10) == []
    assert not scanner.at_boundary


def test_frame_scanner_large_body_skipped_in_many_chunks() -> None:
    body = bytes(range(256)) * 40
    stream = msg("D", body) + msg("Z", b"I")
    scanner = FrameScanner(frozenset({c.READY_FOR_QUERY}))
    frames = scan(scanner, [stream[i : i + 7] for i in range(0, len(stream), 7)])
    assert frames == [Frame(ord("Z"), b"I")]
    assert _state(scanner) == (True, ord("Z"))


# --- fuzzing ----------------------------------------------------------------------

_any_type = st.integers(0, 255)
_frontend_type = st.sampled_from(sorted(c.FRONTEND_LIMITS))
_valid_frames = st.lists(
    st.tuples(_frontend_type, st.binary(max_size=64)).map(lambda tb: msg(tb[0], tb[1])), max_size=8
)


def _random_frame(data: st.DataObject) -> bytes:
    """A frame that may be valid, truncated, oversized, negative, or random."""
    kind = data.draw(st.sampled_from(["valid", "truncated", "length", "random"]))
    mtype = data.draw(_any_type | _frontend_type)
    body = data.draw(st.binary(max_size=40))
    if kind == "valid":
        return msg(mtype, body)
    if kind == "truncated":
        whole = msg(mtype, body)
        return whole[: data.draw(st.integers(0, len(whole)))]
    if kind == "length":
        length = data.draw(
            st.sampled_from([-1, 0, 3, 4, c.SMALL_MESSAGE_LIMIT + 5, c.LARGE_MESSAGE_LIMIT + 5, 2**31 - 1])
            | st.integers(-(2**31), 2**31 - 1)
        )
        return header(mtype, length) + body
    return data.draw(st.binary(max_size=60))


def _cuts(data: st.DataObject, n: int) -> list[int]:
    return sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))


def _chunks(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


Outcome = tuple[str, object]


def _outcome(fn: Callable[[], object]) -> Outcome:
    """("ok", what ``fn`` returns), or ("error", ...) for a ProxyError (nothing else may escape)."""
    try:
        return ("ok", fn())
    except ProxyError as exc:
        return ("error", (type(exc).__name__, exc.sqlstate))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_frame_scanner_split_equals_whole(data: st.DataObject) -> None:
    stream = b"".join(_random_frame(data) for _ in range(data.draw(st.integers(0, 5))))
    watch = frozenset(data.draw(st.sets(_any_type | _frontend_type, max_size=6)))
    limits = data.draw(st.sampled_from([None, c.FRONTEND_LIMITS]))
    chunks = _chunks(stream, _cuts(data, len(stream)))

    def run(pieces: list[bytes]) -> tuple[Outcome, list[Frame]]:
        scanner = FrameScanner(watch, limits)
        frames: list[Frame] = []

        def feed_all() -> object:
            for piece in pieces:
                frames.extend(scanner.feed(piece))
            return _state(scanner)

        return _outcome(feed_all), frames

    whole_outcome, whole_frames = run([stream])
    split_outcome, split_frames = run(chunks)
    assert split_outcome == whole_outcome
    if whole_outcome[0] == "ok":
        assert split_frames == whole_frames


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_message_reader_split_equals_whole(data: st.DataObject) -> None:
    stream = b"".join(_random_frame(data) for _ in range(data.draw(st.integers(0, 5))))
    limits = data.draw(st.sampled_from([None, c.FRONTEND_LIMITS, {ord("Q"): 10, ord("X"): 0}]))
    chunks = _chunks(stream, _cuts(data, len(stream)))

    def run(pieces: list[bytes]) -> tuple[Outcome, list[Message]]:
        reader = MessageReader(limits, default_limit=data_limit)
        out: list[Message] = []

        def feed_all() -> object:
            out.extend(read_all(reader, pieces))
            return len(reader.leftover())

        return _outcome(feed_all), out

    data_limit = data.draw(st.sampled_from([c.LARGE_MESSAGE_LIMIT, 16]))
    whole = run([stream])
    split = run(chunks)
    assert whole[0] == split[0]
    if whole[0][0] == "ok":
        assert whole[1] == split[1]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_frame_scanner_valid_streams(data: st.DataObject) -> None:
    """Valid client streams: every watched frame comes out, in order, wherever the cuts are."""
    frames = data.draw(_valid_frames)
    stream = b"".join(frames)
    watch = frozenset(data.draw(st.sets(_frontend_type, max_size=5)))
    scanner = FrameScanner(watch, c.FRONTEND_LIMITS)
    got = scan(scanner, _chunks(stream, _cuts(data, len(stream))))
    expected = [Frame(f[0], f[5:]) for f in frames if f[0] in watch]
    assert got == expected
    assert scanner.at_boundary
    assert scanner.last_type == (frames[-1][0] if frames else 0)


def _startup_stream(data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["random", "startup", "cancel", "ssl", "length"]))
    if kind == "random":
        return data.draw(st.binary(max_size=80))
    if kind == "startup":
        versions = st.sampled_from([c.PROTOCOL_3_0, c.PROTOCOL_3_2, 2 << 16]) | st.integers(0, 2**32 - 1)
        version = data.draw(versions)
        body = struct.pack("!I", version) + data.draw(st.binary(max_size=60))
    elif kind == "cancel":
        body = struct.pack("!I", c.CANCEL_REQUEST_CODE) + data.draw(st.binary(max_size=300))
    elif kind == "ssl":
        body = struct.pack("!I", data.draw(st.sampled_from([c.SSL_REQUEST_CODE, c.GSSENC_REQUEST_CODE])))
        body += data.draw(st.binary(max_size=8))
    else:
        length = data.draw(st.integers(-(2**31), 2**31 - 1))
        return struct.pack("!i", length) + data.draw(st.binary(max_size=20))
    length = data.draw(st.just(len(body) + 4) | st.integers(-10, 400))
    return struct.pack("!i", length) + body


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_startup_reader(data: st.DataObject) -> None:
    stream = _startup_stream(data) + data.draw(st.binary(max_size=10))
    chunks = _chunks(stream, _cuts(data, len(stream)))

    def run(pieces: list[bytes]) -> tuple[Outcome, list[object]]:
        reader = StartupReader()
        packets: list[object] = []

        def feed_all() -> object:
            for piece in pieces:
                reader.feed(piece)
                while (p := reader.next_packet()) is not None:
                    packets.append(p)
            return len(reader.leftover())

        return _outcome(feed_all), packets

    whole = run([stream])
    split = run(chunks)
    assert whole == split
