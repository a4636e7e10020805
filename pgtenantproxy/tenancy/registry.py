"""ConnectionRegistry: where each shop's database lives and how to log in to it.

Rows live in ``pgtenantproxy.tenant_credentials`` on the unified database. The
password and the connection string are sealed with AES-256-GCM (see
:mod:`~pgtenantproxy.tenancy.crypto`), bound to the shop id; host, port,
database and role name are plain (they are not secrets, and operators query
them). Nothing in this module writes a plaintext password anywhere but into a
:class:`TenantCredentials` in memory, whose repr masks it.

Reads are cached in memory for ``[tenancy] credential_cache_ttl_s``; a miss
loads the row once even when many tasks ask at the same moment, and stamps
``last_used_at``. When a cached password stops working (the password was
rotated by another process), callers :meth:`~ConnectionRegistry.invalidate` and
ask again: :func:`connect_tenant` does exactly that, which is how a password
rotation causes no failed query.

Password rotation (:meth:`ConnectionRegistry.rotate_password`): lock the row,
write the new sealed password, ``ALTER ROLE`` on the tenant server, commit. If
the ALTER fails the row is rolled back; if the commit fails the role gets its
old password back. Established connections are not affected by ALTER ROLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg

from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.tenancy.crypto import Keyring, Sealed
from pgtenantproxy.tenancy.errors import UnknownTenantError
from pgtenantproxy.tenancy.passwords import alter_role_password_sql, generate_password
from pgtenantproxy.tenancy.servers import TenantServer

logger = logging.getLogger(__name__)

PASSWORD = "password"
DSN = "dsn"
_SELECT = "shop_id, server, host, port, database_name, username, key_id, password_enc"


@dataclass(frozen=True)
class TenantCredentials:
    """How to reach one shop's database as its own role. The repr masks the password."""

    shop_id: int
    server: str
    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"TenantCredentials(shop_id={self.shop_id}, server={self.server!r}, host={self.host!r}, "
            f"port={self.port}, database={self.database!r}, user={self.user!r}, password='***')"
        )

    def dsn(self) -> str:
        """A ``postgresql://`` URL (holds the password: never log it)."""
        q = urllib.parse.quote
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{q(self.user, safe='')}:{q(self.password, safe='')}@{host}:{self.port}/" + q(
            self.database, safe=""
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg.connect / psycopg.connect keyword arguments (hold the password)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
        }


@dataclass
class _Cached:
    creds: TenantCredentials
    expires_at: float


