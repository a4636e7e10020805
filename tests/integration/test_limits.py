"""Admission and startup limits: too many clients, slow or malformed startups, no server.

Each limit is a FATAL ErrorResponse with PostgreSQL's SQLSTATE, and none of
them disturbs the proxy's other sessions.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster, free_port
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.messages import StartupMessage
from tests.fixtures.clients import psycopg_kwargs
from tests.fixtures.proxy import ProxyThread, proxy_config
from tests.fixtures.rawclient import RawClient, first_error, startup_trust


@pytest.fixture(scope="module")
def small_proxy(unified: PgCluster) -> Iterator[ProxyThread]:
    with ProxyThread(proxy_config(unified, proxy={"max_client_connections": 3})) as p:
        yield p


@pytest.fixture(scope="module")
def impatient_proxy(unified: PgCluster) -> Iterator[ProxyThread]:
    with ProxyThread(proxy_config(unified, proxy={"auth_timeout_ms": 500})) as p:
        yield p


@pytest.fixture(scope="module")
def orphan_proxy(unified: PgCluster) -> Iterator[ProxyThread]:
    """A proxy whose unified server port has nothing listening."""
    cfg = proxy_config(unified, unified={"port": free_port(), "connect_timeout_ms": 3000})
    with ProxyThread(cfg) as p:
        yield p


def _wait_sessions(proxy: ProxyThread, count: int) -> None:
    for _ in range(250):
        if proxy.run(lambda: len(proxy.server.sessions)) == count:
            return
        time.sleep(0.02)
    raise AssertionError(f"proxy never went to {count} sessions")


def test_too_many_clients(unified: PgCluster, small_proxy: ProxyThread) -> None:
    kwargs = psycopg_kwargs(unified, small_proxy.port)
    conns = [psycopg.connect(**kwargs) for _ in range(3)]
    try:
        client, messages = startup_trust(small_proxy.port, "trust_user", "app")
        client.close()
        error = first_error(messages)
        assert error is not None
        assert (error.severity, error.sqlstate, error.message) == (
            "FATAL", "53300", "sorry, too many clients already"
        )
        with pytest.raises(psycopg.OperationalError, match="sorry, too many clients already"):
            psycopg.connect(**kwargs)
        conns.pop().close()
        _wait_sessions(small_proxy, 2)
        conns.append(psycopg.connect(**kwargs))
        assert conns[-1].execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def test_silent_client_is_closed(impatient_proxy: ProxyThread) -> None:
    with RawClient.connect(impatient_proxy.port) as client:
        messages = client.read_until_close(timeout=20)
    assert client.closed_by_peer
    error = first_error(messages)
    assert error is None or error.sqlstate == "57014"


def test_partial_startup_is_closed(impatient_proxy: ProxyThread) -> None:
    packet = StartupMessage.build({"user": "app", "database": "app"})
    with RawClient.connect(impatient_proxy.port) as client:
        client.send(packet[:11])
        messages = client.read_until_close(timeout=20)
    assert client.closed_by_peer
    error = first_error(messages)
    assert error is None or error.sqlstate == "57014"


def test_stalled_authentication_gets_57014(impatient_proxy: ProxyThread) -> None:
    with RawClient.connect(impatient_proxy.port) as client:
        client.send_startup({"user": "app", "database": "app"})
        first = client.read_message()
        assert first is not None and first.type == c.AUTHENTICATION  # SASL request, never answered
        messages = client.read_until_close(timeout=20)
    error = first_error(messages)
    assert error is not None
    assert (error.severity, error.sqlstate) == ("FATAL", "57014")
    assert error.message == "canceling authentication due to timeout"
    _wait_sessions(impatient_proxy, 0)


def test_oversized_startup_packet(proxy: ProxyThread) -> None:
    params = {"user": "app", "database": "app", "options": "x" * 10100}
    with RawClient.connect(proxy.port) as client:
        client.send(StartupMessage.build(params))
        messages = client.read_until_close()
    error = first_error(messages)
    assert error is not None
    assert (error.severity, error.sqlstate, error.message) == (
        "FATAL", "08P01", "invalid length of startup packet"
    )


def test_unsupported_protocol_version(unified: PgCluster, proxy: ProxyThread) -> None:
    with RawClient.connect(unified.port) as client:
        # PostgreSQL answers a 2.0 client in the old protocol's format: 'E' and a C string.
        client.send_startup({"user": "app", "database": "app"}, protocol=2 << 16)
        direct = client.read_raw(1000)
    with RawClient.connect(proxy.port) as client:
        client.send_startup({"user": "app", "database": "app"}, protocol=2 << 16)
        error = first_error(client.read_until_close())
    assert b"unsupported frontend protocol 2.0" in direct
    assert error is not None
    assert (error.severity, error.sqlstate) == ("FATAL", "0A000")
    assert error.message.startswith("unsupported frontend protocol 2.0: server supports 3.0 to ")


def test_startup_without_user(proxy: ProxyThread) -> None:
    with RawClient.connect(proxy.port) as client:
        client.send(StartupMessage.build({"database": "app"}))
        error = first_error(client.read_until_close())
    assert error is not None and (error.severity, error.sqlstate) == ("FATAL", "28000")


def test_garbage_startup_length(proxy: ProxyThread) -> None:
    with RawClient.connect(proxy.port) as client:
        client.send(struct.pack("!I", 3) + b"\x00\x03\x00\x00")
        error = first_error(client.read_until_close())
    assert error is not None and error.sqlstate == "08P01"


def test_unreachable_server(unified: PgCluster, orphan_proxy: ProxyThread) -> None:
    port = orphan_proxy.config.unified.port
    for _ in range(3):
        with RawClient.connect(orphan_proxy.port) as client:
            client.send_startup({"user": "app", "database": "app"})
            error = first_error(client.read_until_close())
        assert error is not None
        assert (error.severity, error.sqlstate) == ("FATAL", "08006")
        assert f"unified server 127.0.0.1:{port}" in error.message
    with pytest.raises(psycopg.OperationalError, match=f"unified server 127.0.0.1:{port}"):
        psycopg.connect(**psycopg_kwargs(unified, orphan_proxy.port))
    _wait_sessions(orphan_proxy, 0)
    # The proxy is still serving: the listener answers a new session.
    with RawClient.connect(orphan_proxy.port) as client:
        client.send_startup({"user": "app", "database": "app"})
        error = first_error(client.read_until_close())
    assert error is not None and error.sqlstate == "08006"


def test_other_sessions_survive_failures(unified: PgCluster, proxy: ProxyThread) -> None:
    """Broken startups next to a live session leave that session untouched."""
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port)) as conn:
        conn.execute("CREATE TEMP TABLE survive(x int)")
        for payload in (b"\x00\x00\x00\x03", StartupMessage.build({"user": "app"}, protocol=2 << 16)):
            with RawClient.connect(proxy.port) as client:
                client.send(payload)
                client.read_until_close()
        client, messages = startup_trust(proxy.port, "trust_user", "no_such_db")
        client.close()
        error = first_error(messages)
        assert error is not None and error.sqlstate == "3D000"
        conn.execute("INSERT INTO survive VALUES (1)")
        assert conn.execute("SELECT count(*) FROM survive").fetchone() == (1,)


def test_cancel_requests_bypass_admission(unified: PgCluster, small_proxy: ProxyThread) -> None:
    """Like PostgreSQL, a full proxy still accepts CancelRequests (they are not sessions)."""
    kwargs = psycopg_kwargs(unified, small_proxy.port, autocommit=True)
    conns = [psycopg.connect(**kwargs) for _ in range(3)]
    try:
        busy = conns[0]
        pid = busy.info.backend_pid
        timer = threading.Thread(target=_cancel_when_sleeping, args=(unified, busy, pid))
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                busy.execute("SELECT pg_sleep(30)")
        finally:
            timer.join(30)
        assert busy.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()


def _cancel_when_sleeping(unified: PgCluster, conn: psycopg.Connection[Any], pid: int) -> None:
    with psycopg.connect(**psycopg_kwargs(unified), autocommit=True) as direct:
        for _ in range(500):
            row = direct.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if row == ("active",):
                break
            time.sleep(0.02)
    conn.cancel_safe(timeout=10)


def test_auth_timeout_spares_established_sessions(unified: PgCluster, impatient_proxy: ProxyThread) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, impatient_proxy.port)) as conn:
        conn.execute("SELECT pg_sleep(1)")  # twice the authentication timeout
        time.sleep(1)
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)
