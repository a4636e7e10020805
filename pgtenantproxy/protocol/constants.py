"""Protocol numbers and limits, as PostgreSQL defines them (src/include/libpq/pqcomm.h)."""

from typing import Final

PROTOCOL_3_0: Final = 3 << 16
PROTOCOL_3_2: Final = (3 << 16) | 2
SSL_REQUEST_CODE: Final = 80877103
GSSENC_REQUEST_CODE: Final = 80877104
CANCEL_REQUEST_CODE: Final = 80877102

#: PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
MAX_STARTUP_PACKET_LENGTH: Final = 10000
#: PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (MaxAllocSize - 1) for Query, Parse, Bind, CopyData...
LARGE_MESSAGE_LIMIT: Final = 0x3FFFFFFF - 1
#: PostgreSQL's PQ_SMALL_MESSAGE_LIMIT for every other frontend message.
SMALL_MESSAGE_LIMIT: Final = 10000
#: Longest cancel key protocol 3.2 allows.
MAX_CANCEL_KEY_LENGTH: Final = 256

# Frontend (client -> server) message types.
BIND: Final = ord("B")
CLOSE: Final = ord("C")
COPY_DATA: Final = ord("d")
COPY_DONE: Final = ord("c")
COPY_FAIL: Final = ord("f")
DESCRIBE: Final = ord("D")
EXECUTE: Final = ord("E")
FLUSH: Final = ord("H")
FUNCTION_CALL: Final = ord("F")
PARSE: Final = ord("P")
QUERY: Final = ord("Q")
SYNC: Final = ord("S")
TERMINATE: Final = ord("X")
PASSWORD: Final = ord("p")  # PasswordMessage, SASLInitialResponse, SASLResponse

# Backend (server -> client) message types.
AUTHENTICATION: Final = ord("R")
BACKEND_KEY_DATA: Final = ord("K")
ERROR_RESPONSE: Final = ord("E")
NOTICE_RESPONSE: Final = ord("N")
PARAMETER_STATUS: Final = ord("S")
READY_FOR_QUERY: Final = ord("Z")
NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")
COPY_IN_RESPONSE: Final = ord("G")
COPY_OUT_RESPONSE: Final = ord("H")
COPY_BOTH_RESPONSE: Final = ord("W")

#: Frontend types PostgreSQL accepts once a session is established, with the
#: longest body each may carry (PostgreSQL's SocketBackend()).
FRONTEND_LIMITS: Final[dict[int, int]] = {
    BIND: LARGE_MESSAGE_LIMIT,
    CLOSE: SMALL_MESSAGE_LIMIT,
    COPY_DATA: LARGE_MESSAGE_LIMIT,
    COPY_DONE: SMALL_MESSAGE_LIMIT,
    COPY_FAIL: SMALL_MESSAGE_LIMIT,
    DESCRIBE: SMALL_MESSAGE_LIMIT,
    EXECUTE: SMALL_MESSAGE_LIMIT,
    FLUSH: SMALL_MESSAGE_LIMIT,
    FUNCTION_CALL: LARGE_MESSAGE_LIMIT,
    PARSE: LARGE_MESSAGE_LIMIT,
    QUERY: LARGE_MESSAGE_LIMIT,
    SYNC: SMALL_MESSAGE_LIMIT,
    TERMINATE: SMALL_MESSAGE_LIMIT,
    PASSWORD: SMALL_MESSAGE_LIMIT,
}

# Authentication request codes (AuthenticationXXX messages).
AUTH_OK: Final = 0
AUTH_CLEARTEXT: Final = 3
AUTH_MD5: Final = 5
AUTH_GSS: Final = 7
AUTH_GSS_CONTINUE: Final = 8
AUTH_SSPI: Final = 9
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12

#: Authentication requests the client must answer with a 'p' message.
AUTH_NEEDS_RESPONSE: Final = frozenset(
    {AUTH_CLEARTEXT, AUTH_MD5, AUTH_GSS, AUTH_GSS_CONTINUE, AUTH_SSPI, AUTH_SASL, AUTH_SASL_CONTINUE}
)

# ReadyForQuery transaction status bytes.
TX_IDLE: Final = ord("I")
TX_IN_BLOCK: Final = ord("T")
TX_FAILED: Final = ord("E")
