"""TLS on both legs: client -> proxy (the proxy's certificate) and proxy -> unified.

The two legs are independent: a client may use TLS to the proxy while the
proxy talks plain to the server, and the other way round. SCRAM works over a
TLS client session because the proxy withdraws SCRAM-SHA-256-PLUS (channel
binding would bind the exchange to a TLS session that ends at the proxy).
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster, create_cluster
from pgtenantproxy.protocol.messages import GSSENCRequest, SSLRequest, StartupMessage
from tests.fixtures.certs import CertPair, make_self_signed
from tests.fixtures.clients import asyncpg_kwargs, psycopg_kwargs, run_tool
from tests.fixtures.proxy import ProxyThread, proxy_config
from tests.fixtures.rawclient import RawClient, first_error

ACTIVITY = "SELECT state FROM pg_stat_activity WHERE pid = %s"
PG_STAT_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def certs() -> Iterator[CertPair]:
    directory = Path(tempfile.mkdtemp(prefix="pgtp-certs-"))
    try:
        yield make_self_signed(directory, for_server=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_proxy(unified: PgCluster, certs: CertPair) -> Iterator[ProxyThread]:
    cfg = proxy_config(unified, proxy={"tls_cert": str(certs.cert), "tls_key": str(certs.key)})
    with ProxyThread(cfg) as p:
        yield p


@pytest.fixture(scope="module")
def tls_server(certs: CertPair) -> Iterator[PgCluster]:
    """A second cluster that speaks TLS."""
    settings = {"ssl": "on", "ssl_cert_file": f"'{certs.cert}'", "ssl_key_file": f"'{certs.key}'"}
    cluster = create_cluster(settings=settings)
    try:
        yield cluster
    finally:
        cluster.destroy()


# --- client -> proxy --------------------------------------------------------


@pytest.mark.parametrize("user", ["app", "md5_user", "pw_user", "trust_user"])
def test_client_tls_with_every_auth_method(unified: PgCluster, tls_proxy: ProxyThread, user: str) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, tls_proxy.port, user=user, sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (user,)
        # The server leg is plain: TLS ends at the proxy.
        assert conn.execute(PG_STAT_SSL).fetchone() == (False,)


def test_client_tls_verify_full(unified: PgCluster, tls_proxy: ProxyThread, certs: CertPair) -> None:
    kwargs = psycopg_kwargs(unified, tls_proxy.port, sslmode="verify-full", sslrootcert=str(certs.cert))
    with psycopg.connect(**kwargs) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.info.parameter_status("client_encoding") == "UTF8"


def test_scram_over_tls_client_to_plain_server(unified: PgCluster, tls_proxy: ProxyThread) -> None:
    """libpq on TLS sends gs2 flag 'y' (binding possible, not offered): fine for a plain server."""
    kwargs = psycopg_kwargs(unified, tls_proxy.port, sslmode="require", channel_binding="prefer")
    with psycopg.connect(**kwargs) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    kwargs["channel_binding"] = "require"
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(**kwargs)


def test_psql_sslmode_require(unified: PgCluster, tls_proxy: ProxyThread) -> None:
    run = run_tool(unified, "psql", "-X", "-d", "app", "-c", r"\conninfo", "-c", "SELECT 42 AS answer",
                   port=tls_proxy.port, env={"PGSSLMODE": "require"})
    assert run.returncode == 0, run.stderr
    assert "SSL connection (protocol: TLSv1." in run.stdout
    assert "42" in run.stdout


def test_plain_proxy_refuses_ssl(unified: PgCluster, proxy: ProxyThread) -> None:
    run = run_tool(unified, "psql", "-X", "-d", "app", "-c", "SELECT 1", port=proxy.port,
                   env={"PGSSLMODE": "require"})
    assert run.returncode == 2
    assert "server does not support SSL, but SSL was required" in run.stderr
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port, sslmode="prefer")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_raw_negotiation_answers(proxy: ProxyThread, tls_proxy: ProxyThread) -> None:
    for port, expected in ((proxy.port, b"N"), (tls_proxy.port, b"S")):
        with RawClient.connect(port) as client:
            client.send(SSLRequest.build())
            assert client.read_raw(1) == expected
    with RawClient.connect(tls_proxy.port) as client:
        client.send(GSSENCRequest.build())
        assert client.read_raw(1) == b"N"


def test_plaintext_after_ssl_request_is_violation(tls_proxy: ProxyThread) -> None:
    """Data pipelined behind an SSLRequest could be injected by a man in the middle (CVE-2021-23214)."""
    with RawClient.connect(tls_proxy.port) as client:
        client.send(SSLRequest.build() + StartupMessage.build({"user": "app"}))
        error = first_error(client.read_until_close())
    assert error is not None
    assert (error.severity, error.sqlstate) == ("FATAL", "08P01")
    assert error.message == "received unencrypted data after SSL request"


def test_cancel_over_tls(unified: PgCluster, tls_proxy: ProxyThread) -> None:
    """cancel_safe() opens its cancel connection with the session's sslmode.

    So the proxy sees an SSLRequest, a TLS handshake, then the CancelRequest.
    """
    kwargs = psycopg_kwargs(unified, tls_proxy.port, sslmode="require", autocommit=True)
    with psycopg.connect(**kwargs) as conn:
        pid = conn.info.backend_pid
        done = threading.Event()

        def cancel_when_active() -> None:
            with psycopg.connect(**psycopg_kwargs(unified), autocommit=True) as direct:
                while not done.wait(0.02):
                    row = direct.execute(ACTIVITY, (pid,)).fetchone()
                    if row == ("active",):
                        break
            conn.cancel_safe(timeout=10)

        worker = threading.Thread(target=cancel_when_active)
        worker.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(30)")
        finally:
            done.set()
            worker.join(30)
        assert conn.execute("SELECT 1").fetchone() == (1,)


async def test_asyncpg_over_tls(unified: PgCluster, tls_proxy: ProxyThread, certs: CertPair) -> None:
    context = ssl.create_default_context(cafile=str(certs.cert))
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, tls_proxy.port, ssl=context))
    try:
        assert await conn.fetchval("SELECT current_user") == "app"
        rows = await conn.fetch("SELECT g FROM generate_series(1, 20000) g")
        assert len(rows) == 20000
    finally:
        await conn.close()


# --- proxy -> unified --------------------------------------------------------


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full", "prefer"])
def test_upstream_tls(tls_server: PgCluster, certs: CertPair, sslmode: str) -> None:
    unified_cfg = {"sslmode": sslmode, "sslrootcert": str(certs.cert), "database": "postgres"}
    with ProxyThread(proxy_config(tls_server, unified=unified_cfg)) as p:
        kwargs = psycopg_kwargs(tls_server, p.port, user="postgres", dbname="postgres")
        with psycopg.connect(**kwargs) as conn:
            assert not conn.pgconn.ssl_in_use
            assert conn.execute(PG_STAT_SSL).fetchone() == (True,)
            row = conn.execute("SELECT 'ü' || repeat('x', 100000)").fetchone()
            assert row is not None and len(row[0]) == 100001


def test_upstream_tls_required_but_refused(unified: PgCluster) -> None:
    with ProxyThread(proxy_config(unified, unified={"sslmode": "require"})) as p:
        with RawClient.connect(p.port) as client:
            client.send_startup({"user": "app", "database": "app"})
            error = first_error(client.read_until_close())
        assert error is not None
        assert (error.severity, error.sqlstate) == ("FATAL", "08006")
        assert "refused TLS" in error.message and "sslmode is require" in error.message
        with pytest.raises(psycopg.OperationalError, match="refused TLS"):
            psycopg.connect(**psycopg_kwargs(unified, p.port))


def test_upstream_prefer_falls_back_to_plain(unified: PgCluster) -> None:
    with ProxyThread(proxy_config(unified, unified={"sslmode": "prefer"})) as p:
        with psycopg.connect(**psycopg_kwargs(unified, p.port)) as conn:
            assert conn.execute(PG_STAT_SSL).fetchone() == (False,)


def _both_legs_proxy(tls_server: PgCluster, client_certs: CertPair, server_certs: CertPair) -> ProxyThread:
    cfg = proxy_config(
        tls_server,
        proxy={"tls_cert": str(client_certs.cert), "tls_key": str(client_certs.key)},
        unified={"sslmode": "verify-full", "sslrootcert": str(server_certs.cert), "database": "postgres"},
    )
    return ProxyThread(cfg)


def _superuser(tls_server: PgCluster, port: int, **extra: str) -> dict[str, Any]:
    options = {"sslmode": "require", **extra}
    return psycopg_kwargs(tls_server, port, user="postgres", dbname="postgres", **options)


def test_both_legs_tls_same_certificate(tls_server: PgCluster, certs: CertPair) -> None:
    """The proxy presents the server's certificate: SCRAM-SHA-256-PLUS passes through."""
    with _both_legs_proxy(tls_server, certs, certs) as p:
        with psycopg.connect(**_superuser(tls_server, p.port, channel_binding="require")) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute(PG_STAT_SSL).fetchone() == (True,)
            with conn.cursor() as cur:
                with cur.copy("COPY (SELECT g FROM generate_series(1, 50000) g) TO STDOUT") as copy:
                    data = b"".join(bytes(chunk) for chunk in copy)
            assert data.count(b"\n") == 50000


