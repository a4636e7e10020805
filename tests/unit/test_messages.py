"""Every message class: literal wire bytes, parse/build round trips, bad bodies.

The byte vectors are written out by hand from the protocol documentation, so
a builder and a parser that agree with each other but not with PostgreSQL
still fail here. The fuzz tests at the end feed every ``parse`` random bytes:
only ProtocolViolation / ProxyError may come out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol import messages
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.messages import (
    SSL_ACCEPT,
    SSL_REFUSE,
    TERMINATE,
    Authentication,
    BackendKeyData,
    CancelRequest,
    ErrorFields,
    GSSENCRequest,
    ParameterStatus,
    Query,
    ReadyForQuery,
    SSLRequest,
    StartupMessage,
    frame,
)

# --- untyped startup packets ---------------------------------------------------


def test_ssl_request_bytes() -> None:
    assert SSLRequest.build() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_gssenc_request_bytes() -> None:
    assert GSSENCRequest.build() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"


def test_ssl_answers() -> None:
    assert (SSL_ACCEPT, SSL_REFUSE) == (b"S", b"N")


CANCEL_30 = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\x01\x02\x03\x04"


def test_cancel_request_30_bytes() -> None:
    assert CancelRequest(1234, b"\x01\x02\x03\x04").build() == CANCEL_30
    parsed = CancelRequest.parse(CANCEL_30)
    assert parsed == CancelRequest(1234, b"\x01\x02\x03\x04")


@pytest.mark.parametrize("key_len", [4, 5, 32, 255, 256])
def test_cancel_request_32_long_keys(key_len: int) -> None:
    key = bytes(range(256))[:key_len]
    raw = CancelRequest(77, key).build()
    assert raw[:4] == (12 + key_len).to_bytes(4, "big")
    assert raw[4:12] == b"\x04\xd2\x16\x2e\x00\x00\x00\x4d"
    assert raw[12:] == key
    assert CancelRequest.parse(raw) == CancelRequest(77, key)


@pytest.mark.parametrize("key_len", [0, 3, 257, 1000])
def test_cancel_request_bad_key_length(key_len: int) -> None:
    body = b"\x04\xd2\x16\x2e\x00\x00\x00\x4d" + b"k" * key_len
    raw = (len(body) + 4).to_bytes(4, "big") + body
    with pytest.raises(ProtocolViolation, match="cancel request"):
        CancelRequest.parse(raw)


def test_cancel_request_repr_hides_key() -> None:
    assert "secret" not in repr(CancelRequest(1, b"secret"))


STARTUP_BOB = (
    b"\x00\x00\x00\x20"  # 32 bytes
    b"\x00\x03\x00\x00"
    b"user\x00bob\x00database\x00shop\x00\x00"
)


def test_startup_message_bytes() -> None:
    assert StartupMessage.build({"user": "bob", "database": "shop"}) == STARTUP_BOB
    msg = StartupMessage.parse(STARTUP_BOB)
    assert msg.protocol == c.PROTOCOL_3_0
    assert msg.params == {"user": "bob", "database": "shop"}
    assert (msg.user, msg.database) == ("bob", "shop")
    assert msg.raw == STARTUP_BOB


def test_startup_message_keeps_every_param_and_raw() -> None:
    params = {
        "user": "app",
        "database": "app",
        "application_name": "héllo",
        "options": "-c pgtenantproxy.shop_id=7",
        "client_min_messages": "warning",
    }
    raw = StartupMessage.build(params, c.PROTOCOL_3_2)
    assert raw[4:8] == b"\x00\x03\x00\x02"
    msg = StartupMessage.parse(raw)
    assert msg.params == params
    assert msg.protocol == c.PROTOCOL_3_2
    assert msg.raw == raw


def test_startup_message_database_defaults_to_user() -> None:
    assert StartupMessage.parse(StartupMessage.build({"user": "bob"})).database == "bob"
    assert StartupMessage.parse(StartupMessage.build({"user": "bob", "database": ""})).database == "bob"


def test_startup_message_latin1_param_does_not_raise() -> None:
    raw = b"\x00\x00\x00\x17\x00\x03\x00\x00user\x00b\xe9b\x00\x00"
    raw = len(raw).to_bytes(4, "big") + raw[4:]
    assert StartupMessage.parse(raw).user == "béb"


@pytest.mark.parametrize(
    ("version", "shown"), [((2 << 16), "2.0"), ((1 << 16) | 5, "1.5"), ((4 << 16), "4.0")]
)
def test_startup_message_other_protocols_are_0a000(version: int, shown: str) -> None:
    raw = StartupMessage.build({"user": "bob"}, version)
    with pytest.raises(ProxyError) as info:
        StartupMessage.parse(raw)
    assert info.value.sqlstate == "0A000"
    assert f"unsupported frontend protocol {shown}" in info.value.message
    assert not isinstance(info.value, ProtocolViolation)


def test_startup_message_without_user_is_28000() -> None:
    with pytest.raises(ProxyError) as info:
        StartupMessage.parse(StartupMessage.build({"database": "x"}))
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no parameters, no terminator
        b"user\x00bob\x00",  # no final terminator
        b"user\x00bob",  # not NUL-terminated at all
        b"user\x00\x00",  # a name without a value
        b"user\x00bob\x00x\x00",  # a last name without a value, no terminator
        b"user\x00bob\x00\x00x\x00y\x00\x00",  # data after the terminator
        b"\x00\x00",  # an empty name
        b"a\x00\x00\x00b\x00\x00",  # an empty name after a pair
    ],
)
def test_startup_message_bad_layout(body: bytes) -> None:
    raw = (len(body) + 8).to_bytes(4, "big") + b"\x00\x03\x00\x00" + body
    with pytest.raises(ProtocolViolation) as info:
        StartupMessage.parse(raw)
    assert info.value.message == "invalid startup packet layout: expected terminator as last byte"


def test_startup_message_empty_values_are_kept() -> None:
    raw = b"\x00\x00\x00\x19\x00\x03\x00\x00user\x00u\x00options\x00\x00\x00"
    assert len(raw) == 0x19
    assert StartupMessage.parse(raw).params == {"user": "u", "options": ""}


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x08\x00\x03"])
def test_startup_message_truncated(raw: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        StartupMessage.parse(raw)


# --- typed messages --------------------------------------------------------------


def test_frame_and_terminate() -> None:
    assert frame(ord("X"), b"") == b"X\x00\x00\x00\x04"
    assert TERMINATE == b"X\x00\x00\x00\x04"
    assert frame(ord("d"), b"abc") == b"d\x00\x00\x00\x07abc"


@pytest.mark.parametrize(
    ("status", "wire"),
    [
        (c.TX_IDLE, b"Z\x00\x00\x00\x05I"),
        (c.TX_IN_BLOCK, b"Z\x00\x00\x00\x05T"),
        (c.TX_FAILED, b"Z\x00\x00\x00\x05E"),
    ],
)
def test_ready_for_query(status: int, wire: bytes) -> None:
    assert ReadyForQuery(status).build() == wire
    assert ReadyForQuery.parse(wire[5:]) == ReadyForQuery(status)


def test_ready_for_query_idle() -> None:
    assert ReadyForQuery.idle().build() == b"Z\x00\x00\x00\x05I"


@pytest.mark.parametrize("body", [b"", b"X", b"II", b"\x00"])
def test_ready_for_query_invalid(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ReadyForQuery.parse(body)


def test_authentication_ok_and_cleartext() -> None:
    assert Authentication.build(c.AUTH_OK) == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert Authentication.build(c.AUTH_CLEARTEXT) == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    ok = Authentication.parse(b"\x00\x00\x00\x00")
    assert (ok.code, ok.payload, ok.needs_response) == (0, b"", False)
    assert Authentication.parse(b"\x00\x00\x00\x03").needs_response


def test_authentication_md5_salt() -> None:
    wire = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\xaa\xbb\xcc\xdd"
    assert Authentication.build(c.AUTH_MD5, b"\xaa\xbb\xcc\xdd") == wire
    msg = Authentication.parse(wire[5:])
    assert (msg.code, msg.payload, msg.needs_response) == (5, b"\xaa\xbb\xcc\xdd", True)


def test_authentication_sasl() -> None:
    wire = b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    assert Authentication.build_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]) == wire
    msg = Authentication.parse(wire[5:])
    assert msg.code == c.AUTH_SASL
    assert msg.needs_response
    assert msg.sasl_mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


@pytest.mark.parametrize("code", [c.AUTH_SASL_CONTINUE, c.AUTH_SASL_FINAL])
def test_authentication_sasl_steps(code: int) -> None:
    wire = Authentication.build(code, b"r=abc,s=xyz,i=4096")
    assert wire[:9] == b"R\x00\x00\x00\x1a\x00\x00\x00" + bytes((code,))
    msg = Authentication.parse(wire[5:])
    assert msg.payload == b"r=abc,s=xyz,i=4096"
    assert msg.needs_response == (code == c.AUTH_SASL_CONTINUE)


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x00"])
def test_authentication_too_short(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        Authentication.parse(body)


def test_authentication_sasl_mechanisms_unterminated() -> None:
    with pytest.raises(ProtocolViolation):
        Authentication.parse(b"\x00\x00\x00\x0aSCRAM").sasl_mechanisms()


def test_backend_key_data_30() -> None:
    wire = b"K\x00\x00\x00\x0c\x00\x00\x10\x92\xde\xad\xbe\xef"
    assert BackendKeyData(4242, b"\xde\xad\xbe\xef").build() == wire
    assert BackendKeyData.parse(wire[5:]) == BackendKeyData(4242, b"\xde\xad\xbe\xef")
    assert "deadbeef" not in repr(BackendKeyData(4242, b"\xde\xad\xbe\xef"))


@pytest.mark.parametrize("key_len", [4, 32, 256])
def test_backend_key_data_32(key_len: int) -> None:
    key = bytes(range(256))[:key_len]
    wire = BackendKeyData(-5, key).build()
    assert wire[:9] == b"K" + (8 + key_len).to_bytes(4, "big") + b"\xff\xff\xff\xfb"
    assert BackendKeyData.parse(wire[5:]) == BackendKeyData(-5, key)


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01abc", b"\x00\x00\x00\x01" + b"k" * 257]
)
def test_backend_key_data_invalid(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        BackendKeyData.parse(body)


def test_parameter_status() -> None:
    wire = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"
    assert ParameterStatus("client_encoding", "UTF8").build() == wire
    assert ParameterStatus.parse(wire[5:]) == ParameterStatus("client_encoding", "UTF8")
    assert ParameterStatus.parse(b"application_name\x00\x00") == ParameterStatus("application_name", "")


@pytest.mark.parametrize("body", [b"", b"name", b"name\x00value", b"a\x00b\x00c\x00", b"\x00"])
def test_parameter_status_invalid(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ParameterStatus.parse(body)


def test_query() -> None:
    wire = b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert Query("SELECT 1").build() == wire
    assert Query.parse(wire[5:]) == Query("SELECT 1")
    assert Query("SELECT 'é'").build() == b"Q\x00\x00\x00\x10SELECT '\xc3\xa9'\x00"


@pytest.mark.parametrize("body", [b"", b"SELECT 1"])
def test_query_invalid(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        Query.parse(body)


ERROR_BODY = b"SERROR\x00VERROR\x00C42P01\x00Mrelation \"nope\" does not exist\x00P15\x00\x00"


def test_error_fields() -> None:
    fields = ErrorFields.parse(ERROR_BODY)
    assert fields.sqlstate == "42P01"
    assert fields.severity == "ERROR"
    assert fields.message == 'relation "nope" does not exist'
    assert fields.fields["P"] == "15"


def test_error_fields_localized_severity_prefers_v() -> None:
    fields = ErrorFields.parse(b"SFEHLER\x00VERROR\x00C57014\x00Mabgebrochen\x00\x00")
    assert fields.severity == "ERROR"
    assert ErrorFields.parse(b"SFATAL\x00\x00").severity == "FATAL"


def test_error_fields_non_utf8_message() -> None:
    assert ErrorFields.parse(b"Mcaf\xe9\x00\x00").message == "café"


def test_error_fields_empty() -> None:
    fields = ErrorFields.parse(b"\x00")
    assert (fields.sqlstate, fields.severity, fields.message) == ("", "", "")


@pytest.mark.parametrize("body", [b"", b"SERROR", b"SERROR\x00Mx"])
def test_error_fields_unterminated(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ErrorFields.parse(body)


# --- fuzzing: nothing but ProtocolViolation / ProxyError out of any parse --------

#: Every class of the module with a ``parse`` (new message classes are fuzzed too).
PARSE_CLASSES: list[Any] = sorted(
    (o for o in vars(messages).values() if isinstance(o, type) and callable(getattr(o, "parse", None))),
    key=lambda cls: cls.__name__,
)
PARSERS: list[Callable[[bytes], Any]] = [
    *(cls.parse for cls in PARSE_CLASSES),
    lambda b: Authentication.parse(b).sasl_mechanisms(),
]


def test_fuzz_covers_the_known_parsers() -> None:
    names = {cls.__name__ for cls in PARSE_CLASSES}
    assert names >= {
        "CancelRequest", "StartupMessage", "Authentication", "BackendKeyData",
        "ParameterStatus", "ReadyForQuery", "ErrorFields", "Query",
    }


def _only_proxy_errors(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        parse(data)
    except ProxyError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.binary(max_size=300))
def test_fuzz_parsers_random_bytes(parse: Callable[[bytes], Any], data: bytes) -> None:
    _only_proxy_errors(parse, data)


_startup_like = st.builds(
    lambda version, body: (len(body) + 8).to_bytes(4, "big") + version.to_bytes(4, "big") + body,
    st.sampled_from([c.PROTOCOL_3_0, c.PROTOCOL_3_2, 2 << 16, c.CANCEL_REQUEST_CODE, c.SSL_REQUEST_CODE]),
    st.binary(max_size=300) | st.lists(st.binary(max_size=12), max_size=8).map(lambda p: b"\x00".join(p)),
)


@settings(max_examples=300, deadline=None)
@given(_startup_like, st.integers(min_value=0, max_value=320))
def test_fuzz_startup_packets_truncated(packet: bytes, cut: int) -> None:
    for parse in (StartupMessage.parse, CancelRequest.parse):
        _only_proxy_errors(parse, packet)
        _only_proxy_errors(parse, packet[:cut])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda s: "\x00" not in s),
                       st.text(max_size=20).filter(lambda s: "\x00" not in s), max_size=6),
       st.text(min_size=1, max_size=10).filter(lambda s: "\x00" not in s))
def test_fuzz_startup_round_trip(params: dict[str, str], user: str) -> None:
    params = {**params, "user": user}
    msg = StartupMessage.parse(StartupMessage.build(params))
    assert msg.params == params
