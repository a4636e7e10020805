"""The write-mirroring test bed: a unified cluster, a tenant server, 20 provisioned shops.

:func:`make_bed` starts both clusters (the tenant server keeps commit
timestamps, for the applications ledger), loads ``schema.sql`` into the
unified database ``shopdb`` and provisions shops 1-20 with the tenancy control
plane (their tenant databases are clones of that schema). :meth:`MirrorBed.reset`
brings every test module back to the same start: capture on, seed rows
(``seed.sql``) written through capture and mirrored, nothing queued, nothing
degraded. The application role ``app_user`` is an ordinary role: capture must
work without it having any right on the control schema.

Passwords and the tenant encryption key live in test-only environment
variables (see :data:`ENV`), which the configs built here name.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.embedded import PgCluster, create_cluster
from pgtenantproxy.lifecycle.phases import MIRRORING
from pgtenantproxy.lifecycle.store import force_phase
from pgtenantproxy.tenancy.service import TenancyService
from tests.fixtures.tenancy import toml_value

HERE = Path(__file__).parent
DATABASE = "shopdb"
SHOPS = tuple(range(1, 21))
APP_USER = "app_user"
#: Tables whose rows belong to shops, with their key (for row-by-row comparison).
TABLES = {
    "branches": "id",
    "tellers": "id",
    "accounts": "id",
    "history": "id",
    "account_tags": "account_id, tag",
    "categories": "id",
}
ENV = {
    "unified": "PGTP_TEST_DW_UNIFIED_PASSWORD",
    "t1": "PGTP_TEST_DW_T1_PASSWORD",
    "key": "PGTP_TEST_DW_TENANT_KEY",
}
#: Short retry delays so dead-lettering takes about a second in tests.
FAST_RETRIES = {"retry_attempts": 3, "retry_backoff_ms": [100, 200, 400], "poll_interval_ms": 50,
                "status_interval_ms": 50}


@dataclass
class MirrorBed:
    unified: PgCluster
    tenant: PgCluster
    app_password: str = field(repr=False)
    key_hex: str = field(repr=False)

    def environ(self) -> dict[str, str]:
        return {ENV["unified"]: self.unified.password, ENV["t1"]: self.tenant.password,
                ENV["key"]: self.key_hex}

    def config_data(self, **sections: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "unified": {"host": self.unified.host, "port": self.unified.port, "database": DATABASE,
                        "sslmode": "disable", "admin_user": self.unified.superuser,
                        "admin_password_env": ENV["unified"]},
            "tenancy": {"encryption_key_env": ENV["key"],
                        "shops_query": "SELECT id FROM generate_series(1, 20) id"},
            "tenant_servers": [{"name": "t1", "host": self.tenant.host, "port": self.tenant.port,
                                "admin_user": self.tenant.superuser, "admin_password_env": ENV["t1"],
                                "sslmode": "disable"}],
            "dual_write": dict(FAST_RETRIES),
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return data

    def config(self, **sections: dict[str, Any]) -> Config:
        return parse_config(self.config_data(**sections), environ={})

    def write_config(self, path: Path, **sections: dict[str, Any]) -> Path:
        lines: list[str] = []
        for name, table in self.config_data(**sections).items():
            for entry in table if isinstance(table, list) else [table]:
                lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- connections ---------------------------------------------------------
    async def unified_admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.unified.connect_kwargs(database=DATABASE))

    async def app(self, port: int | None = None) -> asyncpg.Connection:
        """The application's connection (directly, or to a proxy on ``port``)."""
        kwargs = self.unified.connect_kwargs(user=APP_USER, password=self.app_password, database=DATABASE)
        if port is not None:
            kwargs["port"] = port
        return await asyncpg.connect(**kwargs)

    async def shop_admin(self, shop_id: int) -> asyncpg.Connection:
        """The tenant server's admin on the shop's database."""
        return await asyncpg.connect(**self.tenant.connect_kwargs(database=f"shop_{shop_id}_db"))

    def pgbench_env(self, port: int | None = None) -> dict[str, str]:
        env = self.unified.env(user=APP_USER, password=self.app_password)
        if port is not None:
            env["PGPORT"] = str(port)
        return env

    # --- state -----------------------------------------------------------------
    async def reset(self) -> None:
        """Capture on, seed rows mirrored to every shop (phase ``mirroring``), nothing queued or degraded."""
        svc = await DualWriteService.open(self.config(), run_worker=True)
        try:
            await svc.disable()
            conn = await self.unified_admin()
            try:
                tables = ", ".join(TABLES)
                await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
                await conn.execute(
                    "TRUNCATE pgtenantproxy.outbox, pgtenantproxy.dead_letters, pgtenantproxy.mirror_state"
                )
                for shop in SHOPS:  # both sides empty, hence identical: the mirror keeps them so
                    await force_phase(conn, shop, MIRRORING, reason="test bed: empty on both sides")
            finally:
                await conn.close()
            await asyncio.gather(*(self._truncate_tenant(s) for s in SHOPS))
            await svc.enable()
            await self.psql_file(HERE / "seed.sql")
            await svc.start()
            assert await svc.wait_drained(timeout_s=60), "the seed rows were not mirrored"
        finally:
            await svc.close()

    async def _truncate_tenant(self, shop_id: int) -> None:
        conn = await self.shop_admin(shop_id)
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()

    async def psql_file(self, path: Path, *, dbname: str = DATABASE) -> None:
        await asyncio.to_thread(_psql_file, self.unified, path, dbname)

    def destroy(self) -> None:
        for cluster in (self.unified, self.tenant):
            cluster.destroy()


