"""Graceful shutdown of ``pgtenantproxy serve`` on SIGTERM and SIGINT.

The real command runs as a subprocess with its own config file. Contract:

* idle clients get FATAL 57P01 at once and the process exits 0 without
  waiting for the timeout;
* a client inside a transaction may keep going and COMMIT; its connection
  is closed (57P01) when the transaction ends;
* a transaction that outlasts ``shutdown_timeout_ms`` is cancelled and
  closed, the process exits, and its server backend is gone;
* new connections are refused meanwhile (connection refused, or 57P03).

Every wait is bounded (subprocess wait timeouts, read timeouts): nothing
may hang.
"""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster, free_port
from pgtenantproxy.protocol import constants as c
from tests.fixtures.clients import psycopg_kwargs
from tests.fixtures.clusters import PASSWORDS, psql
from tests.fixtures.proxy import ProxyProcess
from tests.fixtures.rawclient import RawClient, errors_in, startup_trust
from tests.fixtures.wire import backend_count, wait_for

SLEEP_AFTER_NOTICE = "DO $$ BEGIN RAISE NOTICE 'sleeping'; PERFORM pg_sleep(60); END $$"
ADMIN_SHUTDOWN = ("FATAL", "57P01", "terminating connection due to administrator command")
TABLE = "shutdown_commits"



class ServedProxy(ProxyProcess):
    """``pgtenantproxy serve`` listening on a known port."""

    def __init__(self, config: str, workdir: Path, port: int) -> None:
        super().__init__(config, workdir)
        self.port = port


StartProxy = Callable[[int], ServedProxy]


def config_text(cluster: PgCluster, port: int, shutdown_timeout_ms: int) -> str:
    return (
        "[proxy]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f"shutdown_timeout_ms = {shutdown_timeout_ms}\n"
        "[unified]\n"
        f'host = "{cluster.host}"\n'
        f"port = {cluster.port}\n"
        'database = "app"\n'
        'sslmode = "disable"\n'
        "[logging]\n"
        'level = "info"\n'
    )


@pytest.fixture
def start_proxy(unified: PgCluster, tmp_path: Path) -> Iterator[StartProxy]:
    started: list[ServedProxy] = []

    def start(shutdown_timeout_ms: int) -> ServedProxy:
        port = free_port()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        proc = ServedProxy(config_text(unified, port, shutdown_timeout_ms), workdir, port)
        started.append(proc)
        proc.start(port)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def commits_table(unified: PgCluster) -> Iterator[str]:
    psql(unified, f"CREATE TABLE {TABLE}(tag text, x int); GRANT ALL ON {TABLE} TO trust_user",
         dbname="app", user="app", password=PASSWORDS["app"])
    yield TABLE
    psql(unified, f"DROP TABLE {TABLE}", dbname="app", user="app", password=PASSWORDS["app"])


def client(proc: ServedProxy, app: str = "pgtp-shutdown") -> RawClient:
    raw, startup = startup_trust(proc.port, "trust_user", "app", application_name=app)
    assert startup[-1].type == c.READY_FOR_QUERY, errors_in(startup)
    return raw


def run(raw: RawClient, sql: str) -> list[Any]:
    raw.query(sql)
    messages = raw.read_until({c.READY_FOR_QUERY})
    assert messages and messages[-1].type == c.READY_FOR_QUERY, messages
    assert not errors_in(messages), errors_in(messages)
    return messages


def last_error(raw: RawClient) -> tuple[str, str, str]:
    with raw:
        found = errors_in(raw.read_until_close(timeout=20))
    assert found, "closed without an ErrorResponse"
    err = found[-1]
    return err.severity, err.sqlstate, err.message


def refuses_new_connections(port: int) -> bool:
    """True when a new client is turned away (refused outright, or FATAL 57P03)."""
    try:
        raw, startup = startup_trust(port, "trust_user", "app")
    except OSError:
        return True
    with raw:
        found = errors_in(startup)
        return bool(found) and found[0].sqlstate == "57P03"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_clients_closed_and_prompt_exit(start_proxy: StartProxy, unified: PgCluster, sig: int) -> None:
    proc = start_proxy(30_000)  # a timeout the exit must not wait for
    raw = client(proc)
    conn = psycopg.connect(**psycopg_kwargs(unified, proc.port), autocommit=True)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.signal(sig)
        assert proc.wait(timeout=15) == 0, proc.log
        assert last_error(raw) == ADMIN_SHUTDOWN
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        assert info.value.sqlstate == "57P01"
    finally:
        conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proc.port), timeout=2).close()


def test_transaction_finishes_during_shutdown(
    start_proxy: StartProxy, unified: PgCluster, commits_table: str
) -> None:
    tag = uuid.uuid4().hex
    proc = start_proxy(20_000)
    in_tx = client(proc)
    idle = client(proc)
    run(in_tx, f"BEGIN; INSERT INTO {TABLE} VALUES ('{tag}', 1)")
    proc.signal(signal.SIGTERM)
    assert last_error(idle) == ADMIN_SHUTDOWN  # idle sessions go at once
    assert wait_for(lambda: refuses_new_connections(proc.port), timeout=10)
    # The transaction carries on, and commits.
    run(in_tx, f"INSERT INTO {TABLE} VALUES ('{tag}', 2)")
    done = run(in_tx, "COMMIT")
    assert done[-1].body == b"I"
    assert last_error(in_tx) == ADMIN_SHUTDOWN  # closed once idle
    assert proc.wait(timeout=15) == 0, proc.log
    rows = psql(unified, f"SELECT sum(x) FROM {TABLE} WHERE tag = '{tag}'", dbname="app",
                user="app", password=PASSWORDS["app"])
    assert rows.strip() == "3"


@pytest.mark.parametrize("busy", [False, True], ids=["idle-in-transaction", "running-pg_sleep"])
def test_transaction_outlasting_the_timeout_is_closed(
    start_proxy: StartProxy, unified: PgCluster, commits_table: str, busy: bool
) -> None:
    app = f"pgtp-shutdown-{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex
    proc = start_proxy(1_000)
    raw = client(proc, app)
    run(raw, f"BEGIN; INSERT INTO {TABLE} VALUES ('{tag}', 1)")
    if busy:
        raw.query(SLEEP_AFTER_NOTICE)
        assert raw.read_until({c.NOTICE_RESPONSE})[-1].type == c.NOTICE_RESPONSE
    assert backend_count(unified, application_name=app) == 1
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.log
    assert last_error(raw) == ADMIN_SHUTDOWN
    # The server backend went with it (a pg_sleep nobody cancelled would stay 60 s).
    assert wait_for(lambda: backend_count(unified, application_name=app) == 0, timeout=20)
    rows = psql(unified, f"SELECT count(*) FROM {TABLE} WHERE tag = '{tag}'", dbname="app",
                user="app", password=PASSWORDS["app"])
    assert rows.strip() == "0"  # never committed


def test_no_clients_exits_at_once(start_proxy: StartProxy) -> None:
    proc = start_proxy(30_000)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, proc.log
    assert "Traceback" not in proc.log
