"""Garbage on the wire: the sender gets FATAL 08P01 and is dropped; nobody else notices.

Each test sends one kind of malformed input through a raw socket (before the
startup packet, during authentication, or in an established session) and
checks the exact ErrorResponse, that the proxy hangs up, and that the
server backend of that client is gone, while a psycopg session opened
beforehand and an asyncpg session busy at the same time carry on.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.messages import Query, StartupMessage
from tests.fixtures.clients import asyncpg_kwargs, psycopg_kwargs
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.rawclient import RawClient, backend_key, errors_in, first_error, startup_trust
from tests.fixtures.wire import backend_count, wait_for

APP = f"pgtp-garbage-{uuid.uuid4().hex[:8]}"
#: Type bytes PostgreSQL never accepts from a client.
INVALID_TYPES = sorted(set(range(256)) - set(c.FRONTEND_LIMITS))[::13]


def header(mtype: int, length: int) -> bytes:
    return bytes((mtype,)) + struct.pack("!i", length)


@pytest.fixture(scope="module")
def bystander(unified: PgCluster, proxy: ProxyThread) -> Iterator[psycopg.Connection[Any]]:
    """A well-behaved session through the same proxy, open across every test."""
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port), autocommit=True) as conn:
        yield conn


def assert_carries_on(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT count(*), sum(g) FROM generate_series(1, 1000) g").fetchone()
    assert row == (1000, 500500)


def session_count(proxy: ProxyThread) -> int:
    return proxy.run(lambda: len(proxy.server.sessions))


def expect_fatal(client: RawClient, sqlstate: str, message: str) -> None:
    """The proxy answers with exactly this FATAL error, then hangs up."""
    got = client.read_until_close(timeout=10)
    err = first_error(got)
    assert err is not None, got
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", sqlstate, message)
    assert client.closed_by_peer


# --- after authentication ---------------------------------------------------------

AFTER_AUTH = [
    pytest.param(header(ord("Z"), 4), "invalid frontend message type 90", id="unknown-type"),
    pytest.param(header(0, 4), "invalid frontend message type 0", id="type-zero"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid frontend message type 71", id="http"),
    pytest.param(b"Q\xff\xff\xff\xff", "invalid message length", id="negative-length"),
    pytest.param(header(c.QUERY, 3), "invalid message length", id="length-3"),
    pytest.param(b"Q\x7f\xff\xff\xff", "invalid message length", id="huge-length"),
    pytest.param(header(c.SYNC, 65536), "invalid message length", id="sync-over-small-limit"),
    pytest.param(Query("SELECT 1").build() + header(ord("Z"), 4), "invalid frontend message type 90",
                 id="after-a-valid-query"),
    pytest.param(b"P" + struct.pack("!i", 17) + b"s\x00SELECT 1\x00\x00\x00" + header(0xFF, 4),
                 "invalid frontend message type 255", id="after-a-valid-parse"),
]


@pytest.mark.parametrize(("garbage", "message"), AFTER_AUTH)
def test_garbage_after_auth(
    unified: PgCluster, proxy: ProxyThread, bystander: psycopg.Connection[Any], garbage: bytes, message: str
) -> None:
    assert_carries_on(bystander)
    client, startup = startup_trust(proxy.port, "trust_user", "app", application_name=APP)
    with client:
        key = backend_key(startup)
        assert key is not None and startup[-1].type == c.READY_FOR_QUERY
        assert backend_count(unified, pid=key.pid) == 1
        client.send(garbage)
        expect_fatal(client, "08P01", message)
    assert wait_for(lambda: backend_count(unified, pid=key.pid) == 0, timeout=10)
    assert_carries_on(bystander)


def test_garbage_byte_by_byte(proxy: ProxyThread, bystander: psycopg.Connection[Any]) -> None:
    """A bad header that arrives one byte per packet is caught all the same."""
    client, startup = startup_trust(proxy.port, "trust_user", "app", application_name=APP)
    assert startup and startup[-1].type == c.READY_FOR_QUERY, errors_in(startup)
    with client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in header(ord("y"), 4):
            client.send(bytes((byte,)))
        expect_fatal(client, "08P01", "invalid frontend message type 121")
    assert_carries_on(bystander)


def test_garbage_while_a_query_runs_cancels_it(unified: PgCluster, proxy: ProxyThread) -> None:
    """The sender of garbage is dropped; the query it had running does not outlive it."""
    app = f"{APP}-busy"
    client, _ = startup_trust(proxy.port, "trust_user", "app", application_name=app)
    with client:
        client.query("DO $$ BEGIN RAISE NOTICE 'sleeping'; PERFORM pg_sleep(60); END $$")
        assert client.read_until({c.NOTICE_RESPONSE})[-1].type == c.NOTICE_RESPONSE
        client.send(header(ord("Z"), 4))
        expect_fatal(client, "08P01", "invalid frontend message type 90")
    assert wait_for(lambda: backend_count(unified, application_name=app) == 0, timeout=20)


async def test_busy_sessions_carry_on_during_a_garbage_storm(unified: PgCluster, proxy: ProxyThread) -> None:
    """An asyncpg session mid-query and mid-transaction is untouched by 20 garbage senders."""
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, proxy.port))
    try:
        await conn.execute("CREATE TEMP TABLE kept(x int)")
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO kept VALUES (1)")
        busy = asyncio.ensure_future(
            conn.fetchval("SELECT count(*) FROM (SELECT pg_sleep(0.5)) s, generate_series(1, 100)")
        )

        def garbage_sender(i: int) -> None:
            client, _ = startup_trust(proxy.port, "trust_user", "app", application_name=APP)
            with client:
                client.send(header(INVALID_TYPES[i % len(INVALID_TYPES)], 4))
                err = first_error(client.read_until_close(timeout=10))
                assert err is not None and err.sqlstate == "08P01"

        await asyncio.gather(*(asyncio.to_thread(garbage_sender, i) for i in range(20)))
        assert await busy == 100
        await conn.execute("INSERT INTO kept VALUES (2)")
        await tx.commit()
        assert await conn.fetchval("SELECT sum(x) FROM kept") == 3
    finally:
        await conn.close()


# --- during authentication ----------------------------------------------------------


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        pytest.param(Query("SELECT 1").build(), "invalid frontend message type 81",
                     id="query-instead-of-password"),
        pytest.param(header(c.PASSWORD, 100_000), "invalid message length", id="oversized-password"),
        pytest.param(header(c.PASSWORD, -7), "invalid message length", id="negative-password-length"),
    ],
)
def test_garbage_during_authentication(
    unified: PgCluster, proxy: ProxyThread, bystander: psycopg.Connection[Any], garbage: bytes, message: str
) -> None:
    app = f"{APP}-auth"
    with RawClient.connect(proxy.port) as client:
        client.send_startup({"user": "md5_user", "database": "app", "application_name": app})
        request = client.read_message()
        assert request is not None and request.type == c.AUTHENTICATION  # md5 password request
        client.send(garbage)
        expect_fatal(client, "08P01", message)
    assert wait_for(lambda: auth_backends("md5_user") == 0, timeout=10)
    assert_carries_on(bystander)


def auth_backends(user: str) -> int:
    """Server processes still authenticating ``user`` (not in pg_stat_activity yet): by process title."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes()
        except OSError:
            continue
        if title.startswith(f"postgres: {user} ".encode()):
            count += 1
    return count