def _psql_file(cluster: PgCluster, path: Path, dbname: str) -> None:
    result = subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", str(path)],
        env=cluster.env(), capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{path.name}: {result.stderr}")


async def make_bed() -> MirrorBed:
    clusters: list[PgCluster] = []
    try:
        clusters.append(create_cluster())
        clusters.append(create_cluster(settings={"track_commit_timestamp": "on"}))
        bed = MirrorBed(clusters[0], clusters[1], secrets.token_urlsafe(16), secrets.token_hex(32))
        os.environ.update(bed.environ())
        admin = await asyncpg.connect(**bed.unified.connect_kwargs())
        try:
            await admin.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{bed.app_password}'")
            await admin.execute(f"CREATE DATABASE {DATABASE}")
        finally:
            await admin.close()
        await bed.psql_file(HERE / "schema.sql")
        async with await TenancyService.open(bed.config()) as tenancy:
            outcomes = await tenancy.provision_many(SHOPS, concurrency=4)
        failed = [o for o in outcomes if not o.ok]
        assert not failed, failed
        return bed
    except BaseException:
        for cluster in clusters:
            cluster.destroy()
        raise


# --- checks --------------------------------------------------------------------------
async def shop_rows(conn: asyncpg.Connection, table: str, shop_id: int) -> list[str]:
    rows = await conn.fetch(
        f"SELECT to_jsonb(t)::text AS r FROM {table} t WHERE shop_id = $1 ORDER BY {TABLES[table]}", shop_id
    )
    return [r["r"] for r in rows]


async def differences(bed: MirrorBed, shops: tuple[int, ...] = SHOPS) -> dict[tuple[int, str], str]:
    """Every (shop, table) whose tenant rows differ from unified's rows of that shop, with a summary."""
    found: dict[tuple[int, str], str] = {}
    unified = await bed.unified_admin()
    try:
        for shop_id in shops:
            tenant = await bed.shop_admin(shop_id)
            try:
                for table in TABLES:
                    want = await shop_rows(unified, table, shop_id)
                    got = await shop_rows(tenant, table, shop_id)
                    if want != got:
                        missing = len(set(want) - set(got))
                        extra = len(set(got) - set(want))
                        found[(shop_id, table)] = (
                            f"{len(want)} rows in unified, {len(got)} in tenant, "
                            f"{missing} missing or different, {extra} extra or different"
                        )
            finally:
                await tenant.close()
    finally:
        await unified.close()
    return found


async def table_count(bed: MirrorBed, table: str) -> int:
    conn = await bed.unified_admin()
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def run_pgbench(bed: MirrorBed, *, seconds: int, clients: int = 3, port: int | None = None,
                      rollback_weight: int = 0, rate: int | None = None) -> str:
    """pgbench with the TPC-B-like script (and the rolled back one), directly or through a proxy."""
    args = [str(bed.unified.bindir / "pgbench"), "-n", "-T", str(seconds), "-c", str(clients), "-j", "1",
            "-M", "prepared", "-f", f"{HERE / 'tpcb.pgbench'}@{10 - rollback_weight}"]
    if rollback_weight:
        args += ["-f", f"{HERE / 'rollback.pgbench'}@{rollback_weight}"]
    if rate:
        args += ["-R", str(rate)]
    proc = await asyncio.create_subprocess_exec(
        *args, DATABASE, env=bed.pgbench_env(port), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "\nnumber of failed transactions: 0 (" in text or "failed" not in text, text
    return text


def mirror_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "pgtenantproxy", "mirror", "--config", str(config_path)]
