"""pgbench through the proxy: initialisation (COPY) and all three query modes.

pgbench checks every answer itself; a transaction the proxy garbled counts as
failed or aborts the client. So: every transaction processed, none failed,
for ``-M simple``, ``-M extended`` and ``-M prepared``, with several clients
and threads at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clients import run_tool
from tests.fixtures.proxy import ProxyThread

CLIENTS, THREADS, TRANSACTIONS = 4, 2, 500


@pytest.fixture(scope="module")
def bench_tables(unified: PgCluster, proxy: ProxyThread) -> Iterator[None]:
    """pgbench tables in db ``app``, created through the proxy (COPY FROM STDIN)."""
    init = run_tool(unified, "pgbench", "-i", "-s", "1", "-q", "app", port=proxy.port)
    assert init.returncode == 0, init.stderr
    assert "done" in init.stderr
    yield
    run_tool(unified, "pgbench", "-i", "-I", "d", "app")


def _processed(output: str) -> tuple[int, int]:
    match = re.search(r"number of transactions actually processed: (\d+)/(\d+)", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def test_init_loaded_rows(unified: PgCluster, proxy: ProxyThread, bench_tables: None) -> None:
    run = run_tool(unified, "psql", "-X", "-At", "-d", "app", "-c",
                   "SELECT count(*) FROM pgbench_accounts", port=proxy.port)
    assert run.stdout.strip() == "100000"


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_mode(unified: PgCluster, proxy: ProxyThread, bench_tables: None, mode: str) -> None:
    run = run_tool(
        unified, "pgbench", "-n", "-M", mode, "-c", str(CLIENTS), "-j", str(THREADS),
        "-t", str(TRANSACTIONS), "app", port=proxy.port, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    total = CLIENTS * TRANSACTIONS
    assert _processed(run.stdout) == (total, total)
    assert re.search(r"number of failed transactions: 0 \(", run.stdout), run.stdout
    assert "error" not in run.stderr.lower()
    assert f"query mode: {mode}" in run.stdout


def test_pgbench_select_only_with_reconnects(
    unified: PgCluster, proxy: ProxyThread, bench_tables: None
) -> None:
    """``-C``: a new connection (full SCRAM handshake) for every transaction."""
    run = run_tool(
        unified, "pgbench", "-n", "-S", "-C", "-M", "extended", "-c", "2", "-j", "2", "-t", "50", "app",
        port=proxy.port, timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert _processed(run.stdout) == (100, 100)
