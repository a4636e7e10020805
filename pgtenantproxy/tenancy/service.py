"""TenancyService: the control plane's one entry point for the CLI, the proxy and the admin API.

``async with await TenancyService.open(config) as svc:`` opens the control-plane
pool on unified, creates or upgrades the control schema, and loads the
encryption keyring (required for anything that touches credentials; a missing
or malformed key is reported here, at startup, with the variable's name).
Every operation re-reads what it depends on from unified (the tenant schema
is introspected afresh for each provisioning run), so a long-lived process
never provisions from a stale picture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.sqltext import QualifiedName, ident
from pgtenantproxy.tenancy import hardening
from pgtenantproxy.tenancy.control_schema import ensure_control_schema
from pgtenantproxy.tenancy.crypto import EncryptionKeyError, Keyring
from pgtenantproxy.tenancy.errors import TenancyError
from pgtenantproxy.tenancy.provisioning import Provisioner, ProvisionOutcome, TenantTemplate
from pgtenantproxy.tenancy.registry import ConnectionRegistry, TenantCredentials
from pgtenantproxy.tenancy.schema_clone import discover_tenant_tables, read_clone_spec
from pgtenantproxy.tenancy.schema_migrations import (
    MigrationReport,
    SchemaMigrator,
    TenantResult,
    load_migrations,
)
from pgtenantproxy.tenancy.servers import ServerDirectory, unified_pool
from pgtenantproxy.tenancy.tenant_objects import database_options


@dataclass(frozen=True)
class TenantStatus:
    """One row of ``pgtenantproxy tenants``."""

    shop_id: int
    state: str
    server: str | None
    database: str
    role: str
    schema_version: int
    step: str | None
    error: str | None
    updated_at: datetime
    key_id: str | None


class TenancyService:
    def __init__(self, config: Config, pool: asyncpg.Pool, keyring: Keyring | None) -> None:
        self.config = config
        self.pool = pool
        self.keyring = keyring
        self.servers = ServerDirectory(config.tenant_servers)
        self._registry = (
            ConnectionRegistry(pool, keyring, ttl_s=config.tenancy.credential_cache_ttl_s)
            if keyring is not None
            else None
        )

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        need_key: bool = True,
        environ: Mapping[str, str] | None = None,
        pool_size: int | None = None,
    ) -> TenancyService:
        keyring = load_keyring(config, environ, required=need_key)
        size = pool_size or config.tenancy.provision_concurrency * 2 + 2
        pool = await unified_pool(config, max_size=size)
        try:
            async with pool.acquire() as conn:
                await ensure_control_schema(conn)
        except BaseException:
            await pool.close()
            raise
        return cls(config, pool, keyring)

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> TenancyService:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def registry(self) -> ConnectionRegistry:
        if self._registry is None:
            raise EncryptionKeyError(f"{self.config.tenancy.encryption_key_env} is not set")
        return self._registry

    async def credentials(self, shop_id: int) -> TenantCredentials:
        """The shop's decrypted credentials (for the routing layer's tenant pools)."""
        return await self.registry.get(shop_id)

    # --- provisioning -------------------------------------------------------
    async def tenant_tables(self) -> list[QualifiedName]:
        async with self.pool.acquire() as conn:
            return await discover_tenant_tables(conn, self.config.tenancy)

    async def template(self) -> TenantTemplate:
        async with self.pool.acquire() as conn:
            spec = await read_clone_spec(conn, self.config.tenancy)
            return TenantTemplate(spec, await database_options(conn))

    async def provisioner(self) -> Provisioner:
        return Provisioner(
            pool=self.pool, registry=self.registry, servers=self.servers,
            tenancy=self.config.tenancy, template=await self.template(),
        )

    async def provision(self, shop_id: int, *, fail_at: str | None = None) -> ProvisionOutcome:
        return await (await self.provisioner()).provision(shop_id, fail_at=fail_at)

    async def provision_many(
        self,
        shop_ids: Sequence[int],
        *,
        concurrency: int | None = None,
        on_done: Callable[[ProvisionOutcome], None] | None = None,
    ) -> list[ProvisionOutcome]:
        provisioner = await self.provisioner()
        limit = concurrency or self.config.tenancy.provision_concurrency
        return await provisioner.provision_many(shop_ids, concurrency=limit, on_done=on_done)

    async def deprovision(self, shop_id: int) -> bool:
        return await (await self.provisioner()).deprovision(shop_id)

    async def all_shop_ids(self) -> list[int]:
        """Every shop id, by ``[tenancy] shops_query`` (auto: distinct tenant column values)."""
        query = self.config.tenancy.shops_query
        if query == "auto":
            col = ident(self.config.tenancy.tenant_column)
            query = " UNION ".join(
                f"SELECT {col} FROM {t.sql} WHERE {col} IS NOT NULL" for t in await self.tenant_tables()
            ) + " ORDER BY 1"
        try:
            rows = await self.pool.fetch(query)
        except asyncpg.PostgresError as exc:
            raise TenancyError(f"[tenancy] shops_query failed: {exc}") from None
        return [int(r[0]) for r in rows]

    # --- tenant schema, security, keys --------------------------------------
    async def migrate_schema(
        self,
        directory: str | Path,
        *,
        concurrency: int | None = None,
        shop_ids: Sequence[int] | None = None,
        on_done: Callable[[TenantResult], None] | None = None,
    ) -> MigrationReport:
        migrations = load_migrations(directory)
        migrator = SchemaMigrator(
            self.pool, self.servers, concurrency=concurrency or self.config.tenancy.provision_concurrency
        )
        return await migrator.migrate(migrations, shop_ids=shop_ids, on_done=on_done)

    async def harden(self) -> hardening.HardenReport:
        tables = await self.tenant_tables()
        async with self.pool.acquire() as conn:
            return await hardening.harden(conn, tables, self.config.tenancy.tenant_column)

    async def rotate_key(self) -> int:
        return await self.registry.rotate_key()

    async def rotate_password(self, shop_id: int) -> None:
        creds = await self.registry.refresh(shop_id)
        await self.registry.rotate_password(shop_id, self.servers.get(creds.server))

    async def tenants(self) -> list[TenantStatus]:
        rows = await self.pool.fetch(
            "SELECT p.shop_id, p.state, p.server, p.database_name, p.role_name, p.schema_version, p.step,"
            " p.error, p.updated_at, c.key_id FROM pgtenantproxy.tenant_provisions p"
            " LEFT JOIN pgtenantproxy.tenant_credentials c USING (shop_id) ORDER BY p.shop_id"
        )
        return [
            TenantStatus(int(r["shop_id"]), r["state"], r["server"], r["database_name"], r["role_name"],
                         r["schema_version"], r["step"], r["error"], r["updated_at"], r["key_id"])
            for r in rows
        ]


def load_keyring(config: Config, environ: Mapping[str, str] | None, *, required: bool) -> Keyring | None:
    """The keyring from the environment; None when absent and not required. A malformed key always fails."""
    env = os.environ if environ is None else environ
    if not env.get(config.tenancy.encryption_key_env) and not required:
        return None
    return Keyring.from_env(config.tenancy.encryption_key_env, config.tenancy.previous_keys_env, env)
