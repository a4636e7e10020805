"""Versioned SQL migrations for the tenant databases, applied to every tenant in parallel.

A migration directory holds files named ``<version>_<name>.sql`` (``0001_add_warranty.sql``);
versions are integers, unique, applied in ascending order. The set of migrations
is recorded once in ``pgtenantproxy.tenant_migrations`` on unified with a SHA-256
checksum: a file that changed after it was recorded is refused.

Per tenant, the versions applied live in the tenant database itself
(``pgtenantproxy.schema_migrations``) and each migration runs in one transaction
together with its row there, so a version is recorded if and only if its
changes are. Inside that transaction ``current_setting('pgtenantproxy.shop_id')``
and ``current_setting('pgtenantproxy.tenant_role')`` name the shop and its role,
for migrations that need them (a pin on a new table, say). Migrations run as the
tenant server's admin; default privileges give the shop role what it needs on
new tables and sequences. A migration must not contain transaction control or
``CREATE INDEX CONCURRENTLY``.

A failing tenant stops at the failing migration (its earlier ones stay applied);
the others carry on; the report lists every tenant with what it applied and the
error, if any. ``tenant_provisions.schema_version`` on unified mirrors each
tenant's version for ``pgtenantproxy tenants``. Shops provisioned later are
created from the current unified schema and record every migration known at
that time as a baseline (not re-run), so write migrations that are safe to
meet an already-changed schema (``IF NOT EXISTS``) when in doubt.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from pgtenantproxy.lifecycle.audit import audit
from pgtenantproxy.tenancy.control_schema import PROVISIONED
from pgtenantproxy.tenancy.errors import MigrationError, describe
from pgtenantproxy.tenancy.servers import ServerDirectory

FILE_PATTERN = re.compile(r"^(\d+)_([A-Za-z0-9_.-]+)\.sql$")


@dataclass(frozen=True)
class TenantMigration:
    version: int
    name: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def load_migrations(directory: str | Path) -> list[TenantMigration]:
    """Read and check a migration directory (sorted by version)."""
    path = Path(directory)
    if not path.is_dir():
        raise MigrationError(f"{path}: not a directory")
    found: dict[int, TenantMigration] = {}
    for file in sorted(path.iterdir()):
        if file.suffix != ".sql":
            continue
        match = FILE_PATTERN.match(file.name)
        if match is None:
            raise MigrationError(f"{file.name}: migration files are named <version>_<name>.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{file.name}: version {version} is used by {found[version].label}.sql too")
        found[version] = TenantMigration(version, match.group(2), file.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


@dataclass(frozen=True)
class TenantResult:
    shop_id: int
    server: str
    version: int
    applied: tuple[int, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class MigrationReport:
    results: tuple[TenantResult, ...]

    @property
    def failed(self) -> list[TenantResult]:
        return [r for r in self.results if not r.ok]

    @property
    def applied(self) -> int:
        return sum(len(r.applied) for r in self.results)


class SchemaMigrator:
    """Applies tenant migrations to every provisioned shop database."""

    def __init__(self, pool: asyncpg.Pool, servers: ServerDirectory, *, concurrency: int) -> None:
        self.pool = pool
        self.servers = servers
        self.concurrency = concurrency

    async def record(self, migrations: Sequence[TenantMigration]) -> None:
        """Register the migrations on unified; refuse files changed since they were recorded."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE pgtenantproxy.tenant_migrations IN EXCLUSIVE MODE")
            known = {
                r["version"]: r
                for r in await conn.fetch(
                    "SELECT version, name, checksum FROM pgtenantproxy.tenant_migrations"
                )
            }
            for m in migrations:
                seen = known.get(m.version)
                if seen is not None and seen["checksum"] != m.checksum:
                    raise MigrationError(
                        f"{m.label}.sql changed after version {m.version} was recorded "
                        f"(as {seen['name']}): add a new migration instead of editing an applied one"
                    )
            await conn.executemany(
                "INSERT INTO pgtenantproxy.tenant_migrations (version, name, checksum) VALUES ($1, $2, $3)"
                " ON CONFLICT (version) DO NOTHING",
                [(m.version, m.name, m.checksum) for m in migrations],
            )

    async def migrate(
        self,
        migrations: Sequence[TenantMigration],
        *,
        shop_ids: Sequence[int] | None = None,
        on_done: Callable[[TenantResult], None] | None = None,
    ) -> MigrationReport:
        """Apply what each tenant lacks, ``concurrency`` tenants at a time."""
        await self.record(migrations)
        rows = await self.pool.fetch(
            "SELECT shop_id, server, database_name, role_name FROM pgtenantproxy.tenant_provisions"
            " WHERE state = $1 AND ($2::bigint[] IS NULL OR shop_id = ANY($2)) ORDER BY shop_id",
            PROVISIONED, None if shop_ids is None else list(shop_ids),
        )
        gate = asyncio.Semaphore(self.concurrency)

        async def one(row: asyncpg.Record) -> TenantResult:
            async with gate:
                result = await self._migrate_tenant(row, migrations)
            await self._record_result(result)
            if on_done is not None:
                on_done(result)
            return result

        return MigrationReport(tuple(await asyncio.gather(*(one(r) for r in rows))))

    async def _migrate_tenant(
        self, row: asyncpg.Record, migrations: Sequence[TenantMigration]
    ) -> TenantResult:
        shop_id, server_name = int(row["shop_id"]), row["server"]
        applied: list[int] = []
        done: dict[int, str] = {}
        current = "connect"
        try:
            conn = await self.servers.get(server_name).connect(row["database_name"])
        except Exception as exc:
            return TenantResult(shop_id, server_name, 0, error=f"{current}: {describe(exc)}")
        try:
            rows = await conn.fetch("SELECT version, checksum FROM pgtenantproxy.schema_migrations")
            done = {r["version"]: r["checksum"] for r in rows}
            for m in migrations:
                current = m.label
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(f"applied with another checksum ({m.label}.sql changed since)")
                    continue
                await _apply(conn, m, shop_id, row["role_name"])
                applied.append(m.version)
        except Exception as exc:
            version = max([*done, *applied], default=0)
            return TenantResult(shop_id, server_name, version, tuple(applied), f"{current}: {describe(exc)}")
        finally:
            await conn.close()
        return TenantResult(shop_id, server_name, max([*done, *applied], default=0), tuple(applied))

    async def _record_result(self, result: TenantResult) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE pgtenantproxy.tenant_provisions SET schema_version = $2, updated_at = now()"
                " WHERE shop_id = $1",
                result.shop_id, result.version,
            )
            if result.applied or result.error:
                await audit(
                    conn, shop_id=result.shop_id, action="migrate-schema",
                    status="done" if result.ok else "failed",
                    detail=result.error or f"applied {', '.join(map(str, result.applied))}",
                )


async def _apply(conn: asyncpg.Connection, m: TenantMigration, shop_id: int, role: str) -> None:
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('pgtenantproxy.shop_id', $1, true),"
            " set_config('pgtenantproxy.tenant_role', $2, true)",
            str(shop_id), role,
        )
        await conn.execute(m.sql)
        await conn.execute(
            "INSERT INTO pgtenantproxy.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            m.version, m.name, m.checksum,
        )
