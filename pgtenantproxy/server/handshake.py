"""Session start: TLS negotiation with the client, then authentication relayed.

The client authenticates against the unified server through the proxy
(trust, password, md5, SCRAM), so applications keep their users and passwords
and a wrong password gets exactly PostgreSQL's error. The proxy looks at
three things on the way:

* ``AuthenticationSASL``: SCRAM-SHA-256-PLUS is removed from the offered
  mechanisms, because channel binding (``tls-server-end-point``) ties the
  exchange to the certificate the client sees, and the client's TLS ends at
  the proxy. The exception: when both legs use TLS and the proxy presents the
  unified server's own certificate, the binding holds and -PLUS passes through.
  With both legs on TLS but different certificates, a client that would bind
  (gs2 flag 'y') is refused with a clear reason: the TLS server would call it
  a downgrade attack, and the flag is covered by the proof so cannot be edited.
* ``BackendKeyData``: the real process id goes to the client with a secret
  key of the proxy's own, so cancel requests come to the proxy.
* ``ReadyForQuery``: the end of the startup phase.
"""

from __future__ import annotations

import functools
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pgtenantproxy.net.endpoint import ConnectionClosed, Endpoint
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
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
)

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
    client: Endpoint,
    server: Endpoint,
    startup: StartupMessage,
    client_leftover: bytes,
    *,
    own_cert: str | None = None,
) -> Established:
    """Relay the startup exchange until the server's first ReadyForQuery.

    ``own_cert`` is the proxy's certificate file (``[proxy] tls_cert``), used to
    decide whether SCRAM channel binding can pass through (see :func:`_same_certificate`).
    """
    server.write(startup.raw)
    sreader = MessageReader()
    creader = MessageReader(_AUTH_LIMITS)
    creader.feed(client_leftover)
    plus_withdrawn = False
    while True:
        msg = await _next(server, sreader)
        if msg.type != c.AUTHENTICATION:
            _relay_other(client, msg)
            continue
        auth = Authentication.parse(msg.body)
        if auth.code == c.AUTH_SASL:
            keep_plus = _same_certificate(client, server, own_cert)
            plus_withdrawn = not keep_plus
            client.write(msg.raw() if keep_plus else _without_plus(auth))
        else:
            client.write(msg.raw())
        if auth.code == c.AUTH_OK:
            break
        if auth.needs_response:
            answer = await _next(client, creader)
            if answer.type == c.TERMINATE:
                raise ConnectionClosed("client")
            if auth.code == c.AUTH_SASL and plus_withdrawn and server.is_tls:
                _check_binding_flag(answer)
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


def _without_plus(auth: Authentication) -> bytes:
    mechanisms = [m for m in auth.sasl_mechanisms() if not m.endswith("-PLUS")]
    if not mechanisms:
        raise ProxyError(
            errors.FEATURE_NOT_SUPPORTED,
            "pgtenantproxy: the server offers only channel-bound SASL mechanisms, "
            "which cannot pass through a proxy",
        )
    return Authentication.build_sasl(mechanisms)


def _same_certificate(client: Endpoint, server: Endpoint, own_cert: str | None) -> bool:
    """True when both legs use TLS and the proxy presents the server's own certificate.

    SCRAM-SHA-256-PLUS binds to ``tls-server-end-point``, a hash of the
    certificate the client sees. Only when that is the unified server's
    certificate too can the binding (and the offer of -PLUS) pass through.
    """
    if own_cert is None or not client.is_tls or not server.is_tls or server.transport is None:
        return False
    ssl_object = server.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return False
    peer = ssl_object.getpeercert(binary_form=True)
    return peer is not None and peer == _certificate_der(own_cert)


@functools.lru_cache(maxsize=4)
def _certificate_der(path: str) -> bytes:
    """The first (leaf) certificate of a PEM file, DER-encoded."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        return b""
    return ssl.PEM_cert_to_DER_cert(text[start : stop + len(end)])


def _check_binding_flag(answer: Message) -> None:
    """Refuse, with a clear reason, a SCRAM start the TLS server would reject.

    With -PLUS withdrawn, a TLS client that supports channel binding says so
    (gs2 flag 'y'); a TLS server that does support it treats that as a
    downgrade attack. Rewriting the flag is impossible: it is covered by the
    client's proof.
    """
    if answer.type != c.PASSWORD:
        return
    if SASLInitialResponse.parse(answer.body).gs2_flag == "y":
        raise ProxyError(
            errors.PROTOCOL_VIOLATION,
            "pgtenantproxy: SCRAM channel binding cannot pass through the proxy: "
            "the unified server uses TLS with a certificate other than the proxy's",
            hint="Connect with channel_binding=disable, or give the proxy ([proxy] tls_cert and "
            "tls_key) the unified server's certificate so that channel binding passes through.",
        )
