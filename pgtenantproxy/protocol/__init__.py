"""Sans-IO PostgreSQL v3 wire protocol.

Bytes go in, messages come out; nothing here touches a socket or an event loop.
``framing`` finds message boundaries (startup packets and typed messages),
``messages`` parses and builds the few messages the proxy looks inside, and
``errors`` turns the proxy's own failures into ErrorResponse bytes.
Every other message is relayed as an opaque byte slice.
"""

from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.framing import (
    FrameScanner,
    MessageReader,
    StartupReader,
)

__all__ = [
    "FrameScanner",
    "MessageReader",
    "ProtocolViolation",
    "ProxyError",
    "StartupReader",
]
