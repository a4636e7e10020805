"""The proxy's own CPU per unit on each path, in one process, with no sockets.

Usage::

    python bench/session_micro.py              # 20000 units per path, 5 rounds
    python bench/session_micro.py --profile    # cProfile of the routed unified path

Method: the bytes pgbench sends for one select-only transaction in the extended
protocol (``Parse/Bind/Describe/Execute/Sync`` of ``SELECT ... WHERE shop_id =
$1``) and the bytes a server answers are fed, unit after unit, to

* ``plain``: the plain relay (:class:`pgtenantproxy.server.relay.Relay`),
* ``routed-unified``: the session machine with the real dispatcher (routing
  core, catalog snapshot, metrics recorder), strategy ``unified``,
* ``routed-tenant``: the same with strategy ``tenant``, the answer coming from
  a tenant link (warm: nothing to prepare, settings applied).

Endpoints are stand-ins that drop what is written: what is measured is the
Python work per unit between the socket reads and writes, which is what the
proxy adds to a relay (``bench/routing_bench.py`` measures the whole path with
real servers). Rounds interleave the paths; the median per path is reported,
with the ratios the session-engine issue sets targets for.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import struct
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmark this checkout

from pgtenantproxy.config import MetricsSection, parse_config
from pgtenantproxy.dispatch.catalog import CatalogSnapshot, TenantCatalog
from pgtenantproxy.dispatch.dispatcher import Dispatcher
from pgtenantproxy.lifecycle.phases import ShopPhase
from pgtenantproxy.metrics.recorder import QueryRecorder
from pgtenantproxy.pools.pool import PoolManager
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.protocol.messages import Parse, ReadyForQuery, frame
from pgtenantproxy.routing import Router
from pgtenantproxy.server.relay import Relay
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.machine import SessionMachine

SQL = "SELECT count(*), sum(amount) FROM orders WHERE shop_id = $1"
SHOPS = 20


def client_unit(shop: int) -> bytes:
    value = str(shop).encode()
    bind = b"\x00\x00" + struct.pack("!h", 0) + struct.pack("!h", 1) + struct.pack("!i", len(value)) + value
    bind += struct.pack("!h", 0)
    return (
        Parse("", SQL, ()).build()
        + frame(c.BIND, bind)
        + frame(c.DESCRIBE, b"P\x00")
        + frame(c.EXECUTE, b"\x00" + struct.pack("!i", 0))
        + frame(c.SYNC, b"")
    )


def server_answer(status: int = c.TX_IDLE) -> bytes:
    row_desc = frame(ord("T"), struct.pack("!h", 2) + b"count\x00" + b"\x00" * 18 + b"sum\x00" + b"\x00" * 18)
    values = struct.pack("!i", 3) + b"200" + struct.pack("!i", 5) + b"99.99"
    data_row = frame(ord("D"), struct.pack("!h", 2) + values)
    return (
        frame(ord("1"), b"")
        + frame(ord("2"), b"")
        + row_desc
        + data_row
        + frame(ord("C"), b"SELECT 1\x00")
        + ReadyForQuery(status).build()
    )


class Sink:
    """An endpoint stand-in: drops what is written, remembers nothing."""

    peer = None

    def write(self, data: bytes) -> None:
        pass

    send = write

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def start_relay(self, sink: Callable[[bytes], None], pending: bytes = b"") -> None:
        pass


@dataclass
class Link:
    prepared: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    broken: bool = False

    @property
    def usable(self) -> bool:
        return True


class Effects:
    """The driver's part, synchronous: a tenant link at once, writes dropped."""

    def __init__(self) -> None:
        self.link = Link()
        self.machine: SessionMachine | None = None

    def to_client(self, data: bytes) -> None:
        pass

    def to_unified(self, data: bytes) -> None:
        pass

    def borrow(self, shop_id: int) -> Link:
        return self.link

    def attach(self, link: Link) -> None:
        pass

    def to_tenant(self, link: Link, data: bytes) -> None:
        pass

    def detach(self, link: Link) -> None:
        pass

    def give_back(self, shop_id: int, link: Link, *, reusable: bool, failed: bool) -> None:
        pass

    def cancel_tenant(self, link: Link) -> None:
        pass

    def set_timer(self, seconds: float) -> None:
        pass

    def clear_timer(self) -> None:
        pass

    def pause_client(self) -> None:
        pass

    def resume_client(self) -> None:
        pass

    def end(self, reason: str) -> None:
        raise RuntimeError(reason)

    def violation(self, exc: ProtocolViolation) -> None:
        raise exc


