"""Authentication relayed, startup parameters and BackendKeyData, direct vs proxy.

The proxy relays authentication to the unified server, so every method works
and every failure is PostgreSQL's own (same SQLSTATE, same text). The client
gets the real backend pid with a secret key of the proxy's own.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.protocol import constants as c
from tests.fixtures.clients import asyncpg_kwargs, psycopg_kwargs
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.rawclient import (
    RawClient,
    backend_key,
    errors_in,
    parameter_statuses,
    send_cancel,
    startup_trust,
)

USERS = ["trust_user", "pw_user", "md5_user", "app"]

ACTIVITY = "SELECT state, query FROM pg_stat_activity WHERE pid = %s"


@pytest.mark.parametrize("user", USERS)
def test_every_auth_method_connects(unified: PgCluster, proxy: ProxyThread, user: str) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port, user=user)) as conn:
        row = conn.execute("SELECT current_user, pg_backend_pid()").fetchone()
        assert row == (user, conn.info.backend_pid)


@pytest.mark.parametrize("user", USERS)
async def test_every_auth_method_connects_asyncpg(unified: PgCluster, proxy: ProxyThread, user: str) -> None:
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port, user=user))
    try:
        assert await conn.fetchval("SELECT current_user") == user
    finally:
        await conn.close()


async def _asyncpg_failure(kwargs: dict[str, Any]) -> tuple[type, str | None, str]:
    with pytest.raises(asyncpg.PostgresError) as info:
        await asyncpg.connect(**kwargs)
    exc = info.value
    return type(exc), exc.sqlstate, str(exc)


@pytest.mark.parametrize("user", ["app", "md5_user", "pw_user"])
async def test_wrong_password_is_postgres_error(unified: PgCluster, proxy: ProxyThread, user: str) -> None:
    direct = await _asyncpg_failure(asyncpg_kwargs(unified, user=user, password="wrong"))
    through = await _asyncpg_failure(asyncpg_kwargs(unified, proxy.port, user=user, password="wrong"))
    assert direct[1] == "28P01"
    assert through == direct
    assert f'password authentication failed for user "{user}"' in through[2]


@pytest.mark.parametrize("user", ["app", "md5_user", "pw_user"])
def test_wrong_password_libpq_message(unified: PgCluster, proxy: ProxyThread, user: str) -> None:
    def failure(port: int | None) -> str:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(**psycopg_kwargs(unified, port, user=user, password="wrong"))
        return str(info.value).replace(str(port or unified.port), "PORT")

    assert failure(proxy.port) == failure(None)


async def test_unknown_database(unified: PgCluster, proxy: ProxyThread) -> None:
    direct = await _asyncpg_failure(asyncpg_kwargs(unified, database="no_such_db"))
    through = await _asyncpg_failure(asyncpg_kwargs(unified, proxy.port, database="no_such_db"))
    assert direct[1] == "3D000"
    assert through == direct


def test_parameter_status_passes_unchanged(unified: PgCluster, proxy: ProxyThread) -> None:
    params = {"client_encoding": "utf-8", "application_name": "hello app", "DateStyle": "SQL, DMY"}
    statuses = []
    for port in (unified.port, proxy.port):
        client, messages = startup_trust(port, "trust_user", "app", **params)
        client.close()
        assert not errors_in(messages)
        statuses.append(parameter_statuses(messages))
    direct, through = statuses
    assert through == direct
    assert through["client_encoding"] == "UTF8"
    assert through["application_name"] == "hello app"
    assert through["DateStyle"] == "SQL, DMY"


def test_unknown_startup_parameters_reach_server(unified: PgCluster, proxy: ProxyThread) -> None:
    kwargs = psycopg_kwargs(
        unified, proxy.port, options="-c client_min_messages=warning -c work_mem=7MB",
        application_name="tp-auth-test", client_encoding="utf-8",
    )
    with psycopg.connect(**kwargs) as conn:
        assert conn.execute("SHOW client_min_messages").fetchone() == ("warning",)
        assert conn.execute("SHOW work_mem").fetchone() == ("7MB",)
        assert conn.execute("SHOW application_name").fetchone() == ("tp-auth-test",)
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.info.parameter_status("application_name") == "tp-auth-test"


def test_parameter_status_during_session(unified: PgCluster, proxy: ProxyThread) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port, autocommit=True)) as conn:
        conn.execute("SET application_name = 'changed later'")
        assert conn.info.parameter_status("application_name") == "changed later"
        conn.execute("SET TIME ZONE 'Asia/Kathmandu'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Kathmandu"


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [(c.PROTOCOL_3_2, {}), (c.PROTOCOL_3_0, {"_pq_.no_such_extension": "on"})],
    ids=["3.2", "_pq_-option"],
)
def test_negotiate_protocol_version_relayed(
    unified: PgCluster, proxy: ProxyThread, protocol: int, extra: dict[str, str]
) -> None:
    """A newer client meets an older server: NegotiateProtocolVersion reaches it unchanged."""
    seen = []
    for port in (unified.port, proxy.port):
        with RawClient.connect(port) as client:
            client.send_startup({"user": "trust_user", "database": "app", **extra}, protocol=protocol)
            messages = client.read_until({c.READY_FOR_QUERY})
        assert not errors_in(messages)
        seen.append([m.body for m in messages if m.type == c.NEGOTIATE_PROTOCOL_VERSION])
    assert seen[1] == seen[0] and len(seen[0]) == 1


def test_libpq_protocol_3_2_request(unified: PgCluster, proxy: ProxyThread) -> None:
    """libpq 18 asking for protocol 3.2 works through the proxy (downgraded by the server as direct)."""
    versions = []
    for port in (None, proxy.port):
        with psycopg.connect(**psycopg_kwargs(unified, port, max_protocol_version="latest")) as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == (conn.info.backend_pid,)
            versions.append(conn.pgconn.protocol_version)
    assert versions[1] == versions[0]


# --- BackendKeyData --------------------------------------------------------


def _session_keys(proxy: ProxyThread) -> dict[int, tuple[bytes, bytes]]:
    """pid -> (key the proxy gave the client, the server's real key)."""
    def collect() -> dict[int, tuple[bytes, bytes]]:
        out = {}
        for session in proxy.server.sessions:
            est = session.established
            if est is not None and est.real_key is not None:
                out[est.real_key.pid] = (est.proxy_key, est.real_key.key)
        return out

    return proxy.run(collect)


def test_backend_key_real_pid_own_secret(unified: PgCluster, proxy: ProxyThread) -> None:
    client, messages = startup_trust(proxy.port, "trust_user", "app", application_name="tp-keydata")
    with client:
        key = backend_key(messages)
        assert key is not None
        with psycopg.connect(**psycopg_kwargs(unified)) as direct:
            row = direct.execute(
                "SELECT usename, application_name FROM pg_stat_activity WHERE pid = %s", (key.pid,)
            ).fetchone()
        assert row == ("trust_user", "tp-keydata")
        proxy_key, real_key = _session_keys(proxy)[key.pid]
        assert key.key == proxy_key
        assert proxy_key != real_key
        assert len(proxy_key) == len(real_key)


def _wait_active(unified: PgCluster, pid: int, query_prefix: str) -> None:
    with psycopg.connect(**psycopg_kwargs(unified), autocommit=True) as direct:
        for _ in range(200):
            row = direct.execute(ACTIVITY, (pid,)).fetchone()
            if row and row[0] == "active" and row[1].startswith(query_prefix):
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {pid} never ran {query_prefix!r}")


def _run_sleep(client: RawClient, seconds: float) -> list[str]:
    """Run pg_sleep on a raw session; the SQLSTATEs of the errors it got."""
    client.query(f"SELECT pg_sleep({seconds})")
    answer = client.read_until({c.READY_FOR_QUERY}, timeout=60)
    assert answer and answer[-1].type == c.READY_FOR_QUERY
    return [e.sqlstate for e in errors_in(answer)]


def test_cancel_with_wrong_key_does_nothing(unified: PgCluster, proxy: ProxyThread) -> None:
    client, messages = startup_trust(proxy.port, "trust_user", "app")
    with client:
        key = backend_key(messages)
        assert key is not None
        _, real_key = _session_keys(proxy)[key.pid]
        wrong = bytes(b ^ 0xFF for b in key.key)
        result: list[list[str]] = []
        worker = threading.Thread(target=lambda: result.append(_run_sleep(client, 1.5)))
        worker.start()
        _wait_active(unified, key.pid, "SELECT pg_sleep(1.5)")
        send_cancel(proxy.port, key.pid, wrong)
        send_cancel(proxy.port, key.pid, real_key)  # the server's key is not the client's
        worker.join(30)
        assert result == [[]]
        # The key the client got does cancel.
        worker = threading.Thread(target=lambda: result.append(_run_sleep(client, 30)))
        worker.start()
        _wait_active(unified, key.pid, "SELECT pg_sleep(30)")
        send_cancel(proxy.port, key.pid, key.key)
        worker.join(30)
        assert result[1] == ["57014"]
