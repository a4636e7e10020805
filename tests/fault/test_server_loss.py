"""The unified server goes away under connected clients, then comes back.

A dedicated cluster (the session-wide one is shared), three ways to lose it:

* ``restart`` (pg_ctl stop -m fast): PostgreSQL itself tells every client
  FATAL 57P01, relayed as it is;
* ``kill`` (SIGKILL to the postmaster only): orphaned idle backends say
  "unexpected postmaster exit" (57P01); a backend in ``pg_sleep`` dies
  silently and the proxy says FATAL 08006 for it;
* ``crash`` (SIGKILL to every server process): nobody says anything, so the
  proxy tells every client FATAL 08006 "server closed the connection
  unexpectedly".

No client hangs (every read is bounded), connections while the server is
down get FATAL 08006, and once it is back on the same port the same proxy
serves new connections. No session is left behind in the proxy.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.messages import ErrorFields
from tests.fixtures.clients import psycopg_kwargs
from tests.fixtures.clusters import make_unified
from tests.fixtures.proxy import ProxyThread, proxy_config
from tests.fixtures.rawclient import RawClient, errors_in, startup_trust
from tests.fixtures.wire import wait_for

SLEEP_AFTER_NOTICE = "DO $$ BEGIN RAISE NOTICE 'sleeping'; PERFORM pg_sleep(60); END $$"
SERVER_GONE = ("FATAL", "08006", "pgtenantproxy: server closed the connection unexpectedly")
ADMIN_SHUTDOWN = ("FATAL", "57P01", "terminating connection due to administrator command")
POSTMASTER_EXIT = ("FATAL", "57P01", "terminating connection due to unexpected postmaster exit")


@pytest.fixture(scope="module")
def lossy() -> Iterator[PgCluster]:
    cluster = make_unified()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def lossy_proxy(lossy: PgCluster) -> Iterator[ProxyThread]:
    with ProxyThread(proxy_config(lossy)) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def server_up(lossy: PgCluster) -> Iterator[None]:
    """Every test starts and ends with the server running."""
    yield
    try:
        socket.create_connection((lossy.host, lossy.port), timeout=2).close()
    except OSError:
        lossy.start_same_port()


def idle_client(proxy: ProxyThread) -> RawClient:
    client, startup = startup_trust(proxy.port, "trust_user", "app")
    assert startup[-1].type == c.READY_FOR_QUERY, errors_in(startup)
    return client


def busy_client(proxy: ProxyThread) -> RawClient:
    """A client whose server backend is inside pg_sleep(60)."""
    client = idle_client(proxy)
    client.query(SLEEP_AFTER_NOTICE)
    assert client.read_until({c.NOTICE_RESPONSE})[-1].type == c.NOTICE_RESPONSE
    return client


def final_error(client: RawClient) -> tuple[str, str, str]:
    """The last error before the proxy hangs up (bounded: no hang allowed)."""
    with client:
        found = errors_in(client.read_until_close(timeout=20))
    assert found, "the connection closed without an ErrorResponse"
    assert client.closed_by_peer
    return _triple(found[-1])


def _triple(err: ErrorFields) -> tuple[str, str, str]:
    return err.severity, err.sqlstate, err.message


def assert_serves_again(lossy: PgCluster, proxy: ProxyThread) -> None:
    with psycopg.connect(**psycopg_kwargs(lossy, proxy.port), autocommit=True) as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    assert wait_for(lambda: proxy.run(lambda: len(proxy.server.sessions)) == 0, timeout=10)


def assert_refused_while_down(proxy: ProxyThread) -> None:
    client, startup = startup_trust(proxy.port, "trust_user", "app")
    with client:
        err = errors_in(startup)
        assert err and err[0].sqlstate == "08006", startup
        assert err[0].message.startswith("pgtenantproxy: could not connect to the unified server")
        assert client.read_until_close(timeout=10) == []


def test_restart_relays_admin_shutdown(lossy: PgCluster, lossy_proxy: ProxyThread) -> None:
    idle, busy = idle_client(lossy_proxy), busy_client(lossy_proxy)
    conn = psycopg.connect(**psycopg_kwargs(lossy, lossy_proxy.port), autocommit=True)
    try:
        lossy.restart()
        assert final_error(idle) == ADMIN_SHUTDOWN
        assert final_error(busy) == ADMIN_SHUTDOWN
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        assert info.value.sqlstate == "57P01"
    finally:
        conn.close()
    assert_serves_again(lossy, lossy_proxy)


def stray_cancels(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Cancel requests the proxy tried to send to a server that is gone."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("cancel request")]


def test_postmaster_killed(
    lossy: PgCluster, lossy_proxy: ProxyThread, caplog: pytest.LogCaptureFixture
) -> None:
    idle, busy = idle_client(lossy_proxy), busy_client(lossy_proxy)
    lossy.kill()
    assert final_error(idle) in (POSTMASTER_EXIT, SERVER_GONE)
    assert final_error(busy) == SERVER_GONE  # pg_sleep's backend exits without a word
    assert wait_for(lambda: lossy_proxy.run(lambda: len(lossy_proxy.server.sessions)) == 0, timeout=10)
    assert stray_cancels(caplog) == []
    assert_refused_while_down(lossy_proxy)
    lossy.start_same_port()
    assert_serves_again(lossy, lossy_proxy)


def test_whole_server_crash(
    lossy: PgCluster, lossy_proxy: ProxyThread, caplog: pytest.LogCaptureFixture
) -> None:
    idle, busy = idle_client(lossy_proxy), busy_client(lossy_proxy)
    psycopg_error: list[BaseException] = []
    conn = psycopg.connect(**psycopg_kwargs(lossy, lossy_proxy.port), autocommit=True)

    def psycopg_busy() -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
        except psycopg.Error as exc:
            psycopg_error.append(exc)

    worker = threading.Thread(target=psycopg_busy)
    worker.start()
    try:
        assert wait_for(lambda: _sleeping(lossy) >= 2, timeout=10)
        lossy.crash()
        assert final_error(idle) == SERVER_GONE
        assert final_error(busy) == SERVER_GONE
        worker.join(20)
        assert not worker.is_alive(), "psycopg hung on a crashed server"
        assert len(psycopg_error) == 1 and isinstance(psycopg_error[0], psycopg.OperationalError)
        assert "server closed the connection unexpectedly" in str(psycopg_error[0])
    finally:
        conn.close()
    assert wait_for(lambda: lossy_proxy.run(lambda: len(lossy_proxy.server.sessions)) == 0, timeout=10)
    assert stray_cancels(caplog) == []
    assert_refused_while_down(lossy_proxy)
    lossy.start_same_port()
    assert_serves_again(lossy, lossy_proxy)


def _sleeping(cluster: PgCluster) -> int:
    """Backends inside pg_sleep (asked directly, as the superuser)."""
    with psycopg.connect(host=cluster.host, port=cluster.port, user=cluster.superuser,
                         password=cluster.password, dbname="postgres", sslmode="disable") as conn:
        row: Any = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(60)%'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0])
