"""The driver tier's bed: one unified cluster with two copies of HandyShop, a tenant server, the proxy.

Built once for the package (see ``conftest.py``) from the walkthrough's own
pieces (:mod:`pgtenantproxy.walkthrough.cluster`: both clusters started side
by side, the app role ``handyshop``, the sample loaded at a small size):

* ``handyshop_direct`` -- the unmigrated copy: the workloads run against it
  directly (the expected results);
* ``handyshop`` -- the migrated copy: the proxy (:class:`~tests.fixtures.app.AppThread`,
  routing on, write mirroring and the phase keeper in the same process) sits
  in front of it, and the operator's commands (``pgtenantproxy provision
  --all``, ``dual-write enable``, ``backfill --all``, then per shop ``reads
  activate`` and ``cutover``, run as subprocesses with a config file) take
  every shop to ``tenant_primary``, then ``retire --shop N`` takes
  :data:`RETIRED_SHOPS` to ``retired`` (:mod:`.lifecycle`).

Both copies are loaded by the same script with the same size, so the sample's
ids are the same rows in both (:data:`BASELINE` is the largest of each); every
driver works on a shop of its own (:data:`DRIVER_SHOPS`), the lifecycle load
on :data:`LOAD_SHOPS`.

Secrets: the walkthrough's sandbox keeps them in this process's environment
(the config file names the variables, the CLI subprocesses inherit them); the
application's password reaches the driver programs as ``PGPASSWORD``, never on
a command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg

from pgtenantproxy.config import Config, parse_config
from pgtenantproxy.sample import handyshop_sql
from pgtenantproxy.walkthrough.cluster import (
    APP_DB,
    APP_USER,
    ENV,
    TENANT_SERVER,
    Sandbox,
    load_sample,
    start_clusters,
)
from tests.fixtures.app import AppThread
from tests.fixtures.tenancy import toml_value

SHOPS = tuple(range(1, 9))
CUSTOMERS_PER_SHOP = 10
#: The sample's largest ids (customers: shops x customers; repairs: 4 per customer).
BASELINE = {"customer_id": len(SHOPS) * CUSTOMERS_PER_SHOP, "repair_id": 4 * len(SHOPS) * CUSTOMERS_PER_SHOP}
#: The sample's customers per shop (ids up to BASELINE["customer_id"]: the rows ``all_shops`` counts).
SAMPLE_CUSTOMERS = dict.fromkeys(SHOPS, CUSTOMERS_PER_SHOP)
DRIVER_SHOPS = {"psycopg": 1, "asyncpg": 2, "node": 3, "pgjdbc": 4, "psql": 5}
#: The lifecycle test's load (psycopg) loops on these while every shop is cut over.
LOAD_SHOPS = (7, 8)
#: Retired (``pgtenantproxy retire``) once every shop is cut over: psycopg's, node's and pgjdbc's shops and
#: one no driver uses; asyncpg's, psql's and the load's shops stay ``tenant_primary``.
RETIRED_SHOPS = (1, 3, 4, 6)
DIRECT_DB = "handyshop_direct"
CLI_TIMEOUT_S = 120


@dataclass(frozen=True)
class Target:
    """Where a workload connects: the unmigrated copy directly, or the proxy."""

    name: str
    host: str
    port: int
    dbname: str
    user: str = APP_USER
    password: str = field(default="", repr=False)

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(host=self.host, port=self.port, dbname=self.dbname,
                                              user=self.user, password=self.password, sslmode="disable",
                                              connect_timeout=10)

    def asyncpg_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "database": self.dbname, "user": self.user,
                "password": self.password, "ssl": False, "timeout": 10}

    def env(self) -> dict[str, str]:
        """libpq's variables (psql, pgbench, node-postgres and the JDBC program read them)."""
        env = dict(os.environ)
        for name in ("PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGOPTIONS", "PGSSLMODE", "DATABASE_URL"):
            env.pop(name, None)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGDATABASE=self.dbname, PGUSER=self.user,
                   PGPASSWORD=self.password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
        return env


