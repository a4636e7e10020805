"""psycopg 3 through the proxy: pipeline mode, COPY, named cursors, LISTEN/NOTIFY, cancel.

Results are compared with the same code run direct. The real backend pid
reaches the client, so ``pg_backend_pid()``, ``conn.info.backend_pid`` and the
sender pid of a NOTIFY all agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors

from pgtenantproxy.embedded import PgCluster, free_port
from tests.fixtures.clients import psycopg_kwargs
from tests.fixtures.proxy import ProxyProcess, ProxyThread

ACTIVITY = "SELECT state, query FROM pg_stat_activity WHERE pid = %s"


def _both(unified: PgCluster, proxy: ProxyThread, body: Callable[[psycopg.Connection[Any]], Any]) -> Any:
    """Run ``body`` direct and through the proxy; assert equal results; return them."""
    results = []
    for port in (None, proxy.port):
        with psycopg.connect(**psycopg_kwargs(unified, port)) as conn:
            results.append(body(conn))
    assert results[1] == results[0]
    return results[1]


def test_backend_pid_is_real(unified: PgCluster, proxy: ProxyThread) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, proxy.port, application_name="tp-pid")) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        with psycopg.connect(**psycopg_kwargs(unified)) as direct:
            row = direct.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        assert row == ("tp-pid",)


def _pipeline(conn: psycopg.Connection[Any]) -> list[Any]:
    conn.autocommit = True
    out: list[Any] = []
    with conn.pipeline() as p:
        cur1 = conn.execute("SELECT %s::int + 1", (41,))
        cur2 = conn.execute("SELECT g, g::text FROM generate_series(1, %s) g", (5,))
        cur3 = conn.execute("SELECT %s::text, %s::jsonb", ("ü", '{"k": [1, 2]}'))
        p.sync()
        out += [cur1.fetchall(), cur2.fetchall(), cur3.fetchall()]
    # An error inside a pipeline aborts the rest of that batch only.
    with pytest.raises(pgerrors.DivisionByZero):
        with conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT 1/0")
            conn.execute("SELECT 2")
    out.append(conn.execute("SELECT 'usable again'").fetchall())
    with conn.pipeline(), conn.cursor() as cur:
        cur.executemany("SELECT %s::int * 2", [(i,) for i in range(50)], returning=True)
        rows = []
        while True:
            rows.append(cur.fetchone())
            if not cur.nextset():
                break
        out.append(rows)
    return out


def test_pipeline_mode(unified: PgCluster, proxy: ProxyThread) -> None:
    result = _both(unified, proxy, _pipeline)
    assert result[0] == [(42,)]
    assert result[3] == [("usable again",)]
    assert len(result[4]) == 50


def _copy_round_trip(conn: psycopg.Connection[Any]) -> tuple[list[Any], bytes, list[Any]]:
    conn.execute("CREATE TEMP TABLE c(id int, name text, data bytea)")
    with conn.cursor() as cur:
        with cur.copy("COPY c (id, name, data) FROM STDIN") as copy:
            for i in range(3000):
                copy.write_row((i, None if i % 10 == 0 else f"row {i} ☃", bytes([i % 256]) * (i % 50)))
        with cur.copy("COPY c TO STDOUT") as copy:
            raw = b"".join(bytes(chunk) for chunk in copy)
        cur.execute("CREATE TEMP TABLE c2 (LIKE c)")
        with cur.copy("COPY c TO STDOUT (FORMAT binary)") as out_copy:
            binary = b"".join(bytes(chunk) for chunk in out_copy)
        with cur.copy("COPY c2 FROM STDIN (FORMAT binary)") as in_copy:
            in_copy.write(binary)
        with cur.copy("COPY (SELECT id, name FROM c2 ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text"])
            rows = list(copy.rows())
        counts = cur.execute("SELECT count(*), count(name), sum(length(data)) FROM c2").fetchall()
    return rows, raw, counts


def test_copy_in_and_out(unified: PgCluster, proxy: ProxyThread) -> None:
    rows, raw, counts = _both(unified, proxy, _copy_round_trip)
    assert len(rows) == 3000 and rows[1] == (1, "row 1 ☃") and rows[10] == (10, None)
    assert raw.count(b"\n") == 3000
    assert counts[0][:2] == (3000, 2700)


def test_copy_from_failure_keeps_session(unified: PgCluster, proxy: ProxyThread) -> None:
    def body(conn: psycopg.Connection[Any]) -> Any:
        conn.autocommit = True
        conn.execute("CREATE TEMP TABLE f(id int)")
        with pytest.raises(pgerrors.QueryCanceled), conn.cursor() as cur:
            with cur.copy("COPY f FROM STDIN") as copy:
                copy.write_row((1,))
                raise psycopg.errors.QueryCanceled("client gave up")  # ends the COPY with CopyFail
        with pytest.raises(pgerrors.InvalidTextRepresentation), conn.cursor() as cur:
            with cur.copy("COPY f FROM STDIN") as copy:
                copy.write(b"1\nx\n")
        return conn.execute("SELECT count(*) FROM f").fetchall()

    assert _both(unified, proxy, body) == [(0,)]


def _named_cursors(conn: psycopg.Connection[Any]) -> list[Any]:
    out: list[Any] = []
    with conn.transaction(), conn.cursor("big") as cur:
        cur.itersize = 100
        cur.execute("SELECT g, repeat('x', g % 20) FROM generate_series(1, 1000) g")
        out.append(cur.fetchmany(3))
        cur.scroll(500, mode="absolute")
        out.append(cur.fetchone())
        out.append(sum(1 for _ in cur))
    with conn.cursor("held", withhold=True) as cur:
        cur.execute("SELECT %s::int * g FROM generate_series(1, 10) g", (3,))
        conn.commit()
        out.append(cur.fetchall())
    out.append(conn.execute("SELECT count(*) FROM pg_cursors").fetchone())
    return out


def test_server_side_cursors(unified: PgCluster, proxy: ProxyThread) -> None:
    result = _both(unified, proxy, _named_cursors)
    assert result[0] == [(1, "x"), (2, "xx"), (3, "xxx")]
    assert result[2] == 499
    assert result[4] == (0,)


def test_listen_notify_carries_real_pid(unified: PgCluster, proxy: ProxyThread) -> None:
    kwargs = psycopg_kwargs(unified, proxy.port, autocommit=True)
    with psycopg.connect(**kwargs) as listener, psycopg.connect(**kwargs) as sender:
        listener.execute("LISTEN tp_channel")
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()
        assert sender_pid == (sender.info.backend_pid,)
        sender.execute("SELECT pg_notify('tp_channel', 'payload ✓')")
        sender.execute("NOTIFY tp_channel, 'second'")
        got = list(listener.notifies(timeout=10, stop_after=2))
        assert [(n.channel, n.payload, n.pid) for n in got] == [
            ("tp_channel", "payload ✓", sender.info.backend_pid),
            ("tp_channel", "second", sender.info.backend_pid),
        ]
        # A notification to oneself, delivered with the query's answer.
        listener.execute("NOTIFY tp_channel, 'self'")
        got = list(listener.notifies(timeout=10, stop_after=1))
        assert [(n.payload, n.pid) for n in got] == [("self", listener.info.backend_pid)]


def _cancel_sleep(unified: PgCluster, port: int, how: str) -> None:
    with psycopg.connect(**psycopg_kwargs(unified, port, autocommit=True)) as conn:
        pid = conn.info.backend_pid
        canceller = threading.Thread(target=_cancel_when_active, args=(unified, conn, pid, how))
        canceller.start()
        try:
            with pytest.raises(pgerrors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(30)")
        finally:
            canceller.join(30)
        assert info.value.sqlstate == "57014"
        assert conn.execute("SELECT 'still usable', pg_backend_pid()").fetchone() == ("still usable", pid)


def test_cancel_safe(unified: PgCluster, proxy: ProxyThread) -> None:
    """libpq 17's non-blocking cancel API (PQcancelStart/Poll) through the proxy."""
    _cancel_sleep(unified, proxy.port, "cancel_safe")


