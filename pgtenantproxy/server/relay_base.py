"""The routed relay's state, and what the session asks about it.

:class:`RelayBase` holds everything the parts of the routed relay share (one
class chain: :class:`~pgtenantproxy.server.unified_side.UnifiedSide` →
:class:`~pgtenantproxy.server.moved_tx.MovedTransactions` →
:class:`~pgtenantproxy.server.routed_relay.RoutedRelay`), so each part reads
and writes the same fields. Invariants: ``owed`` counts the ReadyForQuery
unified owes for units the client sent (never for the proxy's own batches,
whose answers :attr:`_filters` remove); at most one tenant task runs
(``tenant_task``), and no unit is dispatched while it does; the pinned tenant
connection is either in :attr:`pinned` or lent to the running tenant batch.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Callable

from pgtenantproxy.pools.connection import ServerConnection
from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.framing import FrameScanner, MessageReader
from pgtenantproxy.protocol.local_answers import ReplyFilter
from pgtenantproxy.server.endpoint import Endpoint
from pgtenantproxy.server.tenant_batch import TenantBatch
from pgtenantproxy.server.unified_statements import UnifiedStatements
from pgtenantproxy.server.unit_decision import Decision, SessionFacts, UnitRouter


class RelayBase(abc.ABC):
    def __init__(
        self,
        client: Endpoint,
        server: Endpoint,
        router: UnitRouter,
        facts: SessionFacts,
        *,
        on_violation: Callable[[ProtocolViolation], None],
        on_idle: Callable[[], None],
        on_terminate: Callable[[], None],
        on_tenant_failure: Callable[[], None],
    ) -> None:
        self.client = client
        self.server = server
        self.router = router
        self.facts = facts
        self.close_when_idle = False
        self.server_said_fatal = False
        self.owed = 0  # ReadyForQuery the unified server still owes
        self.tenant_task: asyncio.Task[None] | None = None
        self.tenant_batch: TenantBatch | None = None
        #: The tenant connection holding this session's open transaction (facts.pinned_shop's).
        self.pinned: ServerConnection | None = None
        self._pinned_status = c.TX_IDLE
        self._pinned_pool: TenantPool | None = None
        #: A primary unit left its transaction open but its connection could not be kept: the client's
        #: next unit gets an error in a failed transaction instead of running outside it.
        self._lost_tx_shop: int | None = None
        #: Answers the proxy edits, in the order unified sends them (see ReplyFilter).
        self._filters: deque[ReplyFilter] = deque()
        #: The statements unified has (it does not see the Parses that ran on tenant connections).
        self._unified_statements = UnifiedStatements()
        #: Unified got part of an extended batch without its Sync (Flush-split): no batch of ours now.
        self._unified_mid_batch = False
        self._disposed = False
        self._flush_synced = False
        self._reader = MessageReader(c.FRONTEND_LIMITS)
        self._assembler = BatchAssembler()
        self._queue: deque[Unit] = deque()
        self._server_scanner = FrameScanner(
            frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE, c.PARAMETER_STATUS})
        )
        self._pending_unified: deque[tuple[Unit, Decision, float]] = deque()
        self._on_violation = on_violation
        self._on_idle = on_idle
        self._on_terminate = on_terminate
        self._on_tenant_failure = on_tenant_failure
        self._client_paused = False
        self._unit_failed = False  # an ErrorResponse since the last ReadyForQuery
        client.peer = server
        server.peer = client

    @abc.abstractmethod
    def _pump(self) -> None:
        """Dispatch the queued client units (the client side: RoutedRelay)."""

    # --- state the session asks about -------------------------------------------
    @property
    def tx_status(self) -> int:
        if self.facts.pinned_shop is not None:
            return self._pinned_status
        return c.TX_IN_BLOCK if self.facts.deferred_begin is not None else self.facts.tx_status

    @property
    def idle(self) -> bool:
        return (
            self.owed == 0
            and self.tenant_task is None
            and not self._queue
            and not self._assembler.has_pending
            and self.tx_status == c.TX_IDLE
        )

    @property
    def server_at_boundary(self) -> bool:
        return self._server_scanner.at_boundary and self.tenant_task is None

    def cancel_target(self) -> tuple[str, int, int, bytes] | None:
        """The tenant connection running this client's query, if any."""
        batch = self.tenant_batch
        if batch is not None and batch.conn is not None:
            conn = batch.conn
            return conn.target.host, conn.target.port, conn.pid, conn.key
        return None

    def seed_settings(self, parameters: dict[str, str]) -> None:
        self.facts.settings.update(parameters)
