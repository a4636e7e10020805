"""The routed relay's unified side: units sent to the session's own server, and its answers.

Sending: a deferred BEGIN goes first (the client has its answer: the
server's is skipped); statements the unit uses that unified has not seen are
prepared first in a batch of the proxy's own (:mod:`.unified_statements`;
answers skipped); then the unit as the client sent it. Receiving: the
answers pass the pending :class:`~pgtenantproxy.protocol.local_answers.ReplyFilter`
s in order, then the relay's bookkeeping (transaction status, owed
ReadyForQuery, errors, ParameterStatus) sees what the server really said.
"""

from __future__ import annotations

import logging
import time

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.local_answers import ReplyFilter
from pgtenantproxy.protocol.messages import SYNC_MESSAGE, ParameterStatus
from pgtenantproxy.server.relay_base import RelayBase
from pgtenantproxy.server.unit_decision import Decision

logger = logging.getLogger(__name__)

_FATAL = (b"\x00VFATAL\x00", b"\x00VPANIC\x00")


class UnifiedSide(RelayBase):
    def _send_unified(self, unit: Unit, decision: Decision) -> None:
        self._prepare_unified(unit)
        begin = self.facts.deferred_begin
        if begin is not None:  # the client got its answer already: skip the server's
            self.facts.deferred_begin = None
            self._filters.append(ReplyFilter())
            self.server.write(begin.raw())
        self._write_unified(unit)
        if unit.complete:
            self.owed += 1
            self._pending_unified.append((unit, decision, time.perf_counter()))

    def _write_unified(self, unit: Unit) -> None:
        """Every client message unified gets goes through here (its statements are tracked)."""
        self._unified_statements.sent(unit)
        self._unified_mid_batch = not unit.complete and unit.kind == "extended"
        self.server.write(unit.raw())

    def _prepare_unified(self, unit: Unit) -> None:
        """Statements ``unit`` uses that unified lacks: parsed first (not in a failed transaction,
        where the Parse would fail, and the unit with it)."""
        if self._unified_mid_batch or unit.kind != "extended" or self.facts.tx_status == c.TX_FAILED:
            return
        plan = self._unified_statements.preparation(unit, self.facts.statements)
        if plan:
            self._filters.append(ReplyFilter(quiet=True))
            self.server.write(b"".join(m.raw() for m in plan) + SYNC_MESSAGE)

    # --- unified -> client ------------------------------------------------------------
    def from_server(self, data: bytes) -> None:
        if self._filters:
            data, to_client = self._filter(data)
            self.client.write(to_client)
            if not data:
                return
        else:
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

    def _filter(self, data: bytes) -> tuple[bytes, bytes]:
        """(bytes for the bookkeeping below, bytes for the client) through the pending filters."""
        seen: list[bytes] = []
        client: list[bytes] = []
        while self._filters and data:
            head = self._filters[0]
            for_us, for_client, data = head.feed(data)
            seen.append(for_us)
            client.append(for_client)
            if head.done:
                self._filters.popleft()
                if head.rewrite_to is None:
                    self.facts.tx_status = head.status
        seen.append(data)
        client.append(data)
        return b"".join(seen), b"".join(client)

    def _unified_done(self) -> None:
        if not self._pending_unified:
            return
        unit, decision, started = self._pending_unified.popleft()
        if self._unit_failed:
            outcome = "error"
        else:
            outcome = "fallback" if decision.reason == "fallback" else "ok"
        self.router.completed(unit, self.facts, decision, outcome, time.perf_counter() - started)
