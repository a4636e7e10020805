"""The walkthrough's sandbox: two throwaway clusters, the HandyShop sample, and the proxy's config.

:func:`start_clusters` starts the unified cluster and one tenant server side by
side (:func:`pgtenantproxy.embedded.create_cluster`, each in a directory made
here first, so an interrupted start still leaves nothing behind).
:func:`load_sample` creates the application role and database and loads
``handyshop.sql`` at the requested size. :meth:`Sandbox.config` builds the
proxy's :class:`~pgtenantproxy.config.Config`: routing on with the
``percentage`` strategy at 0, write mirroring in the process (capture off until
the walkthrough turns it on), metrics on a free port, admin API off (the
walkthrough calls the admin actions directly), the retirement archive inside
the unified cluster's throwaway directory (nothing is written to the user's
working directory).

Secrets (both superuser passwords, the application's password, the tenant
encryption key) exist only in this process: in memory, masked in reprs, and in
the environment variables of :data:`ENV`, set for this process alone (the
config names them, as a real deployment would) and removed by
:meth:`Sandbox.destroy`. Nothing here prints them.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.embedded import PgCluster, create_cluster, find_bindir
from pgtenantproxy.sample import handyshop_sql

APP_USER = "handyshop"
APP_DB = "handyshop"
TENANT_SERVER = "tenant-1"
#: Environment variables (this process only) the config names for its secrets.
ENV = {
    "unified": "PGTENANTPROXY_WALKTHROUGH_UNIFIED_PASSWORD",
    "tenant": "PGTENANTPROXY_WALKTHROUGH_TENANT_PASSWORD",
    "key": "PGTENANTPROXY_WALKTHROUGH_KEY",
}


@dataclass
class Sandbox:
    unified: PgCluster
    tenant: PgCluster
    shops: tuple[int, ...]
    app_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    key_hex: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)

    def export_secrets(self) -> None:
        """Put the secrets in this process's environment, where the config says they are."""
        os.environ[ENV["unified"]] = self.unified.password
        os.environ[ENV["tenant"]] = self.tenant.password
        os.environ[ENV["key"]] = self.key_hex

    def secret_values(self) -> tuple[str, ...]:
        return (self.unified.password, self.tenant.password, self.app_password, self.key_hex)

    def config(self, *, port: int, fast: bool) -> Config:
        data: dict[str, Any] = {
            "proxy": {"listen": f"127.0.0.1:{port}", "shutdown_timeout_ms": 2000},
            "unified": {"host": self.unified.host, "port": self.unified.port, "database": APP_DB,
                        "sslmode": "disable", "admin_user": self.unified.superuser,
                        "admin_password_env": ENV["unified"]},
            "tenancy": {"encryption_key_env": ENV["key"], "shops_query": "SELECT id FROM shops ORDER BY id",
                        # a copy in every shop database: a shop's join with it runs there
                        "reference_tables": [{"table": "public.device_models",
                                              "columns": ["id", "brand", "model"]}]},
            "tenant_servers": [{"name": TENANT_SERVER, "host": self.tenant.host, "port": self.tenant.port,
                                "admin_user": self.tenant.superuser, "admin_password_env": ENV["tenant"],
                                "sslmode": "disable"}],
            "routing": {"strategy": "percentage", "percentage": 0},
            "dual_write": {"enabled": False, "run_worker": True},
            "migration": {"jobs": 4, "chunk_rows": 500 if fast else 2000,
                          "throttle_rows_per_s": 0 if fast else 20000,
                          # the retirement archive stays inside the throwaway directory (removed at the end)
                          "archive_dir": str(self.unified.basedir / "retirement-archive")},
            "metrics": {"enabled": True, "listen": "127.0.0.1:0", "retention": 100000},
            "admin": {"enabled": False},
            "logging": {"level": "warning"},
        }
        # environ={}: the seed's override variables of the caller's shell must not change the walkthrough.
        return parse_config(data, environ={})

    def app_connect_kwargs(self, port: int) -> dict[str, Any]:
        """How the application connects: through the proxy, as its own role."""
        return {"host": "127.0.0.1", "port": port, "user": APP_USER, "password": self.app_password,
                "database": APP_DB}

    def destroy(self) -> None:
        for name in ENV.values():
            os.environ.pop(name, None)
        for cluster in (self.unified, self.tenant):
            cluster.destroy()


def start_clusters() -> tuple[PgCluster, PgCluster]:
    """The unified cluster and the tenant server, started in parallel; on any failure both are removed."""
    bindir = find_bindir()
    bases = [Path(tempfile.mkdtemp(prefix=f"pgtp-walkthrough-{role}-")) for role in ("unified", "tenant")]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # leaving it waits for both starts to end
            futures = [pool.submit(create_cluster, basedir=base, bindir=bindir) for base in bases]
            unified, tenant = (f.result() for f in futures)
        return unified, tenant
    except BaseException:
        for base in bases:
            PgCluster(bindir=bindir, basedir=base).destroy()
        raise


async def load_sample(sandbox: Sandbox, *, customers_per_shop: int) -> dict[str, int]:
    """Create the app's role and database, load HandyShop; the row count of each table."""
    cluster = sandbox.unified
    admin = await asyncpg.connect(**cluster.connect_kwargs())
    try:
        password = sandbox.app_password.replace("'", "''")
        await admin.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
    finally:
        await admin.close()
    app = await asyncpg.connect(**cluster.connect_kwargs(user=APP_USER, password=sandbox.app_password,
                                                         database=APP_DB))
    try:
        await app.execute(f"SET handyshop.shops = {len(sandbox.shops)}")
        await app.execute(f"SET handyshop.customers_per_shop = {customers_per_shop}")
        await app.execute(handyshop_sql())
        counts = {}
        for table in ("shops", "users", "customers", "repairs"):
            counts[table] = int(await app.fetchval(f"SELECT count(*) FROM {table}"))
        return counts
    finally:
        await app.close()