def test_cancel_blocking(unified: PgCluster, tmp_path: Path) -> None:
    """The classic PQcancel. It holds the GIL while it waits for the proxy to
    close the cancel connection, so the proxy must run in another process here."""
    port = free_port()
    config = (
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nshutdown_timeout_ms = 2000\n'
        f'[unified]\nhost = "{unified.host}"\nport = {unified.port}\nsslmode = "disable"\ndatabase = "app"\n'
    )
    proc = ProxyProcess(config, tmp_path).start(port)
    try:
        _cancel_sleep(unified, port, "cancel")
    finally:
        proc.stop()


def _cancel_when_active(unified: PgCluster, conn: psycopg.Connection[Any], pid: int, how: str) -> None:
    with psycopg.connect(**psycopg_kwargs(unified), autocommit=True) as direct:
        for _ in range(500):
            row = direct.execute(ACTIVITY, (pid,)).fetchone()
            if row == ("active", "SELECT pg_sleep(30)"):
                break
            threading.Event().wait(0.02)
    if how == "cancel":
        conn.cancel()
    else:
        conn.cancel_safe(timeout=10)


def test_terminate_backend_by_pid(unified: PgCluster, proxy: ProxyThread) -> None:
    """The pid the client holds is usable with pg_terminate_backend (PgBouncer's fake pids are not)."""
    kwargs = psycopg_kwargs(unified, proxy.port, autocommit=True)
    with psycopg.connect(**kwargs) as victim, psycopg.connect(**kwargs) as admin:
        killed = admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,)).fetchone()
        assert killed == (True,)
        with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator"):
            victim.execute("SELECT 1")


def test_binary_and_text_results_match(unified: PgCluster, proxy: ProxyThread) -> None:
    sql = ("SELECT 1::int8, 'ü'::text, NULL::int, '1.5'::numeric, ARRAY[[1,2],[3,4]], "
           "'{\"a\": [1, null]}'::jsonb, '\\x00ff'::bytea, '2024-01-02 03:04:05+02'::timestamptz, "
           "'1 day 2 hours'::interval, 'f'::bool, '192.168.0.1/24'::inet")

    def body(conn: psycopg.Connection[Any]) -> Any:
        with conn.cursor() as text_cur, conn.cursor(binary=True) as bin_cur:
            return text_cur.execute(sql).fetchall(), bin_cur.execute(sql).fetchall()

    text_rows, bin_rows = _both(unified, proxy, body)
    assert text_rows == bin_rows


def test_backend_ends_with_client(unified: PgCluster, proxy: ProxyThread) -> None:
    conn = psycopg.connect(**psycopg_kwargs(unified, proxy.port))
    pid = conn.info.backend_pid
    conn.close()
    with psycopg.connect(**psycopg_kwargs(unified), autocommit=True) as direct:
        for _ in range(250):
            if direct.execute(ACTIVITY, (pid,)).fetchone() is None:
                return
            threading.Event().wait(0.02)
    raise AssertionError(f"backend {pid} outlived its client")
