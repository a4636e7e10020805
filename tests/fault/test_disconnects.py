"""Clients that vanish leave no server connection behind.

500 clients go away without a word (RST or FIN, no Terminate), 20 at a time,
at every awkward moment: right after startup, before authentication ends,
with a query just sent, with ``pg_sleep(60)`` known to be running, inside a
COPY FROM STDIN (even mid-CopyData), mid extended-protocol batch, idle in a
transaction, and asyncpg connections terminated mid-query. The server is
then asked (``pg_stat_activity``, direct) how many of their backends remain:
after a bounded wait, none. A ``pg_sleep(60)`` that nobody cancelled would
still be there, so would an idle backend nobody closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest

from pgtenantproxy.embedded import PgCluster
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.messages import Query, StartupMessage, frame
from tests.fixtures.clients import asyncpg_kwargs
from tests.fixtures.clusters import PASSWORDS, psql
from tests.fixtures.proxy import ProxyThread
from tests.fixtures.wire import AsyncRaw, async_wait_for, backend_count

TOTAL = 500
CONCURRENCY = 20
APP = f"pgtp-vanish-{uuid.uuid4().hex[:8]}"
TABLE = "vanish_copy"

COPY_IN_RESPONSE = ord("G")


@pytest.fixture(scope="module")
def copy_table(unified: PgCluster) -> Iterator[str]:
    sql = f"CREATE TABLE {TABLE}(x int, t text); GRANT ALL ON {TABLE} TO trust_user"
    psql(unified, sql, dbname="app", user="app", password=PASSWORDS["app"])
    yield TABLE
    psql(unified, f"DROP TABLE {TABLE}", dbname="app", user="app", password=PASSWORDS["app"])


def _extended(sql: str) -> bytes:
    parse = frame(c.PARSE, b"\x00" + sql.encode() + b"\x00\x00\x00")
    bind = frame(c.BIND, b"\x00\x00" + struct.pack("!hhh", 0, 0, 0))
    execute = frame(c.EXECUTE, b"\x00" + struct.pack("!i", 0))
    return parse + bind + execute


# --- the ways to vanish, once the session is established ----------------------------


async def _idle(raw: AsyncRaw) -> None:
    pass


async def _query_just_sent(raw: AsyncRaw) -> None:
    raw.send(Query("SELECT pg_sleep(60)").build())
    await raw.writer.drain()


#: A notice is flushed to the client at once (results wait for ReadyForQuery):
#: once it arrives, the server is inside the statement, about to sleep.
SLEEP_AFTER_NOTICE = "DO $$ BEGIN RAISE NOTICE 'sleeping'; PERFORM pg_sleep(60); END $$"


async def _query_running(raw: AsyncRaw) -> None:
    raw.send(Query(SLEEP_AFTER_NOTICE).build())
    await raw.read_until({c.NOTICE_RESPONSE})


async def _mid_copy(raw: AsyncRaw) -> None:
    raw.send(Query(f"COPY {TABLE} FROM STDIN").build())
    answer = await raw.read_until({COPY_IN_RESPONSE, c.ERROR_RESPONSE})
    assert answer[-1].type == COPY_IN_RESPONSE, answer
    rows = b"".join(frame(c.COPY_DATA, f"{i}\trow {i}\n".encode()) for i in range(50))
    raw.send(rows + frame(c.COPY_DATA, b"9\tpartial\n" * 100)[:300])  # ends mid-CopyData
    await raw.writer.drain()


async def _mid_extended(raw: AsyncRaw) -> None:
    raw.send(_extended(SLEEP_AFTER_NOTICE))
    await raw.read_until({c.NOTICE_RESPONSE})  # no Sync: the batch is open and running


async def _extended_synced(raw: AsyncRaw) -> None:
    raw.send(_extended("SELECT pg_sleep(60)") + frame(c.SYNC, b""))
    await raw.writer.drain()


async def _in_transaction(raw: AsyncRaw) -> None:
    raw.send(Query(f"BEGIN; INSERT INTO {TABLE} VALUES (1, 'tx')").build())
    await raw.read_until({c.READY_FOR_QUERY})


AFTER_STARTUP: dict[str, Callable[[AsyncRaw], Awaitable[None]]] = {
    "idle": _idle,
    "query-just-sent": _query_just_sent,
    "query-running": _query_running,
    "mid-copy": _mid_copy,
    "mid-extended": _mid_extended,
    "extended-synced": _extended_synced,
    "in-transaction": _in_transaction,
}
KINDS = [*AFTER_STARTUP, "mid-startup", "asyncpg"]


async def vanish_raw(port: int, kind: str, reset: bool) -> None:
    raw = await AsyncRaw.connect(port)
    try:
        raw.send(StartupMessage.build({"user": "trust_user", "database": "app", "application_name": APP}))
        if kind == "mid-startup":
            await raw.writer.drain()
            return
        startup = await raw.read_until({c.READY_FOR_QUERY, c.ERROR_RESPONSE})
        assert startup and startup[-1].type == c.READY_FOR_QUERY, startup
        await AFTER_STARTUP[kind](raw)
    finally:
        raw.abort(reset=reset)


async def vanish_asyncpg(unified: PgCluster, port: int) -> None:
    conn = await asyncpg.connect(**asyncpg_kwargs(unified, port, server_settings={"application_name": APP}))
    running = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(60)"))
    await asyncio.sleep(0.05)
    conn.terminate()
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await running


def _server_state(proxy: ProxyThread) -> tuple[int, int]:
    return proxy.run(lambda: (len(proxy.server.sessions), len(proxy.server.cancels)))


@pytest.mark.slow
async def test_500_abrupt_disconnects_leave_no_backend(
    unified: PgCluster, proxy: ProxyThread, copy_table: str
) -> None:
    assert backend_count(unified, application_name=APP) == 0
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        kind = KINDS[i % len(KINDS)]
        async with gate:
            if kind == "asyncpg":
                await vanish_asyncpg(unified, proxy.port)
            else:
                await vanish_raw(proxy.port, kind, reset=bool(i % 2))

    results = await asyncio.gather(*(one(i) for i in range(TOTAL)), return_exceptions=True)
    failures = [(KINDS[i % len(KINDS)], r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not failures, failures[:5]

    gone = await async_wait_for(lambda: backend_count(unified, application_name=APP) == 0, timeout=20)
    assert gone, f"{backend_count(unified, application_name=APP)} backends of vanished clients remain"
    assert await async_wait_for(lambda: _server_state(proxy) == (0, 0), timeout=10), _server_state(proxy)
    # Nothing half-copied or half-committed was kept.
    rows = psql(unified, f"SELECT count(*) FROM {TABLE}", dbname="app", user="app", password=PASSWORDS["app"])
    assert rows.strip() == "0"


async def test_vanished_client_query_is_cancelled_not_left_running(
    unified: PgCluster, proxy: ProxyThread
) -> None:
    """One client, one running pg_sleep(60), one RST: its backend is gone well before 60 s."""
    app = f"{APP}-one"
    raw = await AsyncRaw.connect(proxy.port)
    raw.send(StartupMessage.build({"user": "trust_user", "database": "app", "application_name": app}))
    await raw.read_until({c.READY_FOR_QUERY})
    await _query_running(raw)
    assert backend_count(unified, application_name=app) == 1
    raw.abort()
    assert await async_wait_for(lambda: backend_count(unified, application_name=app) == 0, timeout=20)
