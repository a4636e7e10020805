"""The proxy's own errors: SQLSTATE, severity, and the ErrorResponse bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError, error_response
from pgtenantproxy.protocol.framing import MessageReader
from pgtenantproxy.protocol.messages import ErrorFields


def test_error_response_bytes() -> None:
    body = b"SFATAL\x00VFATAL\x00C08P01\x00Mbad\x00\x00"
    wire = error_response("08P01", "bad", severity="FATAL")
    assert wire == b"E" + (len(body) + 4).to_bytes(4, "big") + body


def test_error_response_default_severity_is_error() -> None:
    assert error_response("57014", "x")[5:] == b"SERROR\x00VERROR\x00C57014\x00Mx\x00\x00"


def test_error_response_detail_and_hint() -> None:
    wire = error_response("53300", "sorry", detail="d1", hint="h1")
    assert wire[5:] == b"SERROR\x00VERROR\x00C53300\x00Msorry\x00Dd1\x00Hh1\x00\x00"


def test_error_response_utf8_message() -> None:
    wire = error_response("22023", "café \ud800")
    fields = ErrorFields.parse(wire[5:])
    assert fields.message.startswith("café ")


def test_protocol_violation_is_fatal_08p01() -> None:
    exc = ProtocolViolation("invalid message length")
    assert isinstance(exc, ProxyError)
    assert (exc.sqlstate, exc.severity, exc.message) == ("08P01", "FATAL", "invalid message length")
    assert str(exc) == "invalid message length"


def test_proxy_error_to_message_round_trip() -> None:
    exc = ProxyError(errors.ADMIN_SHUTDOWN, "terminating connection due to administrator command",
                     detail="why", hint="wait")
    reader = MessageReader()
    reader.feed(exc.to_message())
    msg = reader.next_message()
    assert msg is not None and msg.type == ord("E")
    fields = ErrorFields.parse(msg.body)
    assert fields.fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "57P01",
        "M": "terminating connection due to administrator command",
        "D": "why",
        "H": "wait",
    }
    assert reader.next_message() is None


@pytest.mark.parametrize(
    "code",
    [
        errors.PROTOCOL_VIOLATION,
        errors.CONNECTION_FAILURE,
        errors.CONNECTION_EXCEPTION,
        errors.TOO_MANY_CONNECTIONS,
        errors.FEATURE_NOT_SUPPORTED,
        errors.ADMIN_SHUTDOWN,
        errors.CANNOT_CONNECT_NOW,
        errors.INVALID_AUTHORIZATION,
        errors.QUERY_CANCELED,
        errors.INVALID_PARAMETER_VALUE,
    ],
)
def test_sqlstates_are_five_characters(code: str) -> None:
    assert re.fullmatch("[0-9A-Z]{5}", code)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["ERROR", "FATAL", "PANIC", "WARNING"]),
       st.none() | st.text(max_size=50), st.none() | st.text(max_size=50))
def test_fuzz_error_response_always_parses(message: str, severity: str, detail: str | None,
                                           hint: str | None) -> None:
    wire = ProxyError("XX000", message, severity=severity, detail=detail, hint=hint).to_message()
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    fields = ErrorFields.parse(wire[5:])
    assert fields.sqlstate == "XX000"
    assert fields.severity == severity
    expected = message.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    assert fields.message == expected
    assert set(fields.fields) <= {"S", "V", "C", "M", "D", "H"}


def test_nul_in_message_does_not_break_the_fields() -> None:
    fields = ErrorFields.parse(error_response("XX000", "a\x00Cfake", detail="d\x00x")[5:])
    assert fields.sqlstate == "XX000"
    assert fields.message == "aCfake"
    assert fields.fields["D"] == "dx"
