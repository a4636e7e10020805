"""The optimised FrameScanner behaves exactly like an obvious reference scanner.

:class:`ReferenceScanner` buffers every byte and cuts whole messages off the
front, checking each header with :func:`check_frame` as soon as its five bytes
are there. The real :class:`FrameScanner` skips bodies by length, keeps its
state in locals and only pre-checks headers; for any stream cut at any offsets,
each ``feed`` must return the same frames, leave the same ``last_type`` and
``at_boundary``, and fail (ProtocolViolation) on the same chunk with the same
message.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import FrameScanner, check_frame


class ReferenceScanner:
    """Whole-buffer message splitter: slow, obviously right."""

    def __init__(self, watch: frozenset[int], limits: Mapping[int, int] | None) -> None:
        self.watch = watch
        self.limits = limits
        self.buf = b""
        self.last_type = 0

    @property
    def at_boundary(self) -> bool:
        return not self.buf

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out: list[tuple[int, bytes]] = []
        while len(self.buf) >= 5:
            mtype = self.buf[0]
            (length,) = struct.unpack_from("!i", self.buf, 1)
            if self.limits is not None or length < 4:
                check_frame(mtype, length, self.limits, c.LARGE_MESSAGE_LIMIT)
            if len(self.buf) < 1 + length:
                break
            if mtype in self.watch:
                out.append((mtype, self.buf[5 : 1 + length]))
            self.last_type = mtype
            self.buf = self.buf[1 + length :]
        return out


def _outcome(scanner: FrameScanner | ReferenceScanner, chunk: bytes) -> object:
    try:
        frames = [tuple(f) for f in scanner.feed(chunk)]
    except ProtocolViolation as exc:
        return ("violation", exc.message)
    return frames, scanner.last_type, scanner.at_boundary


_frontend_types = sorted(c.FRONTEND_LIMITS)
_bad_length = st.sampled_from([3, 0, -1, -(2**31)]) | st.integers(-(2**31), 3)


@st.composite
def _frame(draw: st.DrawFn, limits: Mapping[int, int] | None) -> bytes:
    """A valid frame, or (rarely) one whose header PostgreSQL would reject."""
    if limits is not None:
        mtype = draw(st.sampled_from(_frontend_types))
    else:
        mtype = draw(st.integers(0, 255))
    size = draw(st.sampled_from([0, 1, 4, 5, 6, 40, 300, 3000]) | st.integers(0, 64))
    body = draw(st.binary(min_size=size, max_size=size)) if size <= 64 else bytes([mtype]) * size
    length = len(body) + 4
    if draw(st.integers(0, 19)) == 0:  # a bad header, 1 in 20
        if limits is not None:
            mtype, length = draw(
                st.sampled_from([(ord("Z"), length), (0, length), (ord("S"), c.SMALL_MESSAGE_LIMIT + 5)])
                | st.tuples(st.sampled_from(_frontend_types), _bad_length)
            )
        else:
            length = draw(_bad_length)
    return struct.pack("!Bi", mtype, length) + body


@st.composite
def _case(draw: st.DrawFn) -> tuple[frozenset[int], Mapping[int, int] | None, list[bytes]]:
    limits = draw(st.sampled_from([None, c.FRONTEND_LIMITS]))
    watch_from = st.sampled_from(_frontend_types) if limits is not None else st.integers(0, 255)
    watch = frozenset(draw(st.sets(watch_from, max_size=5)))
    stream = b"".join(draw(st.lists(_frame(limits), max_size=12)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    return watch, limits, chunks


@settings(max_examples=400, deadline=None)
@given(_case())
def test_same_frames_state_and_errors_at_every_feed(
    case: tuple[frozenset[int], Mapping[int, int] | None, list[bytes]],
) -> None:
    watch, limits, chunks = case
    fast, reference = FrameScanner(watch, limits), ReferenceScanner(watch, limits)
    for i, chunk in enumerate(chunks):
        expected = _outcome(reference, chunk)
        assert _outcome(fast, chunk) == expected, f"chunk {i} of {len(chunks)}"
        if isinstance(expected, tuple) and expected[0] == "violation":
            break


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_byte_at_a_time_matches_reference(data: st.DataObject) -> None:
    """The slow paths (split headers, skipped and collected bodies) on every byte."""
    limits = data.draw(st.sampled_from([None, c.FRONTEND_LIMITS]))
    stream = b"".join(data.draw(st.lists(_frame(limits), max_size=4)))
    watch = frozenset(data.draw(st.sets(st.sampled_from(_frontend_types), max_size=4)))
    fast, reference = FrameScanner(watch, limits), ReferenceScanner(watch, limits)
    for i in range(len(stream)):
        expected = _outcome(reference, stream[i : i + 1])
        assert _outcome(fast, stream[i : i + 1]) == expected, f"byte {i}"
        if isinstance(expected, tuple) and expected[0] == "violation":
            break


# --- tally: the counting twin of feed ------------------------------------------------


def _tally_outcome(
    scanner: FrameScanner, reference: ReferenceScanner, weights: dict[int, int], chunk: bytes
) -> object:
    """What ``tally`` must give: the reference's frames weighed, and the same state or error."""
    try:
        frames = reference.feed(chunk)
    except ProtocolViolation as exc:
        expected: object = ("violation", exc.message)
    else:
        expected = (sum(weights.get(t, 0) for t, _ in frames), reference.last_type, reference.at_boundary)
    try:
        got: object = (scanner.tally(chunk), scanner.last_type, scanner.at_boundary)
    except ProtocolViolation as exc:
        got = ("violation", exc.message)
    return got, expected


@settings(max_examples=400, deadline=None)
@given(_case(), st.data())
def test_tally_counts_what_feed_finds(
    case: tuple[frozenset[int], Mapping[int, int] | None, list[bytes]], data: st.DataObject
) -> None:
    watch, limits, chunks = case
    types = sorted(c.FRONTEND_LIMITS) if limits is not None else list(range(256))
    weights = data.draw(st.dictionaries(st.sampled_from(types), st.sampled_from([1, 2, 1 << 32]), max_size=4))
    scanner = FrameScanner(watch, limits, weights=weights)
    reference = ReferenceScanner(frozenset(range(256)), limits)  # every frame, to weigh them
    for i, chunk in enumerate(chunks):
        got, expected = _tally_outcome(scanner, reference, weights, chunk)
        assert got == expected, f"chunk {i} of {len(chunks)}"
        if isinstance(expected, tuple) and expected[0] == "violation":
            break


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_tally_byte_at_a_time(data: st.DataObject) -> None:
    limits = data.draw(st.sampled_from([None, c.FRONTEND_LIMITS]))
    stream = b"".join(data.draw(st.lists(_frame(limits), max_size=4)))
    watch = frozenset(data.draw(st.sets(st.sampled_from(_frontend_types), max_size=4)))
    weights = dict.fromkeys(watch, 1)
    scanner, reference = FrameScanner(watch, limits), ReferenceScanner(frozenset(range(256)), limits)
    for i in range(len(stream)):
        got, expected = _tally_outcome(scanner, reference, weights, stream[i : i + 1])
        assert got == expected, f"byte {i}"
        if isinstance(expected, tuple) and expected[0] == "violation":
            break