def dispatcher(strategy: str) -> Dispatcher:
    config = parse_config(tomllib.loads(
        f"""
[unified]
host = "127.0.0.1"
port = 5432
database = "bench"
[tenancy]
tenant_tables = ["orders"]
[routing]
strategy = "{strategy}"
[[tenant_servers]]
host = "127.0.0.1"
port = 5433
"""
    ), environ={})
    phases = {s: ShopPhase(s, phase="reads_on_tenant") for s in range(1, SHOPS + 1)}
    snapshot = CatalogSnapshot(
        tenant_tables=frozenset({"public.orders"}), ready=frozenset(phases), version=1, phases=phases
    )
    catalog = TenantCatalog(config.tenancy, snapshot=snapshot)

    async def no_target(shop_id: int, refresh: bool) -> object:
        raise RuntimeError("no connections in the micro-benchmark")

    pools = PoolManager(config.pools, no_target)  # type: ignore[arg-type]
    disp = Dispatcher(Router.from_config(config), catalog, pools, tenant_timeout=5.0)
    disp.metrics = QueryRecorder(MetricsSection(), tenant_tables=lambda: snapshot.tenant_tables)
    return disp


def run_plain(n: int) -> float:
    client, server = Sink(), Sink()
    relay = Relay(client, server, on_violation=print, on_idle=lambda: None, on_terminate=lambda: None)  # type: ignore[arg-type]
    units = [client_unit(1 + i % SHOPS) for i in range(SHOPS)]
    answer = server_answer()
    started = time.process_time()
    for i in range(n):
        relay.from_client(units[i % SHOPS])
        relay.from_server(answer)
    return (time.process_time() - started) / n


def run_routed(n: int, strategy: str) -> float:
    fx = Effects()
    facts = SessionFacts(startup={"user": "bench", "database": "bench"},
                         settings={"client_encoding": "UTF8", "DateStyle": "ISO, MDY"})
    fx.link.settings.update(facts.shared_settings())
    machine = SessionMachine(dispatcher(strategy), facts, fx)  # type: ignore[arg-type]
    units = [client_unit(1 + i % SHOPS) for i in range(SHOPS)]
    answer = server_answer()
    feed_answer = machine.tenant_data if strategy == "tenant" else machine.unified_data
    for i in range(200):  # warm the analysis cache
        machine.client_data(units[i % SHOPS])
        feed_answer(answer)
    started = time.process_time()
    for i in range(n):
        machine.client_data(units[i % SHOPS])
        feed_answer(answer)
    return (time.process_time() - started) / n


PATHS: dict[str, Callable[[int], float]] = {
    "plain": run_plain,
    "routed-unified": lambda n: run_routed(n, "unified"),
    "routed-tenant": lambda n: run_routed(n, "tenant"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the routed paths instead")
    args = parser.parse_args()
    if args.profile:
        for name in ("routed-unified", "routed-tenant"):
            prof = cProfile.Profile()
            prof.runcall(PATHS[name], args.units)
            print(f"== {name}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    results: dict[str, list[float]] = {name: [] for name in PATHS}
    for r in range(args.rounds):
        order = list(PATHS)[r % len(PATHS):] + list(PATHS)[: r % len(PATHS)]
        for name in order:
            results[name].append(PATHS[name](args.units) * 1e6)
    med = {name: statistics.median(v) for name, v in results.items()}
    print("| path | proxy CPU per unit (median) |")
    print("|---|---:|")
    for name, value in med.items():
        print(f"| {name} | {value:.1f} us |")
    print()
    print(f"routed unified / plain: {med['routed-unified'] / med['plain']:.2f} (target <= 1.1)")
    print(f"tenant / routed unified: {med['routed-tenant'] / med['routed-unified']:.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
