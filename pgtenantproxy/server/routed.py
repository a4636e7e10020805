"""The routed session's driver: sockets and timers around the sans-IO machine.

:class:`RoutedDriver` feeds the :class:`~pgtenantproxy.session.machine.SessionMachine`
what the endpoints receive (client and unified bytes straight from
``data_received``, no task switch) and carries out its
:class:`~pgtenantproxy.session.contract.Effects`: writes, borrowing a tenant
connection (at once when the pool has a warm one; otherwise one task waits for
the pool), attaching a tenant endpoint's bytes to the machine while it runs a
unit, one timer, cancels. It decides nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, cast

from pgtenantproxy.net.connect import send_cancel
from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.pools.connection import ServerConnection
from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol.errors import ProtocolViolation, ProxyError
from pgtenantproxy.session.contract import TenantLink, UnitRouter
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.machine import SessionMachine

logger = logging.getLogger(__name__)


class RoutingPort(UnitRouter, Protocol):
    """The router as the driver needs it: the machine's contract, and the tenant pools."""

    def pool(self, shop_id: int) -> TenantPool: ...


class RoutedDriver:
    def __init__(
        self,
        client: Endpoint,
        server: Endpoint,
        router: RoutingPort,
        facts: SessionFacts,
        *,
        on_end: Callable[[str], None],
        on_violation: Callable[[ProtocolViolation], None],
    ) -> None:
        self.client = client
        self.server = server
        self.router = router
        self._on_end = on_end
        self._on_violation = on_violation
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.Handle | None = None
        self._armed_at = 0.0
        self._deadline: float | None = None
        self._borrowing: asyncio.Task[None] | None = None
        self._disposed = False
        # Hot path: the machine calls these directly.
        self.to_client = client.write
        self.to_unified = server.write
        self.machine = SessionMachine(router, facts, self)
        client.peer = server
        server.peer = client

    # --- what the session asks ----------------------------------------------------------
    def start(self, server_leftover: bytes, client_leftover: bytes) -> None:
        self.server.start_relay(self.machine.unified_data, server_leftover)
        self.client.start_relay(self.machine.client_data, client_leftover)

    @property
    def idle(self) -> bool:
        return self.machine.idle

    @property
    def server_at_boundary(self) -> bool:
        return self.machine.server_at_boundary

    @property
    def server_said_fatal(self) -> bool:
        return self.machine.server_said_fatal

    def close_at_idle(self) -> None:
        self.machine.close_when_idle = True

    def cancel_target(self) -> tuple[str, int, int, bytes] | None:
        """The tenant connection running this client's query, if any."""
        link = self.machine.running_link
        if link is None:
            return None
        conn = cast(ServerConnection, link)
        return conn.target.host, conn.target.port, conn.pid, conn.key

    def client_cancels(self) -> None:
        """The client asked to cancel its running query (its CancelRequest is being forwarded)."""
        self.machine.cancel_requested()

    def dispose(self) -> None:
        """The session ended: a pinned transaction's connection is closed (it rolls back)."""
        self._disposed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._borrowing is not None:
            self._borrowing.cancel()
        self.machine.dispose()

    # --- Effects ------------------------------------------------------------------------
    def borrow(self, shop_id: int) -> TenantLink | None:
        pool = self.router.pool(shop_id)
        conn = pool.try_acquire_now()
        if conn is not None:
            return conn
        self._borrowing = self._loop.create_task(self._borrow(pool))
        return None

    async def _borrow(self, pool: TenantPool) -> None:
        try:
            conn = await pool.acquire()
        except (ProxyError, OSError, TimeoutError) as exc:
            self._borrowing = None
            self.machine.tenant_unavailable(f"connect: {exc}")
            return
        self._borrowing = None
        if self._disposed:
            pool.release(conn, reusable=True)
            return
        self.machine.tenant_ready(conn)

    def attach(self, link: TenantLink) -> None:
        endpoint = cast(ServerConnection, link).endpoint
        self.client.peer = endpoint
        endpoint.peer = self.client
        endpoint.on_lost = self.machine.tenant_lost
        endpoint.start_relay(self.machine.tenant_data)

    def to_tenant(self, link: TenantLink, data: bytes) -> None:
        cast(ServerConnection, link).endpoint.write(data)

    def detach(self, link: TenantLink) -> None:
        endpoint = cast(ServerConnection, link).endpoint
        endpoint.sink = None
        endpoint.on_lost = None
        endpoint.peer = None
        endpoint.resume_reading()
        self.client.peer = self.server
        self.client.resume_reading()

    def give_back(self, shop_id: int, link: TenantLink, *, reusable: bool, failed: bool) -> None:
        pool = self.router.pool(shop_id)
        if failed:
            pool.mark_failed(ProxyError("XX000", "tenant unit failed"))
        pool.release(cast(ServerConnection, link), reusable=reusable)

    def cancel_tenant(self, link: TenantLink) -> None:
        conn = cast(ServerConnection, link)
        task = self._loop.create_task(send_cancel(conn.target.host, conn.target.port, conn.pid, conn.key))
        task.add_done_callback(lambda _t: None)

    def set_timer(self, seconds: float) -> None:
        """One deadline at a time; the loop timer is only re-armed when it would fire too late
        (a tenant unit's timeout is set and cleared per unit: no timer handle per unit)."""
        deadline = self._deadline = self._loop.time() + seconds
        timer = self._timer
        if timer is not None and self._armed_at <= deadline:
            return
        if timer is not None:
            timer.cancel()
        self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        # uvloop hands back a plain Handle (no when()) for a delay under a millisecond: the armed
        # deadline is kept here instead of asked of the handle
        self._armed_at = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._arm(deadline)
            return
        self._deadline = None
        self.machine.timer_fired()

    def clear_timer(self) -> None:
        self._deadline = None

    def pause_client(self) -> None:
        self.client.pause_reading()

    def resume_client(self) -> None:
        self.client.resume_reading()

    def end(self, reason: str) -> None:
        self._on_end(reason)

    def violation(self, exc: ProtocolViolation) -> None:
        self._on_violation(exc)
