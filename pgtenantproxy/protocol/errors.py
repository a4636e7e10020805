"""The proxy's own errors, each with a SQLSTATE and a severity.

One error tree, one function (:meth:`ProxyError.to_message`) that turns an error
into ErrorResponse bytes. SQLSTATEs are PostgreSQL's (errcodes.txt).
"""

from __future__ import annotations

import struct
from typing import Final

# SQLSTATEs the proxy itself emits.
PROTOCOL_VIOLATION: Final = "08P01"
CONNECTION_FAILURE: Final = "08006"
CONNECTION_EXCEPTION: Final = "08000"
TOO_MANY_CONNECTIONS: Final = "53300"
FEATURE_NOT_SUPPORTED: Final = "0A000"
ADMIN_SHUTDOWN: Final = "57P01"
CANNOT_CONNECT_NOW: Final = "57P03"
INVALID_AUTHORIZATION: Final = "28000"
QUERY_CANCELED: Final = "57014"
INVALID_PARAMETER_VALUE: Final = "22023"


class ProxyError(Exception):
    """An error the proxy reports to a client as an ErrorResponse."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        severity: str = "FATAL",
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint

    def to_message(self) -> bytes:
        """The ErrorResponse ('E') message carrying this error."""
        return error_response(
            self.sqlstate,
            self.message,
            severity=self.severity,
            detail=self.detail,
            hint=self.hint,
        )


class ProtocolViolation(ProxyError):
    """The peer broke the framing rules: FATAL 08P01."""

    def __init__(self, message: str) -> None:
        super().__init__(PROTOCOL_VIOLATION, message)


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """Build an ErrorResponse with the fields PostgreSQL always sends.

    Field values are NUL-terminated on the wire, so a NUL inside a text is
    dropped (it would end the field and start a forged one).
    """
    fields = [
        b"S" + _text(severity),
        b"V" + _text(severity),
        b"C" + _text(sqlstate),
        b"M" + _text(message),
    ]
    if detail:
        fields.append(b"D" + _text(detail))
    if hint:
        fields.append(b"H" + _text(hint))
    body = b"\x00".join(fields) + b"\x00\x00"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace").replace(b"\x00", b"")