# --- instead of a startup packet --------------------------------------------------------

LENGTH_ERROR = "invalid length of startup packet"


@pytest.mark.parametrize(
    ("garbage", "sqlstate", "message"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "08P01", LENGTH_ERROR, id="http"),
        pytest.param(b"\x00\x00\x00\x04", "08P01", LENGTH_ERROR, id="length-4"),
        pytest.param(b"\x00\x00\x00\x00", "08P01", LENGTH_ERROR, id="length-0"),
        pytest.param(b"\xff\xff\xff\xff", "08P01", LENGTH_ERROR, id="negative"),
        pytest.param(struct.pack("!I", 10_001) + b"x" * 200, "08P01", LENGTH_ERROR, id="over-10000"),
        pytest.param(StartupMessage.build({"user": "app"}, 2 << 16), "0A000",
                     "unsupported frontend protocol 2.0: server supports 3.0 to 3.2", id="protocol-2.0"),
        pytest.param(StartupMessage.build({"database": "app"}), "28000",
                     "no PostgreSQL user name specified in startup packet", id="no-user"),
        pytest.param(struct.pack("!II", 16, c.PROTOCOL_3_0) + b"user\x00app", "08P01",
                     "invalid startup packet layout: expected terminator as last byte",
                     id="unterminated-params"),
        pytest.param(struct.pack("!IIi", 15, c.CANCEL_REQUEST_CODE, 1) + b"abc", "08P01",
                     "invalid length of cancel request packet", id="short-cancel"),
        pytest.param(b"\x00\x00\x00\x08\x04\xd2\x16\x2fGARBAGE", "08P01",
                     "received unencrypted data after SSL request", id="data-after-sslrequest"),
    ],
)
def test_garbage_instead_of_startup(
    proxy: ProxyThread, bystander: psycopg.Connection[Any], garbage: bytes, sqlstate: str, message: str
) -> None:
    with RawClient.connect(proxy.port) as client:
        client.send(garbage)
        got = client.read_until_close(timeout=10)
    err = first_error(got)
    assert err is not None, got
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", sqlstate, message)
    assert_carries_on(bystander)


def test_truncated_startup_then_close_leaves_nothing(
    proxy: ProxyThread, bystander: psycopg.Connection[Any]
) -> None:
    before = session_count(proxy)
    for data in (b"", b"\x00", b"\x00\x00\x00\x30\x00\x03", StartupMessage.build({"user": "app"})[:-3]):
        with RawClient.connect(proxy.port) as client:
            if data:
                client.send(data)
    assert wait_for(lambda: session_count(proxy) <= before, timeout=10)
    assert_carries_on(bystander)


def test_no_session_or_backend_left_behind(unified: PgCluster, proxy: ProxyThread,
                                          bystander: psycopg.Connection[Any]) -> None:
    """After every garbage test of the module: only the bystander remains."""
    assert wait_for(lambda: session_count(proxy) == 1, timeout=10)
    assert wait_for(lambda: backend_count(unified, application_name=APP) == 0, timeout=10)
