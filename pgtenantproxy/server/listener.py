"""The listening proxy: accepts clients, admits them, and shuts down gracefully.

Admission follows PostgreSQL: past ``max_client_connections`` a new client
gets FATAL 53300 "sorry, too many clients already"; during shutdown, FATAL
57P03 "the database system is shutting down".

Shutdown (SIGTERM/SIGINT): stop accepting, close idle sessions at once with
FATAL 57P01, let busy ones finish their transaction, and after
``shutdown_timeout_ms`` cancel and close whatever is left. Nothing hangs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from typing import Any

from pgtenantproxy.config import Config
from pgtenantproxy.net.connect import upstream_tls_context
from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.protocol import errors
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.messages import CancelRequest
from pgtenantproxy.server.cancel import CancelRegistry
from pgtenantproxy.server.routed import RoutingPort
from pgtenantproxy.server.session import ClientSession

logger = logging.getLogger(__name__)


def client_tls_context(config: Config) -> ssl.SSLContext | None:
    if config.proxy.tls_cert is None or config.proxy.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(config.proxy.tls_cert, config.proxy.tls_key)
    return ctx


class ProxyServer:
    def __init__(self, config: Config, *, router: RoutingPort | None = None) -> None:
        self.config = config
        #: Decides where client units go; None = plain session relay to unified.
        self.router = router
        self.client_tls = client_tls_context(config)
        self.upstream_tls = upstream_tls_context(config.unified)
        self.cancels = CancelRegistry()
        self.sessions: set[ClientSession] = set()
        self.shutting_down = False
        #: Counters for the metrics layer: connections accepted, clients refused at admission.
        self.accepted_total = 0
        self.refused_total = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._admitted: set[ClientSession] = set()
        self._all_gone = asyncio.Event()

    @property
    def sockets_addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.config.proxy.host, self.config.proxy.port
        self._server = await loop.create_server(self._new_endpoint, host, port, backlog=1024)
        logger.info("listening on %s", ", ".join(f"{h}:{p}" for h, p in self.sockets_addresses))

    def _new_endpoint(self) -> Endpoint:
        return _AcceptedEndpoint(self)

    def accepted(self, endpoint: Endpoint) -> None:
        assert endpoint.transport is not None
        peer = endpoint.transport.get_extra_info("peername")
        label = f"{peer[0]}:{peer[1]}" if peer else "?"
        session = ClientSession(self, endpoint, label)
        self.accepted_total += 1
        self.sessions.add(session)
        self.track(asyncio.get_running_loop().create_task(session.run()))

    # --- used by sessions ---------------------------------------------------
    def admit(self, session: ClientSession) -> None:
        if self.shutting_down:
            self.refused_total += 1
            raise ProxyError(errors.CANNOT_CONNECT_NOW, "the database system is shutting down")
        if len(self._admitted) >= self.config.proxy.max_client_connections:
            self.refused_total += 1
            logger.warning(
                "refused %s: max_client_connections (%d) reached",
                session.peer,
                self.config.proxy.max_client_connections,
            )
            raise ProxyError(errors.TOO_MANY_CONNECTIONS, "sorry, too many clients already")
        self._admitted.add(session)

    def forget(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        self._admitted.discard(session)
        if not self.sessions:
            self._all_gone.set()

    @property
    def client_count(self) -> int:
        return len(self._admitted)

    async def forward_cancel(self, request: CancelRequest) -> None:
        """Forward a client's CancelRequest; returns when it has landed (or timed out)."""
        session = self.cancels.find(request.pid, request.key)
        if session is None:
            logger.info("cancel request for unknown pid %s ignored", request.pid)
            return
        await session.forward_cancel()

    def track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.track(asyncio.get_running_loop().create_task(coro))

    # --- shutdown ------------------------------------------------------------
    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, drain sessions up to the timeout, then close the rest."""
        if timeout is None:
            timeout = self.config.proxy.shutdown_timeout_ms / 1000
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        logger.info("shutting down: %d sessions, waiting up to %.1fs", len(self.sessions), timeout)
        for session in list(self.sessions):
            session.request_close()
        if self.sessions:
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout)
            except TimeoutError:
                pass
        for session in list(self.sessions):
            session.force_close()
        # Sessions ending now spawn tasks of their own (cancels): wait for those too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (pending := [t for t in self._tasks if not t.done()]) and loop.time() < deadline:
            await asyncio.wait(pending, timeout=deadline - loop.time())
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("shut down")


class _AcceptedEndpoint(Endpoint):
    def __init__(self, proxy: ProxyServer) -> None:
        super().__init__("client")
        self._proxy = proxy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._proxy.accepted(self)

