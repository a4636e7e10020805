"""Running one client unit on a shop's tenant database.

Steps: borrow a pooled connection; re-prepare the client's named statements
the unit binds (and close stale ones it re-parses) in one round trip of the
proxy's own; apply the client's session settings if they differ (another
round trip, only when needed); then send the unit as the client sent it and
relay the answer.

Fallback: the answer is held back until its ReadyForQuery (or until
:data:`HOLD_LIMIT` bytes), so when the tenant side fails before any byte
reached the client — connect error, an error that means the tenant side is
broken (connection, resources, missing objects, internal), or no answer
within the timeout — :meth:`TenantBatch.run` returns ``FALLBACK`` and the
caller re-runs the unit on unified, transparently. Once bytes have been
forwarded, a tenant failure ends the client session with FATAL 08006, as the
loss of a direct server would.

*Primary* units (a ``tenant_primary`` shop's reads and writes: the shop's data
lives there) never fall back: their answer is forwarded as it comes, with no
timeout on the statement itself (a direct server has none either), and a
connection whose transaction is still open after the unit (ReadyForQuery
T/E) is not given back: it is :attr:`TenantBatch.kept` for the session,
which passes it back in (``conn=``) for the next unit of that transaction.
Such a continuation skips the session settings (they were applied when the
transaction began, and must not be changed inside it) and, in a failed
transaction, re-preparing (the server answers 25P02 to everything anyway).
``begin`` is a deferred BEGIN the client already got an answer for: it runs
in a round trip of the proxy's own right before the unit.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Protocol

from pgtenantproxy.pools.connection import ServerConnection
from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.framing import FrameScanner, MessageReader
from pgtenantproxy.protocol.messages import (
    SYNC_MESSAGE,
    CloseOrDescribe,
    ErrorFields,
    Query,
)
from pgtenantproxy.server.backend import send_cancel
from pgtenantproxy.server.endpoint import ConnectionClosed, FlowPeer
from pgtenantproxy.server.statements import PreparedStatements

logger = logging.getLogger(__name__)

HOLD_LIMIT = 256 * 1024

#: SQLSTATE classes that mean "the tenant side is broken", not "the query is wrong".
BROKEN_CLASSES = ("08", "53", "57", "58", "XX", "3D", "28", "42P01", "42703", "42883", "42704", "26000")


class AnswerSink(Protocol):
    """Where a unit's answer goes: the client's endpoint, or a shadow-read collector."""

    peer: FlowPeer | None

    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Outcome(enum.Enum):
    DONE = "done"
    FALLBACK = "fallback"
    FAILED = "failed"  # bytes already reached the client, then the tenant failed


def is_broken(sqlstate: str) -> bool:
    return any(sqlstate.startswith(prefix) for prefix in BROKEN_CLASSES)


class TenantBatch:
    def __init__(
        self,
        client: AnswerSink,
        pool: TenantPool,
        unit: Unit,
        statements: PreparedStatements,
        settings: dict[str, str],
        *,
        timeout: float,
        on_bytes: Callable[[], None] | None = None,
        primary: bool = False,
        conn: ServerConnection | None = None,
        conn_status: int = c.TX_IDLE,
        begin: bytes | None = None,
    ) -> None:
        self.client = client
        self.pool = pool
        self.unit = unit
        self.statements = statements
        self.settings = settings
        self.timeout = timeout
        self.conn: ServerConnection | None = None
        self.error: str | None = None
        #: The tenant answered the unit with an ErrorResponse (a SQL error: metrics count it as an error).
        self.answered_error = False
        self.forwarded = False
        self._held: list[bytes] = []
        self._held_size = 0
        self._scanner = FrameScanner(frozenset({c.READY_FOR_QUERY, c.ERROR_RESPONSE}))
        self._done: asyncio.Future[None] | None = None
        self._status = c.TX_IDLE
        self._broken_error = False
        self._on_bytes = on_bytes
        self.primary = primary
        self.begin = begin
        self._given = conn
        self._given_status = conn_status
        #: A primary unit left its transaction open: the connection the session keeps.
        self.kept: ServerConnection | None = None

    @property
    def status(self) -> int:
        """The transaction status of the last ReadyForQuery."""
        return self._status

    async def run(self) -> Outcome:
        if self._given is not None:
            self.conn = self._given
            self._status = self._given_status
            if not self.conn.endpoint.is_open or self.conn.endpoint.has_buffered:
                self.error = "the tenant connection of this transaction was lost"
                self._abandon(self.conn)
                self._give_back(self.conn)
                return Outcome.FALLBACK
        else:
            try:
                self.conn = await self.pool.acquire()
            except (ProxyError, OSError, TimeoutError) as exc:
                self.error = f"connect: {exc}"
                return Outcome.FALLBACK
        conn = self.conn
        try:
            async with asyncio.timeout(self.timeout):
                await self._setup(conn)
            return await self._execute(conn)
        except (ProxyError, OSError, ConnectionClosed, TimeoutError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.pool.mark_failed(exc)
            self._abandon(conn)
            return Outcome.FAILED if self.forwarded else Outcome.FALLBACK
        finally:
            if self.conn is not None:
                self._give_back(self.conn)

    # --- steps ----------------------------------------------------------------
    async def _setup(self, conn: ServerConnection) -> None:
        if self._given_status != c.TX_FAILED:
            await self._prepare(conn)
        if self._given is None:
            await self._apply_settings(conn)
        if self.begin is not None:
            conn.endpoint.write(self.begin)
            await self._round_trip(conn, "BEGIN")

    async def _prepare(self, conn: ServerConnection) -> None:
        plan = self._preparation(conn)
        if not plan:
            return
        conn.endpoint.write(b"".join(plan) + SYNC_MESSAGE)
        await self._round_trip(conn, "re-prepare")

    def _preparation(self, conn: ServerConnection) -> list[bytes]:
        """Close stale names the unit re-parses; Parse what it binds but did not parse."""
        out: list[bytes] = []
        parsed_here: set[str] = set()
        for msg in self.unit.messages:
            if msg.type == c.PARSE:
                name = _name_of_parse(msg.body)
                parsed_here.add(name)
                if name and name in conn.prepared:
                    out.append(CloseOrDescribe("S", name).build_close())
                    del conn.prepared[name]
            elif msg.type in (c.BIND, c.DESCRIBE):
                bound = _statement_of(msg.type, msg.body)
                if bound is None or bound in parsed_here:
                    continue
                name = bound
                record = self.statements.get(name)
                if record is None:
                    raise ProxyError("26000", f'prepared statement "{name}" does not exist', severity="ERROR")
                parse, raw = record
                if name == "" or conn.prepared.get(name) != parse.sql:
                    out.append(CloseOrDescribe("S", name).build_close())
                    out.append(raw.raw())
                    if name:
                        conn.prepared[name] = parse.sql
                parsed_here.add(name)
        return out

    async def _apply_settings(self, conn: ServerConnection) -> None:
        wanted = {k: v for k, v in self.settings.items() if conn.settings.get(k) != v}
        if not wanted:
            return
        sql = "".join(f"SET {name} = {_literal(value)};" for name, value in wanted.items())
        conn.endpoint.write(Query(sql).build())
        await self._round_trip(conn, "session settings")
        conn.settings.update(wanted)

    async def _round_trip(self, conn: ServerConnection, what: str) -> None:
        reader = MessageReader()
        failure: ErrorFields | None = None
        while True:
            msg = reader.next_message()
            if msg is None:
                reader.feed(await conn.endpoint.receive())
                continue
            if msg.type == c.ERROR_RESPONSE:
                failure = ErrorFields.parse(msg.body)
            elif msg.type == c.READY_FOR_QUERY:
                break
        if failure is not None:
            conn.prepared.clear()
            raise ProxyError(failure.sqlstate or "XX000", f"tenant {what} failed: {failure.message}")

    async def _execute(self, conn: ServerConnection) -> Outcome:
        self._done = asyncio.get_running_loop().create_future()
        previous_peer = self.client.peer
        self.client.peer = conn.endpoint
        conn.endpoint.peer = self.client
        conn.endpoint.on_lost = self._tenant_lost
        conn.endpoint.start_relay(self._from_tenant)
        if self.primary:
            self.forwarded = True  # no fallback: the answer goes to the client as it comes
        conn.endpoint.write(self.unit.raw())
        try:
            try:
                async with asyncio.timeout(None if self.primary else self.timeout):
                    await asyncio.shield(self._done)
            except TimeoutError:
                if not self.forwarded:
                    self._cancel(conn)
                    raise
                await self._done
        finally:
            conn.endpoint.sink = None
            conn.endpoint.on_lost = None
            conn.endpoint.peer = None
            conn.endpoint.resume_reading()
            self.client.peer = previous_peer
            self.client.resume_reading()
        if self._broken_error and not self.forwarded:
            self.error = "tenant error"
            self.pool.mark_failed(ProxyError("XX000", "tenant error"))
            conn.prepared.clear()
            return Outcome.FALLBACK
        self._flush()
        self._record_parses(conn)
        return Outcome.DONE

    # --- the answer -------------------------------------------------------------
    def _from_tenant(self, data: bytes) -> None:
        frames = self._scanner.feed(data)
        done = False
        for frame in frames:
            if frame.type == c.READY_FOR_QUERY:
                self._status = frame.body[0] if frame.body else c.TX_IDLE
                done = True
            else:  # ErrorResponse
                self.answered_error = True
                if not self.forwarded and is_broken(ErrorFields.parse(frame.body).sqlstate):
                    self._broken_error = True
        if self.forwarded:
            self.client.write(data)
        else:
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size > HOLD_LIMIT and not self._broken_error:
                self._flush()
        if done and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _flush(self) -> None:
        if self._held:
            self.client.write(b"".join(self._held))
            self._held.clear()
            self._held_size = 0
            if not self.forwarded and self._on_bytes is not None:
                self._on_bytes()
        self.forwarded = True

    def _tenant_lost(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionClosed("tenant"))

    def _record_parses(self, conn: ServerConnection) -> None:
        for msg in self.unit.messages:
            if msg.type == c.PARSE:
                name = _name_of_parse(msg.body)
                if name:
                    record = self.statements.get(name)
                    if record is not None:
                        conn.prepared[name] = record[0].sql

    # --- giving the connection back ----------------------------------------------
    def _cancel(self, conn: ServerConnection) -> None:
        task = asyncio.get_running_loop().create_task(
            send_cancel(conn.target.host, conn.target.port, conn.pid, conn.key)
        )
        task.add_done_callback(lambda t: None)
        conn.broken = True

    def _abandon(self, conn: ServerConnection) -> None:
        conn.broken = True

    def _give_back(self, conn: ServerConnection) -> None:
        at_rest = not conn.broken and self._scanner.at_boundary
        self.conn = None
        if self.primary and at_rest and self._status != c.TX_IDLE:
            self.kept = conn  # its transaction is open: the session keeps it
            return
        self.pool.release(conn, reusable=at_rest and self._status == c.TX_IDLE)


def _name_of_parse(body: bytes) -> str:
    end = body.find(b"\x00")
    return body[:end].decode("utf-8", "replace") if end >= 0 else ""


def _statement_of(mtype: int, body: bytes) -> str | None:
    """The statement a Bind uses, or a Describe 'S' names (None for Describe of a portal)."""
    if mtype == c.DESCRIBE:
        if not body or body[0] != ord("S"):
            return None
        end = body.find(b"\x00", 1)
        return body[1:end].decode("utf-8", "replace") if end >= 0 else None
    first = body.find(b"\x00")
    if first < 0:
        return None
    second = body.find(b"\x00", first + 1)
    return body[first + 1 : second].decode("utf-8", "replace") if second >= 0 else None


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
