"""The proxy's own answers for moved transactions: local CommandComplete, refusals, skipped replies."""

from __future__ import annotations

import pytest

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.local_answers import ReplyFilter, command_complete, refusal_sql
from pgtenantproxy.protocol.messages import ReadyForQuery, frame

BEGIN_ANSWER = frame(ord("C"), b"BEGIN\x00") + ReadyForQuery(c.TX_IN_BLOCK).build()
NOTICE = frame(ord("N"), b"SNOTICE\x00Mhello\x00\x00")
NEXT = frame(ord("C"), b"INSERT 0 1\x00") + ReadyForQuery(c.TX_IN_BLOCK).build()


def test_command_complete_then_ready() -> None:
    assert command_complete("BEGIN", c.TX_IN_BLOCK) == BEGIN_ANSWER


def _through(flt: ReplyFilter, stream: bytes, cut: int) -> tuple[bytes, bytes, bytes]:
    seen, client, rest = flt.feed(stream[:cut])
    if flt.done:
        return seen, client, rest + stream[cut:]
    more = flt.feed(stream[cut:])
    return seen + more[0], client + more[1], more[2]


@pytest.mark.parametrize("cut", range(0, len(BEGIN_ANSWER + NOTICE + NEXT) + 1))
def test_filter_skips_only_the_first_answer_at_any_split(cut: int) -> None:
    done_at = len(frame(ord("C"), b"BEGIN\x00"))
    stream = BEGIN_ANSWER[:done_at] + NOTICE + BEGIN_ANSWER[done_at:] + NEXT
    flt = ReplyFilter()
    seen, client, rest = _through(flt, stream, cut)
    assert flt.done and flt.status == c.TX_IN_BLOCK
    assert seen == client == NOTICE and rest == NEXT


@pytest.mark.parametrize("cut", [0, 3, 9, 12, 20])
def test_filter_rewrites_the_status_for_the_client_only(cut: int) -> None:
    parse_answer = frame(ord("1"), b"") + ReadyForQuery(c.TX_IDLE).build()
    flt = ReplyFilter(rewrite_to=c.TX_IN_BLOCK)
    seen, client, rest = _through(flt, parse_answer + NEXT, cut)
    assert seen == parse_answer and rest == NEXT and flt.status == c.TX_IDLE
    assert client == frame(ord("1"), b"") + ReadyForQuery(c.TX_IN_BLOCK).build()


def test_refusal_sql_quotes_its_texts() -> None:
    sql = refusal_sql("0A000", "it's $pgtenantproxy$ here", "h")
    assert "'it''s  here'" in sql
    with pytest.raises(ValueError):
        refusal_sql("0A00'", "m", "h")
