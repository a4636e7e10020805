"""protocol/copy_answers.py: the proxy's start of a COPY, and the edit of the server's answer to it."""

from __future__ import annotations

import struct

import pytest

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit
from pgtenantproxy.protocol.copy_answers import CopyInReply, copy_fail, copy_in_reply, copy_in_response
from pgtenantproxy.protocol.messages import frame
from pgtenantproxy.protocol.records import ClientReader
from tests.unit.session.wire import (
    BIND_COMPLETE,
    NO_DATA,
    PARSE_COMPLETE,
    SYNC,
    bind,
    cc,
    describe,
    error,
    execute,
    notice,
    parse,
    q,
    rfq,
)

G = copy_in_response(2, binary=False)


def unit_of(data: bytes) -> Unit:
    assembler = BatchAssembler()
    units = [u for rec in ClientReader().feed(data) for u in assembler.feed(rec)]
    assert len(units) == 1
    return units[0]


def test_copy_in_response_and_copy_fail_bytes() -> None:
    assert G == b"G" + struct.pack("!ibhhh", 4 + 1 + 2 + 4, 0, 2, 0, 0)
    assert copy_in_response(3, binary=True) == b"G" + struct.pack("!ibhhhh", 4 + 1 + 2 + 6, 1, 3, 1, 1, 1)
    assert copy_fail("no\x00pe") == frame(c.COPY_FAIL, b"nope\x00")


def test_the_proxys_answer_to_a_simple_or_extended_copy() -> None:
    assert copy_in_reply(unit_of(q("COPY t FROM STDIN")), G) == G
    unit = unit_of(parse("", "COPY t FROM STDIN") + bind() + describe("P") + execute() + SYNC)
    assert copy_in_reply(unit, G) == PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + G
    assert copy_in_reply(unit_of(bind("s") + execute() + SYNC), G) == BIND_COMPLETE + G
    assert copy_in_reply(unit_of(bind("s", params=(b"1",)) + execute() + SYNC), G) is None
    assert copy_in_reply(unit_of(bind("s") + execute() + execute() + SYNC), G) is None


def feed_all(edit: CopyInReply, data: bytes, cut: int) -> tuple[bytes, bytes]:
    seen, client, rest = edit.feed(data[:cut])
    more = edit.feed(data[cut:]) if cut < len(data) else (b"", b"", b"")
    return seen + more[0], client + more[1] + rest + more[2]


@pytest.mark.parametrize(
    ("extended", "answer", "expected"),
    [
        (False, G + notice() + cc("COPY 2") + rfq(), notice() + cc("COPY 2") + rfq()),
        (False, error("42P01") + rfq(), error("42P01") + rfq()),  # the statement failed: no CopyInResponse
        (True, PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + G + cc("COPY 1") + rfq(), cc("COPY 1") + rfq()),
        # failed before copy-in: the unit's own Sync's ReadyForQuery goes, the client's Sync's stays
        (True, PARSE_COMPLETE + error("42501") + rfq() + rfq(), error("42501") + rfq()),
        (True, G + error("22P02") + rfq(), error("22P02") + rfq()),
    ],
)
def test_the_servers_answer_is_edited_however_it_is_cut(
    extended: bool, answer: bytes, expected: bytes
) -> None:
    for cut in range(len(answer) + 1):
        edit = CopyInReply(extended=extended)
        seen, client = feed_all(edit, answer, cut)
        assert client == expected, cut
        assert seen == expected
        assert edit.done and edit.status == ord("I")


def test_the_error_answering_the_proxys_copy_fail_is_replaced() -> None:
    edit = CopyInReply(extended=False)
    edit.replace_error(error("0A000", "ours"))
    _, client, rest = edit.feed(G + error("57014", "COPY from stdin failed") + rfq("E") + b"Z")
    assert client == error("0A000", "ours") + rfq("E")
    assert rest == b"Z" and edit.done and edit.status == ord("E")


def test_an_error_before_copy_in_is_the_servers_own() -> None:
    edit = CopyInReply(extended=False)
    edit.replace_error(error("0A000", "ours"))
    assert edit.feed(error("42501", "denied") + rfq())[1] == error("42501", "denied") + rfq()
