"""Opening server connections: TCP, then TLS as ``sslmode`` asks, then nothing more.

The startup packet and authentication belong to the caller (relayed for the
unified server), so this module only produces a connected, possibly encrypted,
:class:`Endpoint`. Cancel requests also go out from here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol

from pgtenantproxy.net.endpoint import ConnectionClosed, Endpoint
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.messages import CancelRequest, SSLRequest

logger = logging.getLogger(__name__)


class ServerAddress(Protocol):
    """Where a server is and how to reach it (``[unified]``, a ``[[tenant_servers]]`` entry...)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def sslmode(self) -> str: ...
    @property
    def sslrootcert(self) -> str | None: ...
    @property
    def connect_timeout_ms(self) -> int: ...


def upstream_tls_context(cfg: ServerAddress) -> ssl.SSLContext | None:
    """The client-side TLS context for ``[unified] sslmode`` (None for disable)."""
    if cfg.sslmode == "disable":
        return None
    ctx = ssl.create_default_context(cafile=cfg.sslrootcert)
    if cfg.sslmode in ("prefer", "require"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.sslmode == "verify-ca":
        ctx.check_hostname = False
    return ctx


async def open_server(
    cfg: ServerAddress, tls: ssl.SSLContext | None, *, name: str = "unified"
) -> Endpoint:
    """Connect to the server; raise ProxyError (08006) with a clear reason if we cannot."""
    loop = asyncio.get_running_loop()
    where = f"{name} server {cfg.host}:{cfg.port}"
    try:
        async with asyncio.timeout(cfg.connect_timeout_ms / 1000):
            _, endpoint = await loop.create_connection(lambda: Endpoint(name), cfg.host, cfg.port)
            if tls is not None:
                await _negotiate_tls(endpoint, tls, cfg)
    except TimeoutError:
        raise _unreachable(where, "timeout expired") from None
    except (OSError, ConnectionClosed) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "connection closed"
        raise _unreachable(where, reason) from None
    return endpoint


def _unreachable(where: str, reason: str) -> ProxyError:
    return ProxyError(
        errors.CONNECTION_FAILURE,
        f"pgtenantproxy: could not connect to the {where}: {reason}",
    )


async def _negotiate_tls(endpoint: Endpoint, tls: ssl.SSLContext, cfg: ServerAddress) -> None:
    endpoint.write(SSLRequest.build())
    answer = await endpoint.receive()
    if answer[:1] == b"S" and len(answer) == 1:
        hostname = cfg.host if cfg.sslmode == "verify-full" else None
        await endpoint.start_tls(tls, server_side=False, server_hostname=hostname)
        return
    if answer[:1] == b"N" and len(answer) == 1:
        if cfg.sslmode == "prefer":
            return
        raise ProxyError(
            errors.CONNECTION_FAILURE,
            f"pgtenantproxy: the server {cfg.host}:{cfg.port} refused TLS "
            f"and its sslmode is {cfg.sslmode}",
        )
    raise ProxyError(
        errors.PROTOCOL_VIOLATION, f"pgtenantproxy: invalid answer to SSLRequest from {cfg.host}:{cfg.port}"
    )


#: How long a forwarded CancelRequest may take (connect, send, the server's close).
CANCEL_TIMEOUT = 5.0


async def send_cancel(host: str, port: int, pid: int, key: bytes, *, timeout: float = CANCEL_TIMEOUT) -> None:
    """Send a CancelRequest on a fresh connection and wait until the server closes it.

    PostgreSQL signals the backend before it closes, so on return the cancel has
    landed. Failures (and the timeout) are logged, not raised.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(CancelRequest(pid, key).build())
            await writer.drain()
            await reader.read()  # the server closes when done
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or "timed out"
        logger.warning("cancel request to %s:%s for pid %s failed: %s", host, port, pid, reason)
    finally:
        if writer is not None:
            writer.close()
