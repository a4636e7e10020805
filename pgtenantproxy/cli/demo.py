"""``pgtenantproxy demo``: a throwaway PostgreSQL, a sample database, and the proxy.

Needs only the local PostgreSQL server binaries (says how to get them when
they are missing). Prints the psql line to connect through the proxy; the
password goes to a private passfile, never to the terminal.

``demo --walkthrough [--shops N] [--fast]`` instead walks every migration
phase on a unified cluster and a tenant server under a steady load, with live
figures, and ends with every shop verified identical
(:mod:`pgtenantproxy.walkthrough`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

from pgtenantproxy.app import install_uvloop, run_proxy
from pgtenantproxy.cli.common import CommandError
from pgtenantproxy.config import parse_config
from pgtenantproxy.embedded import PgCluster, PostgresNotFound, create_cluster, free_port
from pgtenantproxy.sample import handyshop_sql
from pgtenantproxy.server.listener import ProxyServer
from pgtenantproxy.walkthrough.run import Options, quiet_logging, run_walkthrough

APP_USER = "handyshop"
APP_DB = "handyshop"


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="start a throwaway PostgreSQL with sample data and the proxy in front of it"
    )
    parser.add_argument("--port", type=int, default=6432, help="proxy port (default 6432; 0 = any free port)")
    parser.add_argument("--walkthrough", action="store_true",
                        help="walk every migration phase under load, with live figures")
    parser.add_argument("--shops", type=_shop_count, default=10,
                        help="--walkthrough: number of shops (default 10)")
    parser.add_argument("--fast", action="store_true", help="--walkthrough: short pauses, less data")
    parser.set_defaults(func=run)


def _shop_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 200:
        raise argparse.ArgumentTypeError("must be between 1 and 200")
    return value


def run(args: argparse.Namespace) -> int:
    if args.walkthrough:
        return _walkthrough(args)
    try:
        cluster = create_cluster()
    except PostgresNotFound as exc:
        raise CommandError(str(exc)) from None
    try:
        password = secrets.token_urlsafe(16)
        print(f"PostgreSQL started on 127.0.0.1:{cluster.port} (data in {cluster.basedir})", flush=True)
        asyncio.run(_load_sample(cluster, password))
        port = _pick_port(args.port)
        passfile = _write_passfile(cluster.basedir, port, password)
        config = parse_config(
            {
                "proxy": {"listen": f"127.0.0.1:{port}", "shutdown_timeout_ms": 2000},
                "unified": {
                    "host": "127.0.0.1",
                    "port": cluster.port,
                    "database": APP_DB,
                    "sslmode": "disable",
                },
            }
        )
        install_uvloop()
        asyncio.run(run_proxy(config, ready=lambda proxy: _announce(proxy, passfile)))
    finally:
        cluster.destroy()
        print("demo stopped; throwaway cluster removed", flush=True)
    return 0


def _walkthrough(args: argparse.Namespace) -> int:
    if args.log_level is None:
        quiet_logging()
    try:
        return run_walkthrough(Options(shops=args.shops, fast=args.fast, port=_pick_port(args.port)))
    except PostgresNotFound as exc:
        raise CommandError(str(exc)) from None


async def _load_sample(cluster: PgCluster, password: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(**cluster.connect_kwargs())
    try:
        await admin.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
    finally:
        await admin.close()
    app = await asyncpg.connect(**cluster.connect_kwargs(user=APP_USER, password=password, database=APP_DB))
    try:
        await app.execute(handyshop_sql())
    finally:
        await app.close()


def _pick_port(wanted: int) -> int:
    if wanted == 0:
        return free_port()
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            port = free_port()
            print(f"port {wanted} is busy; the proxy listens on {port} instead", flush=True)
            return port
    return wanted


def _write_passfile(basedir: Path, port: int, password: str) -> Path:
    path = basedir / "demo.pgpass"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"127.0.0.1:{port}:{APP_DB}:{APP_USER}:{password}\n")
    return path


def _announce(proxy: ProxyServer, passfile: Path) -> None:
    host, port = proxy.sockets_addresses[0]
    print(
        "\npgtenantproxy is running in front of it. Connect through the proxy with:\n\n"
        f"  PGPASSFILE={passfile} psql 'host={host} port={port} user={APP_USER} dbname={APP_DB}'\n\n"
        "Try: SELECT shop_id, count(*) FROM repairs GROUP BY 1 ORDER BY 1;\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )
