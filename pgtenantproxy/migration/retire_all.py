"""``retire --all`` when no shop is left outside ``retired``: a whole-table dump, then TRUNCATE.

As the seed does: before the first shop's rows are deleted, ``pg_dump
--data-only --format=custom`` of every captured table goes to
``<archive_dir>/all_<UTC time>/tenant_tables.dump`` with a ``manifest.json``
(bytes, sha256, tables). The per-shop archives are written as well (``restore
--shop N`` works the same after ``--all``). Once every shop's rows were
deleted, :func:`truncate_empty` empties the tables with TRUNCATE (space back at
once, where DELETE leaves dead rows to vacuum), in one transaction that first
locks the tables and checks that no row is left: a row still there belongs to
a shop that is not retired, and the TRUNCATE is refused rather than lose it.
``session_replication_role = replica`` in that transaction keeps write
capture's TRUNCATE guard quiet (there is nothing left to mirror).

The password reaches ``pg_dump`` through its environment (``PGPASSWORD``), never
its command line; errors quote pg_dump's own message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import asyncpg

from pgtenantproxy.config import Config
from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.embedded import PostgresNotFound, find_bindir
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.archive import MANIFEST, file_digest
from pgtenantproxy.migration.retire_report import DumpResult

DUMP_FILE = "tenant_tables.dump"


def _dump_env(config: Config) -> dict[str, str]:
    u = config.unified
    env = dict(os.environ)
    env.update({"PGHOST": u.host, "PGPORT": str(u.port), "PGUSER": u.admin_user, "PGDATABASE": u.database,
                "PGSSLMODE": u.sslmode, "PGCONNECT_TIMEOUT": str(max(1, u.connect_timeout_ms // 1000))})
    if u.sslrootcert:
        env["PGSSLROOTCERT"] = u.sslrootcert
    password = u.admin_password
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def pg_dump_path() -> str:
    """pg_dump next to the PostgreSQL binaries the project uses, else the one on PATH."""
    try:
        return str(find_bindir() / "pg_dump")
    except PostgresNotFound:
        found = shutil.which("pg_dump")
        if found is None:
            raise MigrationError("pg_dump was not found (install the PostgreSQL client tools, "
                                 "or set PGTENANTPROXY_PG_BINDIR)") from None
        return found


async def dump_tables(config: Config, tables: list[TableInfo]) -> DumpResult:
    """``pg_dump --data-only`` of the whole tables into a new directory under ``archive_dir``."""
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    directory = Path(config.migration.archive_dir) / f"all_{stamp}"
    directory.mkdir(parents=True, exist_ok=False)
    path = directory / DUMP_FILE
    args = [pg_dump_path(), "--data-only", "--format=custom", "--no-password",
            f"--file={path}", *(f"--table={t.name.sql}" for t in tables)]
    proc = await asyncio.create_subprocess_exec(*args, env=_dump_env(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise MigrationError(f"pg_dump of the tenant tables failed (exit {proc.returncode}): "
                             f"{err.decode(errors='replace').strip()[-500:]}")
    size, sha = file_digest(path)
    result = DumpResult(str(path), size, sha, [t.label for t in tables], time.monotonic() - started)
    manifest = {"kind": "pg_dump --data-only --format=custom", "created_at": stamp, "file": DUMP_FILE,
                "bytes": size, "sha256": sha, "tables": result.tables,
                "source": {"host": config.unified.host, "port": config.unified.port,
                           "database": config.unified.database}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return result


async def truncate_empty(conn: asyncpg.Connection, tables: list[TableInfo]) -> list[str]:
    """TRUNCATE the tables in one transaction, refused (nothing changed) when any still holds a row."""
    names = ", ".join(t.name.sql for t in tables)
    async with conn.transaction():
        await conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
        left = {t.label: int(await conn.fetchval(f"SELECT count(*) FROM {t.name.sql}")) for t in tables}
        holding = {label: n for label, n in left.items() if n}
        if holding:
            column = tables[0].tenant_column
            raise MigrationError(
                "TRUNCATE refused: rows of shops that are not retired are still in unified ("
                + ", ".join(f"{label}: {n}" for label, n in holding.items())
                + f"); find them with SELECT DISTINCT {column} ...; nothing was truncated"
            )
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(f"TRUNCATE {names}")
    return [t.label for t in tables]
