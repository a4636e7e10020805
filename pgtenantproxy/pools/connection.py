"""A raw protocol connection of the proxy's own to a tenant database.

Opened as the shop's role (credentials from the registry), authenticated by the
proxy itself (:mod:`pgtenantproxy.protocol.auth`), then lent to one client batch
at a time. While lent, the borrower installs a sink on its endpoint and relays
bytes; while idle in the pool, anything the server sends (a FATAL on shutdown)
is buffered and makes the connection unusable.

The connection remembers which client prepared statements it holds (by the
client's name and the SQL they were prepared with) and which session settings
were applied, so a borrower re-prepares and re-applies only what differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pgtenantproxy.net.connect import open_server, upstream_tls_context
from pgtenantproxy.net.endpoint import Endpoint
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.auth import ClientAuth
from pgtenantproxy.protocol.errors import ProxyError
from pgtenantproxy.protocol.framing import Message, MessageReader
from pgtenantproxy.protocol.messages import (
    TERMINATE,
    Authentication,
    BackendKeyData,
    ErrorFields,
    ParameterStatus,
    Query,
    StartupMessage,
)


@dataclass(frozen=True)
class ServerTarget:
    """A tenant database and the role to log in as (password masked in repr)."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout_ms: int = 10000


class ServerRefusedLogin(ProxyError):
    """The tenant server answered the login with an error."""


class ServerConnection:
    def __init__(self, target: ServerTarget, endpoint: Endpoint) -> None:
        self.target = target
        self.endpoint = endpoint
        self.pid = 0
        self.key = b""
        self.parameters: dict[str, str] = {}
        #: client statement name -> SQL text it was prepared with here
        self.prepared: dict[str, str] = {}
        #: session settings applied here (name -> value)
        self.settings: dict[str, str] = {}
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.broken = False

    @classmethod
    async def open(
        cls, target: ServerTarget, *, application_name: str = "pgtenantproxy"
    ) -> ServerConnection:
        tls = upstream_tls_context(target)
        endpoint = await open_server(target, tls, name=f"tenant {target.database}")
        conn = cls(target, endpoint)
        try:
            await conn._login(application_name)
        except BaseException:
            endpoint.abort()
            raise
        return conn

    async def _login(self, application_name: str) -> None:
        params = {
            "user": self.target.user,
            "database": self.target.database,
            "application_name": application_name,
        }
        self.endpoint.write(StartupMessage.build(params))
        auth = ClientAuth(self.target.user, self.target.password)
        reader = MessageReader()
        while True:
            msg = await self._next(reader)
            if msg.type == c.AUTHENTICATION:
                answer = auth.respond(Authentication.parse(msg.body))
                if answer is not None:
                    self.endpoint.write(answer)
            elif msg.type == c.ERROR_RESPONSE:
                err = ErrorFields.parse(msg.body)
                raise ServerRefusedLogin(
                    err.sqlstate or "08006", f"pgtenantproxy: tenant login failed: {err.message}"
                )
            elif msg.type == c.PARAMETER_STATUS:
                ps = ParameterStatus.parse(msg.body)
                self.parameters[ps.name] = ps.value
            elif msg.type == c.BACKEND_KEY_DATA:
                key = BackendKeyData.parse(msg.body)
                self.pid, self.key = key.pid, key.key
            elif msg.type == c.READY_FOR_QUERY:
                return

    async def _next(self, reader: MessageReader) -> Message:
        while True:
            msg = reader.next_message()
            if msg is not None:
                return msg
            reader.feed(await self.endpoint.receive())

    async def ping(self) -> None:
        """An empty query round trip: proves the connection still works."""
        self.endpoint.write(Query("").build())
        reader = MessageReader()
        while True:
            msg = await self._next(reader)
            if msg.type == c.ERROR_RESPONSE:
                raise ProxyError(ErrorFields.parse(msg.body).sqlstate or "08006", "health check failed")
            if msg.type == c.READY_FOR_QUERY:
                if msg.body != b"I":
                    raise ProxyError("08006", "health check: connection not idle")
                self.last_used = time.monotonic()
                return

    @property
    def usable(self) -> bool:
        return not self.broken and self.endpoint.is_open and not self.endpoint.has_buffered

    def close(self) -> None:
        if self.endpoint.is_open:
            self.endpoint.write(TERMINATE)
        self.endpoint.close()

    def __repr__(self) -> str:
        t = self.target
        return f"ServerConnection({t.database}@{t.host}:{t.port}, pid={self.pid})"