@dataclass
class DriverBed:
    sandbox: Sandbox
    workdir: Path
    app: AppThread | None = None
    config_path: Path = field(init=False)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "config.toml"
        self.log_path = self.workdir / "proxy.log"

    # --- config -------------------------------------------------------------------------
    def config_data(self) -> dict[str, Any]:
        u, t = self.sandbox.unified, self.sandbox.tenant
        return {
            "proxy": {"listen": "127.0.0.1:0", "shutdown_timeout_ms": 2000},
            "unified": {"host": u.host, "port": u.port, "database": APP_DB, "sslmode": "disable",
                        "admin_user": u.superuser, "admin_password_env": ENV["unified"]},
            "tenancy": {"encryption_key_env": ENV["key"], "shops_query": "SELECT id FROM shops ORDER BY id",
                        # a shop's join with device_models runs on its own database, from its copy
                        "reference_tables": [{"table": "public.device_models",
                                              "columns": ["id", "brand", "model"]}]},
            "tenant_servers": [{"name": TENANT_SERVER, "host": t.host, "port": t.port,
                                "admin_user": t.superuser, "admin_password_env": ENV["tenant"],
                                "sslmode": "disable"}],
            # Reads move to a shop's database when `reads activate` says so (percentage 0 selects none).
            "routing": {"strategy": "percentage", "percentage": 0, "catalog_refresh_ms": 200},
            "dual_write": {"enabled": False, "run_worker": True, "poll_interval_ms": 50,
                           "status_interval_ms": 50, "retry_backoff_ms": [100, 200, 400]},
            "migration": {"keeper_interval_ms": 100, "archive_dir": str(self.workdir / "archive")},
            "metrics": {"enabled": False},
            "admin": {"enabled": False},
            "logging": {"level": "info"},
        }

    def config(self) -> Config:
        return parse_config(self.config_data(), environ={})

    def write_config(self) -> Path:
        lines: list[str] = []
        for name, table in self.config_data().items():
            for entry in table if isinstance(table, list) else [table]:
                lines.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
                lines.append("")
        self.config_path.write_text("\n".join(lines))
        return self.config_path

    # --- where the workloads connect ------------------------------------------------------
    @property
    def direct(self) -> Target:
        u = self.sandbox.unified
        return Target("direct", u.host, u.port, DIRECT_DB, password=self.sandbox.app_password)

    @property
    def proxied(self) -> Target:
        assert self.app is not None
        return Target("proxy", "127.0.0.1", self.app.port, APP_DB, password=self.sandbox.app_password)

    @property
    def bindir(self) -> Path:
        return self.sandbox.unified.bindir

    # --- the operator's commands ------------------------------------------------------------
    def cli(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``pgtenantproxy ARGS --config <the bed's file>`` (the secrets come from the environment)."""
        return subprocess.run(
            [sys.executable, "-m", "pgtenantproxy", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "160"},
        )

    def cli_ok(self, *args: str) -> str:
        done = self.cli(*args)
        if done.returncode != 0:
            raise RuntimeError(f"pgtenantproxy {' '.join(args)} exited {done.returncode}:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def phases(self) -> dict[int, str]:
        u = self.sandbox.unified
        with psycopg.connect(u.dsn(dbname=APP_DB), autocommit=True) as conn:
            rows = conn.execute("SELECT shop_id, phase FROM pgtenantproxy.shop_phases").fetchall()
        found = {int(shop): str(phase) for shop, phase in rows}
        return {shop: found.get(shop, "unified") for shop in SHOPS}

    def wait_phase(self, shop: int, phase: str, timeout_s: float = 20) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.phases()[shop]
            if now == phase or time.monotonic() > deadline:
                return now
            time.sleep(0.1)

    def proxy_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- start and stop ---------------------------------------------------------------------
    def start_proxy(self) -> None:
        handler = logging.FileHandler(self.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        logger = logging.getLogger("pgtenantproxy")
        logger.addHandler(handler)
        self._log_level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        self._log_handler = handler
        self.app = AppThread(self.config(), mirror=True).start()

    def destroy(self) -> None:
        try:
            if self.app is not None:
                self.app.stop()
        finally:
            handler = getattr(self, "_log_handler", None)
            if handler is not None:
                logger = logging.getLogger("pgtenantproxy")
                logger.removeHandler(handler)
                logger.setLevel(self._log_level)
                handler.close()
            self.sandbox.destroy()


async def _load_direct_copy(sandbox: Sandbox) -> None:
    """``handyshop_direct``: the same sample, same size, loaded the same way as ``handyshop``."""
    admin = await asyncpg.connect(**sandbox.unified.connect_kwargs())
    try:
        await admin.execute(f"CREATE DATABASE {DIRECT_DB} OWNER {APP_USER}")
    finally:
        await admin.close()
    app = await asyncpg.connect(**sandbox.unified.connect_kwargs(
        user=APP_USER, password=sandbox.app_password, database=DIRECT_DB))
    try:
        await app.execute(f"SET handyshop.shops = {len(SHOPS)}")
        await app.execute(f"SET handyshop.customers_per_shop = {CUSTOMERS_PER_SHOP}")
        await app.execute(handyshop_sql())
    finally:
        await app.close()


async def _load(sandbox: Sandbox) -> None:
    counts = await load_sample(sandbox, customers_per_shop=CUSTOMERS_PER_SHOP)
    expected = {"shops": len(SHOPS), "customers": BASELINE["customer_id"], "repairs": BASELINE["repair_id"]}
    assert {k: counts[k] for k in expected} == expected, counts
    await _load_direct_copy(sandbox)


def make_bed(workdir: Path) -> DriverBed:
    """Clusters started, both copies loaded, the config file written, the proxy running (nothing migrated)."""
    unified, tenant = start_clusters()
    sandbox = Sandbox(unified, tenant, SHOPS)
    bed = DriverBed(sandbox, workdir)
    try:
        sandbox.export_secrets()
        asyncio.run(_load(sandbox))
        bed.write_config()
        bed.start_proxy()
        return bed
    except BaseException:
        bed.destroy()
        raise
