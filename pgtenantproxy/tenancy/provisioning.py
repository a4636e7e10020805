"""Provisioning and deprovisioning shop databases: recorded step by step, undone on failure.

One provision of shop N, under the session advisory lock ``(SHOP_LOCK, N)`` on
unified (so two concurrent provisions of the same shop run one after the other;
the second finds the shop provisioned and does nothing):

``place`` (pick a tenant server, claim it in ``tenant_provisions`` under the
placement lock) -> ``create_role`` (random password, sent as a SCRAM verifier)
-> ``create_database`` (unified's encoding and locale, ``REVOKE ALL ... FROM
PUBLIC``, ``GRANT CONNECT`` to the role) -> ``create_schema`` (the clone, one
transaction) -> ``grant`` -> ``register`` (sealed credentials) -> ``verify``
(log in as the shop role with the credentials read back from the registry).

``tenant_provisions.step`` says which step is running; ``migration_log`` gets a
row per finished step. On any exception, what this attempt created is removed
in reverse order, and the row says ``failed`` with the step and the reason. A
run interrupted harder than that (process killed) leaves the row in
``provisioning``; the next run clears what the earlier one left (only objects
that carry the shop's marker, see :mod:`~pgtenantproxy.tenancy.tenant_objects`)
and starts over. ``fail_at`` (tests) raises :class:`InjectedFailure` right after
the named step did its work, through the same path as a real failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from pgtenantproxy.config import TenancySection
from pgtenantproxy.lifecycle import phases
from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.lifecycle.errors import IllegalTransition
from pgtenantproxy.lifecycle.store import read_phase, transition
from pgtenantproxy.tenancy import tenant_objects as objects
from pgtenantproxy.tenancy.control_schema import (
    CONTROL_LOCK,
    DEPROVISIONED,
    FAILED,
    PLACEMENT_LOCK_ID,
    PROVISIONED,
    PROVISIONING,
    SHOP_LOCK,
    shop_lock_key,
)
from pgtenantproxy.tenancy.errors import InjectedFailure, PlacementError, ProvisioningError, describe
from pgtenantproxy.tenancy.passwords import generate_password
from pgtenantproxy.tenancy.registry import ConnectionRegistry, TenantCredentials
from pgtenantproxy.tenancy.schema_model import CloneSpec
from pgtenantproxy.tenancy.servers import ServerDirectory, TenantServer, asyncpg_ssl, choose_server

logger = logging.getLogger(__name__)

STEPS = ("place", "create_role", "create_database", "create_schema", "grant", "register", "verify")
ALREADY = "already"  # outcome of a provision that found the shop provisioned

@dataclass(frozen=True)
class TenantTemplate:
    """What every new shop database is made from (read from unified once per run)."""

    spec: CloneSpec
    database_options: str


@dataclass(frozen=True)
class ProvisionOutcome:
    shop_id: int
    status: str  # "provisioned" | "already" | "failed"
    server: str | None = None
    database: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass
class _Attempt:
    shop_id: int
    database: str
    role: str
    password: str = field(repr=False)
    step: str = "start"
    server: TenantServer | None = None
    admin: asyncpg.Connection | None = None
    tenant_db: asyncpg.Connection | None = None
    schema_version: int = 0
    created: list[str] = field(default_factory=list)

    async def close(self) -> None:
        for conn in (self.tenant_db, self.admin):
            if conn is not None and not conn.is_closed():
                await conn.close()
        self.tenant_db = self.admin = None


class Provisioner:
    """Creates and removes shop databases; every call is idempotent."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        registry: ConnectionRegistry,
        servers: ServerDirectory,
        tenancy: TenancySection,
        template: TenantTemplate,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.servers = servers
        self.tenancy = tenancy
        self.template = template

    def names(self, shop_id: int) -> tuple[str, str]:
        """(database, role) of a shop, from the config templates."""
        sid = str(int(shop_id))
        return (
            self.tenancy.database_name.replace("{shop_id}", sid),
            self.tenancy.role_name.replace("{shop_id}", sid),
        )

    @asynccontextmanager
    async def _shop_lock(self, shop_id: int) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1, $2)", SHOP_LOCK, shop_lock_key(shop_id))
            try:
                yield conn
            finally:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", SHOP_LOCK, shop_lock_key(shop_id))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    # The session is gone or unusable: its locks went with it (or go when the
                    # pool resets or closes it). Do not hide the error that brought us here.
                    logger.warning("shop %s: releasing the provisioning lock failed: %s", shop_id, exc)

    async def provision(self, shop_id: int, *, fail_at: str | None = None) -> ProvisionOutcome:
        """Provision one shop (a no-op when it is provisioned already)."""
        if fail_at is not None and fail_at not in STEPS:
            raise ValueError(f"fail_at must be one of {', '.join(STEPS)}")
        started = time.monotonic()
        database, role = self.names(shop_id)
        async with self._shop_lock(shop_id) as conn:
            row = await _state_row(conn, shop_id)
            if row is not None and row["state"] == PROVISIONED:
                return ProvisionOutcome(shop_id, ALREADY, row["server"], row["database_name"],
                                        seconds=time.monotonic() - started)
            attempt = _Attempt(shop_id, database, role, generate_password())
            try:
                if row is not None and row["state"] in (FAILED, PROVISIONING):
                    attempt.step = "cleanup"
                    await self._clear_leftovers(conn, row)
                await self._run(conn, attempt, fail_at)
            except Exception as exc:  # every failure is recorded and undone
                error = await self._fail(conn, attempt, exc)
                return ProvisionOutcome(shop_id, FAILED, _name(attempt.server), database, error,
                                        time.monotonic() - started)
            finally:
                await attempt.close()
        return ProvisionOutcome(shop_id, PROVISIONED, _name(attempt.server), database,
                                seconds=time.monotonic() - started)

    async def provision_many(
        self,
        shop_ids: Sequence[int],
        *,
        concurrency: int,
        on_done: Callable[[ProvisionOutcome], None] | None = None,
    ) -> list[ProvisionOutcome]:
        """Provision shops in parallel, at most ``concurrency`` at a time; never raises per shop."""
        gate = asyncio.Semaphore(concurrency)

        async def one(shop_id: int) -> ProvisionOutcome:
            async with gate:
                started = time.monotonic()
                try:
                    outcome = await self.provision(shop_id)
                except Exception as exc:  # e.g. unified unreachable: reported for this shop
                    outcome = ProvisionOutcome(shop_id, FAILED, error=describe(exc),
                                               seconds=time.monotonic() - started)
            if on_done is not None:
                on_done(outcome)
            return outcome

        return list(await asyncio.gather(*(one(s) for s in shop_ids)))

    # --- the steps ----------------------------------------------------------
    async def _run(self, conn: asyncpg.Connection, a: _Attempt, fail_at: str | None) -> None:
        for step in STEPS:
            a.step = step
            if step != "place":
                await conn.execute(
                    "UPDATE pgtenantproxy.tenant_provisions SET step = $2, updated_at = now()"
                    " WHERE shop_id = $1",
                    a.shop_id, step,
                )
            await getattr(self, f"_step_{step}")(conn, a)
            await audit(conn, shop_id=a.shop_id, action="provision", step=step, status="done")
            if fail_at == step:
                raise InjectedFailure(step)
        await conn.execute(
            "UPDATE pgtenantproxy.tenant_provisions SET state = $2, step = NULL, error = NULL,"
            " schema_version = $3, provisioned_at = now(), updated_at = now() WHERE shop_id = $1",
            a.shop_id, PROVISIONED, a.schema_version,
        )
        await _move_phase(conn, a.shop_id, phases.PROVISIONED, f"database {a.database} on {_name(a.server)}")
        await audit(conn, shop_id=a.shop_id, action="provision", status=PROVISIONED,
                    detail=f"server {_name(a.server)}, database {a.database}")

    async def _step_place(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", CONTROL_LOCK, PLACEMENT_LOCK_ID)
            rows = await conn.fetch(
                "SELECT server, count(*) AS n FROM pgtenantproxy.tenant_provisions"
                " WHERE state IN ($1, $2) AND server IS NOT NULL AND shop_id <> $3 GROUP BY server",
                PROVISIONING, PROVISIONED, a.shop_id,
            )
            a.server = choose_server(
                self.servers.servers, self.tenancy.placement, a.shop_id, {r["server"]: r["n"] for r in rows}
            )
            await conn.execute(
                "INSERT INTO pgtenantproxy.tenant_provisions AS p (shop_id, state, server, database_name,"
                " role_name, step, attempts) VALUES ($1, $2, $3, $4, $5, 'place', 1)"
                " ON CONFLICT (shop_id) DO UPDATE SET state = excluded.state, server = excluded.server,"
                " database_name = excluded.database_name, role_name = excluded.role_name, step = 'place',"
                " error = NULL, schema_version = 0, attempts = p.attempts + 1, updated_at = now()",
                a.shop_id, PROVISIONING, a.server.name, a.database, a.role,
            )

    async def _step_create_role(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.server is not None
        a.admin = await a.server.connect()
        await objects.create_role(a.admin, a.role, a.password, a.shop_id)
        a.created.append("role")

    async def _step_create_database(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.admin is not None
        await objects.create_database(a.admin, a.database, self.template.database_options)
        a.created.append("database")
        await objects.secure_database(a.admin, a.database, a.role, a.shop_id)

    async def _step_create_schema(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.server is not None
        baseline = [
            (r["version"], r["name"], r["checksum"])
            for r in await conn.fetch("SELECT version, name, checksum FROM pgtenantproxy.tenant_migrations")
        ]
        a.schema_version = max((v for v, _, _ in baseline), default=0)
        a.tenant_db = await a.server.connect(a.database)
        await objects.create_schema(a.tenant_db, self.template.spec, a.shop_id, baseline)

    async def _step_grant(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.tenant_db is not None
        await objects.grant(a.tenant_db, self.template.spec, a.role)

    async def _step_register(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.server is not None
        creds = TenantCredentials(a.shop_id, a.server.name, a.server.host, a.server.port,
                                  a.database, a.role, a.password)
        await self.registry.register(creds, conn=conn)
        a.created.append("registry")

    async def _step_verify(self, conn: asyncpg.Connection, a: _Attempt) -> None:
        assert a.server is not None
        creds = await self.registry.refresh(a.shop_id, conn=conn)  # not a second pool connection
        if creds.password != a.password or creds.database != a.database:
            raise ProvisioningError("verification failed: the registry does not give back what was stored")
        shop = await asyncpg.connect(
            **creds.connect_kwargs(), ssl=asyncpg_ssl(a.server.section),
            timeout=a.server.section.connect_timeout_ms / 1000,
        )
        try:
            await objects.verify(shop, self.template.spec.table_names, a.role, a.database)
        finally:
            await shop.close()

    # --- failure and cleanup ------------------------------------------------
    async def _fail(self, conn: asyncpg.Connection, a: _Attempt, exc: Exception) -> str:
        reason = f"{a.step}: {describe(exc)}"
        problems = await self._undo(conn, a)
        if problems:
            reason += "; cleanup incomplete: " + "; ".join(problems)
        await conn.execute(
            "INSERT INTO pgtenantproxy.tenant_provisions AS p (shop_id, state, server, database_name,"
            " role_name, step, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)"
            " ON CONFLICT (shop_id) DO UPDATE SET state = excluded.state, server = excluded.server,"
            " database_name = excluded.database_name, role_name = excluded.role_name,"
            " step = excluded.step, error = excluded.error, updated_at = now()",
            a.shop_id, FAILED, _name(a.server), a.database, a.role, a.step, reason,
        )
        await _move_phase(conn, a.shop_id, phases.FAILED, f"provisioning failed at {reason}"[:2000])
        await audit(conn, shop_id=a.shop_id, action="provision", step=a.step, status=FAILED, detail=reason)
        logger.warning("shop %s: provisioning failed: %s", a.shop_id, reason)
        return reason

    async def _undo(self, conn: asyncpg.Connection, a: _Attempt) -> list[str]:
        """Remove what this attempt created, newest first; returns what could not be removed."""
        problems: list[str] = []
        if "registry" in a.created:
            try:
                await self.registry.remove(a.shop_id, conn=conn)
            except Exception as exc:
                problems.append(f"registry row: {describe(exc)}")
        if a.tenant_db is not None and not a.tenant_db.is_closed():
            await a.tenant_db.close()
        if a.server is None or not {"database", "role"} & set(a.created):
            return problems
        try:
            admin = a.admin if a.admin is not None and not a.admin.is_closed() else await a.server.connect()
            a.admin = admin
        except Exception as exc:
            return [*problems, f"tenant server {a.server.name} unreachable: {describe(exc)}"]
        if "database" in a.created:
            try:
                await objects.drop_database(admin, a.database, None)
            except Exception as exc:
                problems.append(f"database {a.database}: {describe(exc)}")
        if "role" in a.created:
            try:
                await objects.drop_role(admin, a.role, None)
            except Exception as exc:
                problems.append(f"role {a.role}: {describe(exc)}")
        return problems

    async def _clear_leftovers(
        self, conn: asyncpg.Connection, row: asyncpg.Record, *, strict: bool = False
    ) -> None:
        """Remove the shop's marked database and role and its registry row.

        Used for what an earlier, interrupted or failed attempt may have left
        behind, and (``strict``: the recorded server must still be configured)
        to deprovision.
        """
        shop_id = int(row["shop_id"])
        await self.registry.remove(shop_id, conn=conn)
        if row["server"] is None:
            return
        try:
            server = self.servers.get(row["server"])
        except PlacementError:
            if strict:
                raise
            logger.warning("shop %s: earlier attempt used server %s, no longer configured; not cleaned",
                           shop_id, row["server"])
            return
        admin = await server.connect()
        try:
            dropped_db = await objects.drop_database(admin, row["database_name"], shop_id)
            dropped_role = await objects.drop_role(admin, row["role_name"], shop_id)
        finally:
            await admin.close()
        if dropped_db or dropped_role:
            await audit(conn, shop_id=shop_id, action="provision", step="cleanup", status="done",
                        detail=f"removed leftovers of an earlier attempt on {server.name}")

    # --- deprovisioning -----------------------------------------------------
    async def deprovision(self, shop_id: int) -> bool:
        """Drop the shop's database and role and forget its credentials; False if there was nothing."""
        async with self._shop_lock(shop_id) as conn:
            row = await _state_row(conn, shop_id)
            if row is None or row["state"] == DEPROVISIONED:
                return False
            try:
                phases.check(await _read_phase(conn, shop_id), phases.UNIFIED)
            except IllegalTransition as exc:
                raise ProvisioningError(f"refusing to deprovision: {exc}") from None
            try:
                await self._clear_leftovers(conn, row, strict=True)
            except Exception as exc:
                reason = f"deprovision: {describe(exc)}"
                await conn.execute(
                    "UPDATE pgtenantproxy.tenant_provisions SET state = $2, step = 'deprovision', error = $3,"
                    " updated_at = now() WHERE shop_id = $1",
                    shop_id, FAILED, reason,
                )
                await audit(conn, shop_id=shop_id, action="deprovision", status=FAILED, detail=reason)
                raise ProvisioningError(f"shop {shop_id}: {reason}") from exc
            await conn.execute(
                "UPDATE pgtenantproxy.tenant_provisions SET state = $2, step = NULL, error = NULL,"
                " schema_version = 0, updated_at = now() WHERE shop_id = $1",
                shop_id, DEPROVISIONED,
            )
            await _move_phase(conn, shop_id, phases.UNIFIED, "deprovisioned")
            await audit(conn, shop_id=shop_id, action="deprovision", status=DEPROVISIONED,
                        detail=f"dropped {row['database_name']} and {row['role_name']} on {row['server']}")
        return True


async def _move_phase(conn: asyncpg.Connection, shop_id: int, target: str, reason: str) -> None:
    """Record the shop's phase after a provisioning step (already there: nothing to do)."""
    if (await _read_phase(conn, shop_id)).phase != target:
        await transition(conn, shop_id, target, reason=reason, action="phase")


async def _read_phase(conn: asyncpg.Connection, shop_id: int) -> phases.ShopPhase:
    return await read_phase(conn, shop_id)


async def _state_row(conn: asyncpg.Connection, shop_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT shop_id, state, server, database_name, role_name FROM pgtenantproxy.tenant_provisions"
        " WHERE shop_id = $1",
        shop_id,
    )


def _name(server: TenantServer | None) -> str | None:
    return server.name if server is not None else None
