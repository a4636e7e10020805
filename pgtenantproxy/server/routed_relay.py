"""The relay when routing is on: client units go to unified or to a tenant database.

Client bytes are split into messages and grouped into units
(:mod:`pgtenantproxy.protocol.batch`); each complete, unpinned unit is put to
the router, which answers "unified" or "tenant shop N". Unified units are
written to the session's own server connection at once (pipelining keeps
working); a tenant unit waits until unified has answered everything before it,
runs on a pooled tenant connection (:mod:`pgtenantproxy.server.tenant_batch`),
and units behind it wait for its ReadyForQuery. So the client receives answers
in exactly the order it sent its units, whichever server produced them.

Session facts the router needs are kept here: the transaction status (last
ReadyForQuery of unified: tenant units only ever run when it is 'I'), the
client's prepared statements, and the session settings the unified server
reports (ParameterStatus), which a tenant connection gets before a unit runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import BatchAssembler, Unit
from pgtenantproxy.protocol.errors import CONNECTION_FAILURE, ProtocolViolation, ProxyError, error_response
from pgtenantproxy.protocol.framing import FrameScanner, Message, MessageReader
from pgtenantproxy.protocol.messages import CloseOrDescribe, ParameterStatus, Parse, Query, ReadyForQuery
from pgtenantproxy.server.endpoint import Endpoint
from pgtenantproxy.server.statements import PreparedStatements
from pgtenantproxy.server.tenant_batch import Outcome, TenantBatch

logger = logging.getLogger(__name__)

#: Session settings a tenant connection must share with the client's session.
SHARED_SETTINGS = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings")
_FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")
#: Pause reading the client when this many units wait behind a tenant unit.
MAX_QUEUED_UNITS = 256


@dataclass(frozen=True)
class Decision:
    target: str  # "unified" | "tenant"
    shop_id: int | None = None
    reason: str = ""
    source: str | None = None
    #: For metrics: the unit's statement kind (select|insert|update|delete|other) and first table.
    kind: str = "other"
    table: str = ""

    @property
    def tenant(self) -> bool:
        return self.target == "tenant"


UNIFIED_PINNED = Decision("unified", reason="pinned")


@dataclass
class SessionFacts:
    """What the router may look at about a session."""

    startup: dict[str, str]
    statements: PreparedStatements = field(default_factory=PreparedStatements)
    settings: dict[str, str] = field(default_factory=dict)
    tx_status: int = c.TX_IDLE
    #: Anything the router keeps per session (SET shop tracking, watermarks...).
    router_state: object | None = None

    def shared_settings(self) -> dict[str, str]:
        """The settings a tenant connection must share with this session."""
        return {k: v for k, v in self.settings.items() if k in SHARED_SETTINGS}


class UnitRouter(Protocol):
    def decide(self, unit: Unit, facts: SessionFacts) -> Decision: ...
    def pool(self, shop_id: int) -> TenantPool: ...
    def completed(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None: ...
    @property
    def tenant_timeout(self) -> float: ...
    @property
    def fallback_enabled(self) -> bool: ...


def _tenant_unavailable(shop_id: int | None) -> bytes:
    return error_response(
        CONNECTION_FAILURE,
        f"pgtenantproxy: the database of shop {shop_id} is unavailable",
        hint="[routing] enable_fallback = true re-runs such reads on the unified database.",
    )


class RoutedRelay:
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

    # --- state the session asks about -------------------------------------------
    @property
    def tx_status(self) -> int:
        return self.facts.tx_status

    @property
    def idle(self) -> bool:
        return (
            self.owed == 0
            and self.tenant_task is None
            and not self._queue
            and not self._assembler.has_pending
            and self.facts.tx_status == c.TX_IDLE
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

    def start(self, server_leftover: bytes, client_leftover: bytes) -> None:
        self.server.start_relay(self.from_server, server_leftover)
        self.client.start_relay(self.from_client, client_leftover)

    # --- client -> servers --------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (msg := self._reader.next_message()) is not None:
                self._track(msg)
                self._queue.extend(self._assembler.feed(msg))
        except ProtocolViolation as exc:
            self._on_violation(exc)
            return
        self._pump()

    def _track(self, msg: Message) -> None:
        """Keep the prepared-statement table in step with what the client sends."""
        mtype = msg.type
        if mtype == c.PARSE:
            self.facts.statements.parsed(Parse.parse(msg.body), msg)
        elif mtype == c.CLOSE:
            target = CloseOrDescribe.parse(msg.body)
            if target.kind == "S":
                self.facts.statements.closed(target.name)
        elif mtype == c.QUERY:
            self.facts.statements.simple_query(Query.parse(msg.body).sql)

    def _pump(self) -> None:
        """Dispatch queued units in order; stop at a tenant unit until it is done."""
        while self._queue and self.tenant_task is None:
            unit = self._queue[0]
            if unit.kind == "terminate":
                self._queue.clear()
                self.server.write(unit.raw())
                self._on_terminate()
                return
            decision = self._decide(unit)
            if decision.tenant:
                if self.owed:
                    break  # unified answers first, to keep the order
                self._queue.popleft()
                self._start_tenant(unit, decision)
                break
            self._queue.popleft()
            self._send_unified(unit, decision)
        self._backpressure()

    def _decide(self, unit: Unit) -> Decision:
        """Ask the router about complete units (pinned ones too, for its bookkeeping)."""
        if not unit.complete:
            return UNIFIED_PINNED
        try:
            decision = self.router.decide(unit, self.facts)
        except Exception:
            logger.exception("routing failed; unit sent to unified")
            return Decision("unified", reason="router_error")
        if decision.tenant and (unit.pinned or self.facts.tx_status != c.TX_IDLE):
            return UNIFIED_PINNED  # never, whatever a router says
        return decision

    def _send_unified(self, unit: Unit, decision: Decision) -> None:
        self.server.write(unit.raw())
        if unit.complete:
            self.owed += 1
            self._pending_unified.append((unit, decision, time.perf_counter()))

    def _backpressure(self) -> None:
        crowded = len(self._queue) > MAX_QUEUED_UNITS
        if crowded and not self._client_paused:
            self._client_paused = True
            self.client.pause_reading()
        elif not crowded and self._client_paused:
            self._client_paused = False
            self.client.resume_reading()

    # --- tenant units ---------------------------------------------------------------
    def _start_tenant(self, unit: Unit, decision: Decision) -> None:
        assert decision.shop_id is not None
        batch = TenantBatch(
            self.client,
            self.router.pool(decision.shop_id),
            unit,
            self.facts.statements,
            self.facts.shared_settings(),
            timeout=self.router.tenant_timeout,
        )
        self.tenant_batch = batch
        self.tenant_task = asyncio.get_running_loop().create_task(self._run_tenant(unit, decision, batch))

    async def _run_tenant(self, unit: Unit, decision: Decision, batch: TenantBatch) -> None:
        started = time.perf_counter()
        try:
            outcome = await batch.run()
        except Exception:
            logger.exception("tenant unit failed")
            outcome = Outcome.FAILED if batch.forwarded else Outcome.FALLBACK
        finally:
            self.tenant_task = None
            self.tenant_batch = None
        if outcome is Outcome.DONE:
            result = "error" if batch.answered_error else "ok"
            self.router.completed(unit, self.facts, decision, result, time.perf_counter() - started)
        elif outcome is Outcome.FALLBACK and self.router.fallback_enabled:
            logger.info(
                "shop %s: tenant read failed (%s); re-running on unified", decision.shop_id, batch.error
            )
            self._send_unified(unit, dataclasses.replace(decision, target="unified", reason="fallback"))
        elif outcome is Outcome.FALLBACK:
            logger.warning("shop %s: tenant read failed (%s); fallback is off", decision.shop_id, batch.error)
            self.client.write(_tenant_unavailable(decision.shop_id) + ReadyForQuery.idle().build())
            self.router.completed(unit, self.facts, decision, "error", time.perf_counter() - started)
        else:
            logger.warning("shop %s: tenant failed mid-answer: %s", decision.shop_id, batch.error)
            self._on_tenant_failure()
            return
        if self.close_when_idle and self.idle:
            self._on_idle()
            return
        self._pump()

    # --- unified -> client ------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        self.client.write(data)
        frames = self._server_scanner.feed(data)
        if not frames:
            return
        answered = False
        for frame in frames:
            if frame.type == c.READY_FOR_QUERY:
                self.facts.tx_status = frame.body[0] if frame.body else c.TX_IDLE
                if self.owed:
                    self.owed -= 1
                    self._unified_done()
                self._unit_failed = False
                answered = True
            elif frame.type == c.ERROR_RESPONSE:
                self._unit_failed = True
                if _FATAL[0] in frame.body or _FATAL[1] in frame.body:
                    self.server_said_fatal = True
            elif frame.type == c.PARAMETER_STATUS:
                try:
                    ps = ParameterStatus.parse(frame.body)
                except ProxyError:
                    continue
                self.facts.settings[ps.name] = ps.value
        if answered:
            if self.close_when_idle and self.idle:
                self._on_idle()
            elif self._queue:
                self._pump()

    def _unified_done(self) -> None:
        if not self._pending_unified:
            return
        unit, decision, started = self._pending_unified.popleft()
        if self._unit_failed:
            outcome = "error"
        else:
            outcome = "fallback" if decision.reason == "fallback" else "ok"
        self.router.completed(unit, self.facts, decision, outcome, time.perf_counter() - started)

    def seed_settings(self, parameters: dict[str, str]) -> None:
        self.facts.settings.update(parameters)
