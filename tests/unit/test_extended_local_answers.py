"""Lazy BEGIN in the extended protocol: which units the proxy may answer, and what it answers (sans-IO).

The expected answers are the messages PostgreSQL sends for the same units
(checked against a real server in
``tests/integration/write_routing/test_extended_begin.py``).
"""

from __future__ import annotations

import struct

import pytest

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit
from pgtenantproxy.protocol.framing import Message, MessageReader
from pgtenantproxy.protocol.local_answers import ReplyFilter, answerable, extended_reply
from pgtenantproxy.protocol.messages import CloseOrDescribe, Parse, Query, ReadyForQuery, frame
from pgtenantproxy.protocol.records import ClientMessage
from pgtenantproxy.session.statements import PreparedStatements
from pgtenantproxy.session.unified_statements import UnifiedStatements


def parse(name: str, sql: str, *types: int) -> bytes:
    return Parse(name, sql, tuple(types)).build()


def bind(portal: str, statement: str, *params: bytes) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return frame(c.BIND, body + struct.pack("!h", 0))


def describe(kind: str, name: str) -> bytes:
    return frame(c.DESCRIBE, kind.encode() + name.encode() + b"\0")


def execute(portal: str = "") -> bytes:
    return frame(c.EXECUTE, portal.encode() + b"\0" + struct.pack("!i", 0))


SYNC = frame(c.SYNC, b"")
FLUSH = frame(c.FLUSH, b"")


def unit_of(*parts: bytes) -> Unit:
    reader = MessageReader()
    reader.feed(b"".join(parts))
    assembler = BatchAssembler()
    units: list[Unit] = []
    while (msg := reader.next_message()) is not None:
        units += assembler.feed(ClientMessage.of(msg))
    assert len(units) == 1
    return units[0]


def messages(data: bytes) -> list[tuple[str, bytes]]:
    reader = MessageReader()
    reader.feed(data)
    out = []
    while (msg := reader.next_message()) is not None:
        out.append((chr(msg.type), msg.body))
    return out


PARSE_COMPLETE, BIND_COMPLETE, NO_DATA = ("1", b""), ("2", b""), ("n", b"")


@pytest.mark.parametrize(("parts", "expected"), [
    # pgbench -M extended / libpq PQexecParams: unnamed statement, Describe of the portal
    ((parse("", "BEGIN"), bind("", ""), describe("P", ""), execute(), SYNC),
     [PARSE_COMPLETE, BIND_COMPLETE, NO_DATA]),
    # pgbench -M prepared after PQprepare: a named statement, bound only
    ((bind("", "P0_0"), describe("P", ""), execute(), SYNC), [BIND_COMPLETE, NO_DATA]),
    # a driver that parses a named statement, describes it, binds a named portal
    ((parse("s1", "BEGIN"), describe("S", "s1"), bind("p1", "s1"), execute("p1"), SYNC),
     [PARSE_COMPLETE, ("t", b"\0\0"), NO_DATA, BIND_COMPLETE]),
    ((bind("", "b"), execute(), SYNC), [BIND_COMPLETE]),
])
def test_answerable_units_get_the_servers_answer(parts: tuple[bytes, ...],
                                                 expected: list[tuple[str, bytes]]) -> None:
    unit = unit_of(*parts)
    assert answerable(unit)
    got = messages(extended_reply(unit, "BEGIN", c.TX_IN_BLOCK))
    assert got == [*expected, ("C", b"BEGIN\0"), ("Z", b"T")]
    assert messages(extended_reply(unit, "COMMIT", c.TX_IDLE))[-2:] == [("C", b"COMMIT\0"), ("Z", b"I")]


@pytest.mark.parametrize("parts", [
    (parse("", "BEGIN"), SYNC),  # nothing executed
    (parse("", "BEGIN"), bind("", ""), execute(), execute(), SYNC),  # twice
    (parse("", "BEGIN"), bind("", "other"), execute(), SYNC),  # binds another statement
    (bind("", "b", b"1"), execute(), SYNC),  # parameters: the server answers an error
    (parse("", "BEGIN", 23), bind("", ""), execute(), SYNC),  # declared parameter types
    (bind("p", "b"), execute("q"), SYNC),  # another portal
    (bind("", "b"), describe("S", "x"), execute(), SYNC),  # describes another statement
    (bind("", "b"), execute(), frame(c.CLOSE, b"Sb\0"), SYNC),  # more after the Execute
    (execute(), bind("", "b"), SYNC),
])
def test_other_shapes_are_not_answered(parts: tuple[bytes, ...]) -> None:
    assert not answerable(unit_of(*parts))


def test_a_simple_query_or_flush_split_unit_is_not_an_extended_shape() -> None:
    assert not answerable(unit_of(Query("BEGIN").build()))
    assert not answerable(Unit([_msg(bind("", "b")), _msg(FLUSH)], complete=False))
    with pytest.raises(ValueError):
        extended_reply(unit_of(parse("", "BEGIN"), SYNC), "BEGIN", c.TX_IN_BLOCK)


@pytest.mark.parametrize("cut", range(0, 40))
def test_quiet_filter_drops_a_whole_batch_but_notices(cut: int) -> None:
    notice = frame(ord("N"), b"SNOTICE\0Mhi\0\0")
    error = frame(ord("E"), b"SERROR\0C26000\0Mno\0\0")
    ready = ReadyForQuery(c.TX_IN_BLOCK).build()
    batch = frame(ord("3"), b"") + notice + frame(ord("1"), b"") + error + ready
    after = frame(ord("2"), b"")
    flt = ReplyFilter(quiet=True)
    stream = batch + after
    seen, client, rest = flt.feed(stream[:cut])
    if not flt.done:
        more = flt.feed(stream[cut:])
        seen, client, rest = seen + more[0], client + more[1], more[2]
    else:
        rest += stream[cut:]
    assert flt.done and flt.status == c.TX_IN_BLOCK
    assert seen == client == notice and rest == after


def _msg(raw: bytes) -> ClientMessage:
    return ClientMessage.of(Message(raw[0], raw[5:]))


def test_unified_statements_prepares_what_unified_has_not_seen() -> None:
    client = PreparedStatements()
    for name, sql in (("a", "SELECT 1"), ("b", "SELECT 2")):
        client.parsed(_msg(parse(name, sql)))
    unified = UnifiedStatements()
    unified.sent(unit_of(parse("a", "SELECT 1"), SYNC))
    uses = unit_of(bind("", "a"), execute(), bind("", "b"), execute(), describe("S", "b"), SYNC)
    plan = unified.preparation(uses, client)
    assert messages(plan) == [("C", b"Sb\0"), ("P", parse("b", "SELECT 2")[5:])]
    assert unified.preparation(uses, client) == b""  # recorded as sent
    # a statement re-parsed by the client with another text, a Close, a DEALLOCATE
    client.parsed(_msg(parse("a", "SELECT 3")))
    assert [m[0] for m in messages(unified.preparation(unit_of(bind("", "a"), execute(), SYNC), client))] == [
        "C", "P"]
    unified.sent(unit_of(frame(c.CLOSE, CloseOrDescribe("S", "a").build_close()[5:]), SYNC))
    unified.sent(unit_of(Query("DEALLOCATE b").build()))
    assert len(messages(unified.preparation(uses, client))) == 4
    # parsed in the same unit, or unknown to the client too: nothing to do (the server answers)
    assert unified.preparation(unit_of(parse("z", "SELECT 9"), bind("", "z"), execute(), SYNC), client) == b""
    assert unified.preparation(unit_of(bind("", "nope"), execute(), SYNC), client) == b""