class ConnectionRegistry:
    """Encrypted tenant credentials in the control schema, with a TTL cache in front."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: Keyring,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.keyring = keyring
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[int, _Cached] = {}
        self._loading: dict[int, asyncio.Future[TenantCredentials]] = {}  # loads in flight

    # --- writing ----------------------------------------------------------
    async def register(self, creds: TenantCredentials, *, conn: asyncpg.Connection | None = None) -> None:
        """Insert or replace the shop's row (sealed with the primary key)."""
        pw, dsn = self._seal(creds)
        await (conn or self._pool).execute(
            "INSERT INTO pgtenantproxy.tenant_credentials AS c (shop_id, server, host, port, database_name,"
            " username, key_id, password_enc, dsn_enc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (shop_id) DO UPDATE SET server = excluded.server, host = excluded.host,"
            " port = excluded.port, database_name = excluded.database_name, username = excluded.username,"
            " key_id = excluded.key_id, password_enc = excluded.password_enc, dsn_enc = excluded.dsn_enc,"
            " active = true, updated_at = now()",
            creds.shop_id, creds.server, creds.host, creds.port, creds.database, creds.user,
            pw.key_id, pw.blob, dsn.blob,
        )
        self._cache.pop(creds.shop_id, None)

    async def remove(self, shop_id: int, *, conn: asyncpg.Connection | None = None) -> bool:
        """Forget the shop's credentials; True when there was a row."""
        self._cache.pop(shop_id, None)
        status = await (conn or self._pool).execute(
            "DELETE FROM pgtenantproxy.tenant_credentials WHERE shop_id = $1", shop_id
        )
        return bool(status != "DELETE 0")

    def _seal(self, creds: TenantCredentials) -> tuple[Sealed, Sealed]:
        pw = self.keyring.seal(creds.password, shop_id=creds.shop_id, purpose=PASSWORD)
        dsn = self.keyring.seal(creds.dsn(), shop_id=creds.shop_id, purpose=DSN)
        return pw, dsn

    # --- reading ----------------------------------------------------------
    async def get(self, shop_id: int) -> TenantCredentials:
        """The shop's credentials (cached up to ``ttl_s``); UnknownTenantError if none."""
        cached = self._cache.get(shop_id)
        if cached is not None and cached.expires_at > self._clock():
            return cached.creds
        task = self._loading.get(shop_id)
        if task is None:
            # One load per shop, in its own task: a caller that is cancelled does not
            # cancel the load the other callers wait for.
            task = asyncio.ensure_future(self._load(shop_id))
            self._loading[shop_id] = task
            task.add_done_callback(lambda t: self._loaded(shop_id, t))
        return await asyncio.shield(task)

    def _loaded(self, shop_id: int, task: asyncio.Future[TenantCredentials]) -> None:
        if self._loading.get(shop_id) is task:
            del self._loading[shop_id]
        if task.cancelled() or task.exception() is not None:  # exception(): marks it retrieved
            return
        self._cache[shop_id] = _Cached(task.result(), self._clock() + self.ttl_s)

    async def refresh(self, shop_id: int, *, conn: asyncpg.Connection | None = None) -> TenantCredentials:
        """Drop the cached entry and load the row again (on ``conn`` when given: a caller that holds a
        connection of a small pool must not wait for a second one)."""
        self.invalidate(shop_id)
        if conn is None:
            return await self.get(shop_id)
        creds = await self._load(shop_id, conn)
        self._cache[shop_id] = _Cached(creds, self._clock() + self.ttl_s)
        return creds

    def invalidate(self, shop_id: int | None = None) -> None:
        if shop_id is None:
            self._cache.clear()
        else:
            self._cache.pop(shop_id, None)

    async def _load(self, shop_id: int, conn: asyncpg.Connection | None = None) -> TenantCredentials:
        row = await (conn or self._pool).fetchrow(
            "UPDATE pgtenantproxy.tenant_credentials SET last_used_at = now()"
            f" WHERE shop_id = $1 AND active RETURNING {_SELECT}",
            shop_id,
        )
        if row is None:
            raise UnknownTenantError(shop_id)
        return self._decode(row)

    def _decode(self, row: asyncpg.Record) -> TenantCredentials:
        shop_id = int(row["shop_id"])
        sealed = Sealed(row["key_id"], row["password_enc"])
        password = self.keyring.open(sealed, shop_id=shop_id, purpose=PASSWORD)
        return TenantCredentials(
            shop_id=shop_id, server=row["server"], host=row["host"], port=row["port"],
            database=row["database_name"], user=row["username"], password=password,
        )

    async def shop_ids(self) -> list[int]:
        rows = await self._pool.fetch(
            "SELECT shop_id FROM pgtenantproxy.tenant_credentials WHERE active ORDER BY shop_id"
        )
        return [int(r["shop_id"]) for r in rows]

    # --- rotation ---------------------------------------------------------
    async def rotate_key(self, *, batch: int = 200) -> int:
        """Re-seal every row not sealed with the primary key; returns how many were re-sealed."""
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT {_SELECT} FROM pgtenantproxy.tenant_credentials WHERE key_id <> $1"
                    " ORDER BY shop_id LIMIT $2 FOR UPDATE",
                    self.keyring.primary_id, batch,
                )
                if not rows:
                    break
                updates = []
                for row in rows:
                    pw, dsn = self._seal(self._decode(row))
                    updates.append((row["shop_id"], pw.key_id, pw.blob, dsn.blob))
                await conn.executemany(
                    "UPDATE pgtenantproxy.tenant_credentials SET key_id = $2, password_enc = $3,"
                    " dsn_enc = $4, updated_at = now() WHERE shop_id = $1",
                    updates,
                )
                await audit(conn, shop_id=None, action="rotate-key", status="done",
                            detail=f"{len(rows)} rows re-sealed with key {self.keyring.primary_id}")
            total += len(rows)
        return total

    async def rotate_password(self, shop_id: int, server: TenantServer) -> TenantCredentials:
        """Give the shop's role a new random password and record it, atomically enough."""
        old = await self.refresh(shop_id)
        new = replace(old, password=generate_password())
        async with self._pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(
                    "SELECT 1 FROM pgtenantproxy.tenant_credentials WHERE shop_id = $1 FOR UPDATE", shop_id
                )
                await self.register(new, conn=conn)
                await conn.execute(
                    "UPDATE pgtenantproxy.tenant_credentials SET password_rotated_at = now()"
                    " WHERE shop_id = $1",
                    shop_id,
                )
                await audit(conn, shop_id=shop_id, action="rotate-password", status="done")
                await _alter_password(server, old.user, new.password)
            except BaseException:
                await tx.rollback()
                raise
            try:
                await tx.commit()
            except BaseException:
                logger.error("shop %s: registry commit failed after ALTER ROLE; restoring the old password",
                             shop_id)
                await _alter_password(server, old.user, old.password)
                raise
        self._cache[shop_id] = _Cached(new, self._clock() + self.ttl_s)
        return new


async def _alter_password(server: TenantServer, role: str, password: str) -> None:
    admin = await server.connect()
    try:
        await admin.execute(alter_role_password_sql(role, password))
    finally:
        await admin.close()


async def connect_tenant(
    registry: ConnectionRegistry, shop_id: int, *, timeout: float = 10.0, **kwargs: Any
) -> asyncpg.Connection:
    """Connect as the shop's role; on a rejected password, reload the credentials and retry.

    A rejected password means the cached one is stale (rotated meanwhile); the
    retry loop runs until ``timeout`` so that it also bridges the instant between
    ``ALTER ROLE`` and the registry commit.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    creds = await registry.get(shop_id)
    while True:
        try:
            return await asyncpg.connect(**creds.connect_kwargs(), **kwargs)
        except asyncpg.InvalidPasswordError:
            if time.monotonic() + delay > deadline:
                raise
            logger.debug("shop %s: password rejected, reloading credentials", shop_id)
        stale = creds
        creds = await registry.refresh(shop_id)
        if creds.password == stale.password:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
