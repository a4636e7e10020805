"""One client session: startup, authentication relay, relay, and a clean end.

Lifecycle (one coroutine, :meth:`ClientSession.run`):

1. read the startup packet (TLS negotiated first); a CancelRequest is
   forwarded and the connection closed once the server has closed the
   forwarded one (so the cancel has landed before the client goes on), or
   after ``CANCEL_TIMEOUT``;
2. admission (max client connections, 53300), connect to the unified server,
   relay authentication: all under the authentication timeout (57014);
3. relay until either side goes away.

Ending: whichever side ends first, the other is closed too. A session that
ends while its server is busy (client vanished, protocol violation, shutdown
timeout) gets its query cancelled, once, in ``_finish``, so no backend keeps
running for nobody; never after its server is gone. A server that vanishes without saying why gets the
client a FATAL 08006. Errors of the proxy's own reach the client as
ErrorResponses with their SQLSTATE.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from typing import Any, Protocol

from pgtenantproxy.config import Config
from pgtenantproxy.net.connect import CANCEL_TIMEOUT, open_server, send_cancel
from pgtenantproxy.net.endpoint import ConnectionClosed, Endpoint
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.protocol.messages import TERMINATE, CancelRequest, StartupMessage
from pgtenantproxy.server.cancel import CancelRegistry
from pgtenantproxy.server.handshake import (
    Established,
    ServerRefused,
    read_startup,
    relay_authentication,
)
from pgtenantproxy.server.relay import Relay
from pgtenantproxy.server.routed import RoutedDriver, RoutingPort
from pgtenantproxy.session.facts import SessionFacts

logger = logging.getLogger(__name__)

SHUTDOWN_ERROR = ProxyError(errors.ADMIN_SHUTDOWN, "terminating connection due to administrator command")


def _server_gone() -> ProxyError:
    return ProxyError(
        errors.CONNECTION_FAILURE,
        "pgtenantproxy: server closed the connection unexpectedly",
        detail="The unified server terminated the session abnormally.",
    )


#: A busy server whose client left is cancelled up to this many times, waiting twice as long each time.
END_CANCEL_ATTEMPTS = 5
END_CANCEL_FIRST_WAIT_S = 0.2


async def end_busy_server(server: Endpoint, target: tuple[str, int, int, bytes]) -> None:
    """The client left while its server works for it: cancel until the server answers, then end it.

    PostgreSQL ignores a cancel that reaches a backend between commands, so one
    cancel sent as the client vanishes can land just before the backend reads the
    query the proxy forwarded last, and a ``pg_sleep(60)`` would then run on for
    nobody (the Terminate after it is only read when it ends). Any answer from the
    server (its 57014 error, the rest of a result) or its close ends the wait.
    """
    answered = asyncio.get_running_loop().create_future()

    def heard(_data: bytes = b"") -> None:
        if not answered.done():
            answered.set_result(None)

    server.start_relay(heard, dedicated=True)
    server.on_lost = heard
    wait = END_CANCEL_FIRST_WAIT_S
    try:
        for _ in range(END_CANCEL_ATTEMPTS):
            await send_cancel(*target, timeout=CANCEL_TIMEOUT)
            try:
                async with asyncio.timeout(wait):
                    await asyncio.shield(answered)
                return
            except TimeoutError:
                wait *= 2
        logger.warning("a server session whose client left did not answer %d cancels; closing it",
                       END_CANCEL_ATTEMPTS)
    finally:
        server.on_lost = None
        server.write(TERMINATE)
        server.close()


class SessionHost(Protocol):
    """What a session needs from its listener (:class:`~pgtenantproxy.server.listener.ProxyServer`)."""

    config: Config
    router: RoutingPort | None
    client_tls: ssl.SSLContext | None
    upstream_tls: ssl.SSLContext | None
    cancels: CancelRegistry

    def admit(self, session: ClientSession) -> None: ...
    def forget(self, session: ClientSession) -> None: ...
    async def forward_cancel(self, request: CancelRequest) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


class ClientSession:
    def __init__(self, proxy: SessionHost, client: Endpoint, peer: str) -> None:
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.server: Endpoint | None = None
        self.relay: Relay | RoutedDriver | None = None
        self.established: Established | None = None
        self.startup: StartupMessage | None = None
        self._done = asyncio.get_running_loop().create_future()
        self._closing = False

    # --- lifecycle --------------------------------------------------------
    async def run(self) -> None:
        self.client.on_lost = self._client_lost
        try:
            await self._start()
            if self.relay is not None:
                await self._done
        except ProxyError as exc:
            self._fail(exc)
        except TimeoutError:
            self._fail(ProxyError(errors.QUERY_CANCELED, "canceling authentication due to timeout"))
        except ConnectionClosed as exc:
            if exc.args and exc.args[0] != "client":
                self._fail(_server_gone())
        except ServerRefused:
            pass
        except Exception:
            logger.exception("session %s failed", self.peer)
            self._fail(ProxyError("XX000", "pgtenantproxy: internal error"))
        finally:
            self._finish()

    async def _start(self) -> None:
        timeout = self.proxy.config.proxy.auth_timeout_ms / 1000
        async with asyncio.timeout(timeout) as deadline:
            packet, leftover = await read_startup(self.client, self.proxy.client_tls)
            if isinstance(packet, CancelRequest):
                deadline.reschedule(None)  # bounded by CANCEL_TIMEOUT instead
                await self.proxy.forward_cancel(packet)
                return  # _finish closes the client's cancel connection
            self.startup = packet
            self.proxy.admit(self)
            self.server = await open_server(self.proxy.config.unified, self.proxy.upstream_tls)
            self.server.on_lost = self._server_lost
            self.established = await relay_authentication(
                self.client, self.server, packet, leftover, own_cert=self.proxy.config.proxy.tls_cert
            )
        if self._done.done():
            return
        self._start_relay(self.established)

    def _start_relay(self, est: Established) -> None:
        assert self.server is not None
        if est.real_key is not None:
            self.proxy.cancels.add(est.real_key.pid, est.proxy_key, self)
        router = self.proxy.router
        if router is None:
            self.relay = Relay(
                self.client,
                self.server,
                on_violation=self._violation,
                on_idle=self._close_idle,
                on_terminate=self._client_terminated,
            )
        else:
            assert self.startup is not None
            facts = SessionFacts(startup=dict(self.startup.params), settings=dict(est.parameters))
            self.relay = RoutedDriver(
                self.client, self.server, router, facts, on_end=self._routed_end, on_violation=self._violation
            )
        self.relay.start(est.server_leftover, est.client_leftover)
        logger.debug("session %s established (user %s)", self.peer, self.startup and self.startup.user)
        if self._closing:
            self.request_close()

    def _finish(self) -> None:
        # The session is over: later connection events need no reaction (a client
        # closed after its server vanished must not cancel on a dead server).
        self.client.on_lost = None
        target = None
        if self.server is not None:
            self.server.on_lost = None
            if not self.idle and self.server.is_open:
                target = self._cancel_target()  # nobody is left to read the answer
        tenant_running = isinstance(self.relay, RoutedDriver) and self.relay.cancel_target() is not None
        if isinstance(self.relay, RoutedDriver):
            self.relay.dispose()  # a transaction pinned to a tenant connection rolls back
        if self.established is not None and self.established.real_key is not None:
            self.proxy.cancels.remove(self.established.real_key.pid, self)
        if self.server is not None:
            if target is not None and not tenant_running:
                self.proxy.spawn(end_busy_server(self.server, target))
            else:
                if target is not None:
                    self.proxy.spawn(send_cancel(*target))
                self.server.write(TERMINATE)
                self.server.close()
        self.client.close()
        self.proxy.forget(self)

    def _end(self) -> None:
        if not self._done.done():
            self._done.set_result(None)

    # --- events from the endpoints and the relay ---------------------------
    def _client_lost(self) -> None:
        self._end()  # a query still running is cancelled by _finish

    def _server_lost(self) -> None:
        relay = self.relay
        if relay is not None and not relay.server_said_fatal and relay.server_at_boundary:
            self.client.write(_server_gone().to_message())
        self._end()

    def _client_terminated(self) -> None:
        self._end()

    def _tenant_failed(self) -> None:
        """A tenant server failed after part of its answer reached the client."""
        self._end()

    def _routed_end(self, reason: str) -> None:
        """The routed session ended itself: the client terminated, a tenant failed mid-answer, or idle."""
        if reason == "idle_close":
            self._close_idle()
        elif reason == "terminate":
            self._client_terminated()
        else:
            self._tenant_failed()

    def _violation(self, exc: ProtocolViolation) -> None:
        logger.warning("session %s: protocol violation from client: %s", self.peer, exc.message)
        self._fail(exc)
        self._end()

    def _close_idle(self) -> None:
        self._fail(SHUTDOWN_ERROR)
        self._end()

    def _fail(self, exc: ProxyError) -> None:
        """Send an error of the proxy's own to the client, if it is still there."""
        if self.client.is_open:
            relay = self.relay
            if relay is None or relay.server_at_boundary:
                self.client.write(exc.to_message())
        if exc.severity in ("FATAL", "PANIC"):
            self._end()

    # --- requests from the proxy ------------------------------------------
    def cancel_running_query(self) -> None:
        """Cancel whatever runs for this client now, in the background (session end, shutdown)."""
        target = self._cancel_target()
        if target is not None:
            self.proxy.spawn(send_cancel(*target))

    async def forward_cancel(self) -> None:
        """A client's CancelRequest: return once the server has closed the forwarded one.

        PostgreSQL signals the backend before closing, so the client, which waits for
        its own cancel connection to close, cannot have its next query hit by a late
        cancel. Bounded by ``CANCEL_TIMEOUT`` (``send_cancel`` logs, never raises).
        """
        if isinstance(self.relay, RoutedDriver):
            self.relay.client_cancels()  # the tenant's 57014 is then the answer, not a failure
        target = self._cancel_target()
        if target is not None:
            await send_cancel(*target, timeout=CANCEL_TIMEOUT)

    def _cancel_target(self) -> tuple[str, int, int, bytes] | None:
        """(host, port, pid, key) of the server running this client's query: a tenant, else unified."""
        relay = self.relay
        target = relay.cancel_target() if isinstance(relay, RoutedDriver) else None
        if target is not None:
            return target
        est = self.established
        if est is None or est.real_key is None:
            return None
        cfg = self.proxy.config.unified
        return cfg.host, cfg.port, est.real_key.pid, est.real_key.key

    @property
    def idle(self) -> bool:
        return self.relay is None or self.relay.idle

    def request_close(self) -> None:
        """Graceful shutdown: close now if idle, else at the next idle point."""
        self._closing = True
        relay = self.relay
        if relay is None:
            return  # still starting: closed when the handshake ends
        if relay.idle:
            self._close_idle()
        elif isinstance(relay, RoutedDriver):
            relay.close_at_idle()
        else:
            relay.close_when_idle = True

    def force_close(self) -> None:
        """Shutdown timeout reached: close (_finish cancels what runs)."""
        self._fail(SHUTDOWN_ERROR)
        self._end()
        self.client.close()
