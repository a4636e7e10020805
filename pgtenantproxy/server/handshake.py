"""Session start: TLS negotiation with the client, then authentication relayed.

The client authenticates against the unified server through the proxy
(trust, password, md5, SCRAM), so applications keep their users and passwords
and a wrong password gets exactly PostgreSQL's error. The proxy looks at
three things on the way:

* ``AuthenticationSASL``: SCRAM-SHA-256-PLUS is removed from the offered
  mechanisms, because channel binding ties the exchange to one TLS session and
  the client's TLS session ends at the proxy.
* ``BackendKeyData``: the real process id goes to the client with a secret
  key of the proxy's own, so cancel requests come to the proxy.
* ``ReadyForQuery``: the end of the startup phase.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass, field

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.framing import Message, MessageReader, StartupReader
from pgtenantproxy.protocol.messages import (
    SSL_ACCEPT,
    SSL_REFUSE,
    Authentication,
    BackendKeyData,
    CancelRequest,
    GSSENCRequest,
    ParameterStatus,
    SSLRequest,
    StartupMessage,
)
from pgtenantproxy.server.endpoint import ConnectionClosed, Endpoint

#: What the client may send while authenticating: password/SASL answers, or quit.
_AUTH_LIMITS = {c.PASSWORD: c.SMALL_MESSAGE_LIMIT, c.TERMINATE: c.SMALL_MESSAGE_LIMIT}


class ServerRefused(Exception):
    """The server ended the startup with an ErrorResponse (already relayed)."""


@dataclass
class Established:
    """What the startup phase leaves for the relay."""

    real_key: BackendKeyData | None
    proxy_key: bytes = field(repr=False)
    server_leftover: bytes
    client_leftover: bytes
    #: ParameterStatus values the server reported during startup.
    parameters: dict[str, str] = field(default_factory=dict)


async def read_startup(
    client: Endpoint, tls: ssl.SSLContext | None
) -> tuple[StartupMessage | CancelRequest, bytes]:
    """Negotiate encryption and read the StartupMessage (or a CancelRequest)."""
    reader = StartupReader()
    while True:
        packet = reader.next_packet()
        if packet is None:
            reader.feed(await client.receive())
            continue
        if isinstance(packet, SSLRequest):
            if reader.leftover():
                raise ProtocolViolation("received unencrypted data after SSL request")
            if tls is not None and not client.is_tls:
                client.write(SSL_ACCEPT)
                await client.start_tls(tls, server_side=True)
            else:
                client.write(SSL_REFUSE)
            continue
        if isinstance(packet, GSSENCRequest):
            client.write(SSL_REFUSE)
            continue
        return packet, reader.leftover()


async def _next(endpoint: Endpoint, reader: MessageReader) -> Message:
    while True:
        msg = reader.next_message()
        if msg is not None:
            return msg
        reader.feed(await endpoint.receive())


async def relay_authentication(
    client: Endpoint, server: Endpoint, startup: StartupMessage, client_leftover: bytes
) -> Established:
    """Relay the startup exchange until the server's first ReadyForQuery."""
    server.write(startup.raw)
    sreader = MessageReader()
    creader = MessageReader(_AUTH_LIMITS)
    creader.feed(client_leftover)
    while True:
        msg = await _next(server, sreader)
        if msg.type != c.AUTHENTICATION:
            _relay_other(client, msg)
            continue
        auth = Authentication.parse(msg.body)
        client.write(_filter_auth(auth, msg))
        if auth.code == c.AUTH_OK:
            break
        if auth.needs_response:
            answer = await _next(client, creader)
            if answer.type == c.TERMINATE:
                raise ConnectionClosed("client")
            server.write(answer.raw())
    return await _relay_until_ready(client, server, sreader, creader)


async def _relay_until_ready(
    client: Endpoint, server: Endpoint, sreader: MessageReader, creader: MessageReader
) -> Established:
    real_key: BackendKeyData | None = None
    proxy_key = b""
    parameters: dict[str, str] = {}
    while True:
        msg = await _next(server, sreader)
        if msg.type == c.PARAMETER_STATUS:
            status = ParameterStatus.parse(msg.body)
            parameters[status.name] = status.value
            client.write(msg.raw())
        elif msg.type == c.BACKEND_KEY_DATA:
            real_key = BackendKeyData.parse(msg.body)
            proxy_key = secrets.token_bytes(len(real_key.key))
            client.write(BackendKeyData(real_key.pid, proxy_key).build())
        elif msg.type == c.READY_FOR_QUERY:
            client.write(msg.raw())
            return Established(real_key, proxy_key, sreader.leftover(), creader.leftover(), parameters)
        else:
            _relay_other(client, msg)


def _relay_other(client: Endpoint, msg: Message) -> None:
    client.write(msg.raw())
    if msg.type == c.ERROR_RESPONSE:
        raise ServerRefused()


def _filter_auth(auth: Authentication, msg: Message) -> bytes:
    if auth.code != c.AUTH_SASL:
        return msg.raw()
    mechanisms = [m for m in auth.sasl_mechanisms() if not m.endswith("-PLUS")]
    if not mechanisms:
        raise ProxyError(
            errors.FEATURE_NOT_SUPPORTED,
            "pgtenantproxy: the server offers only channel-bound SASL mechanisms, "
            "which cannot pass through a proxy",
        )
    return Authentication.build_sasl(mechanisms)