def test_both_legs_tls_other_certificate(tls_server: PgCluster, certs: CertPair) -> None:
    """Different certificates: -PLUS withdrawn; a binding-capable client is told why it cannot."""
    other = make_self_signed(Path(tempfile.mkdtemp(prefix="pgtp-certs-")), name="proxy")
    try:
        with _both_legs_proxy(tls_server, other, certs) as p:
            with pytest.raises(psycopg.OperationalError) as info:
                psycopg.connect(**_superuser(tls_server, p.port))
            assert "SCRAM channel binding cannot pass through the proxy" in str(info.value)
            assert "channel_binding=disable" in str(info.value)
            with pytest.raises(psycopg.OperationalError, match="channel binding is required"):
                psycopg.connect(**_superuser(tls_server, p.port, channel_binding="require"))
            with psycopg.connect(**_superuser(tls_server, p.port, channel_binding="disable")) as conn:
                assert conn.pgconn.ssl_in_use
                assert conn.execute(PG_STAT_SSL).fetchone() == (True,)
            # Without TLS to the proxy the client cannot bind and says so ('n'): fine.
            with psycopg.connect(**_superuser(tls_server, p.port, sslmode="disable")) as conn:
                assert conn.execute(PG_STAT_SSL).fetchone() == (True,)
    finally:
        shutil.rmtree(other.cert.parent, ignore_errors=True)
