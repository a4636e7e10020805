"""A steady, app-like load through the proxy, with counters: what the migration must not disturb.

A few concurrent asyncpg clients connect through the proxy as the application
role. *Readers* only read (recent repairs, open repairs, customer counts:
``... WHERE shop_id = $1``, the shape tenant routing recognises); *writers*
insert and update repairs and customers (and read now and then). Every
statement names its shop on every tenant table it touches (``shop_id = $1``
on the updated table too, not only in a subquery), so the proxy can tell,
after a shop's write cutover, that the statement belongs on that shop's
database; there are no explicit transactions (autocommit). Every
client visits every shop in turn, with a short pause between queries so the
load stays steady instead of saturating the machine.

Every query counts: :class:`Counters` holds reads, writes and failures, and
the first few distinct failure messages (error texts from the server or the
driver; they never contain credentials). A client whose connection breaks
reconnects and carries on, so a failure is counted, never hidden.
:meth:`Workload.leave` takes a shop out of the rotation for a while (the
walkthrough's restore: a restore needs the shop's writes quiet while it
catches up and verifies), :meth:`Workload.resume` puts it back; a retired
shop stays in the rotation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 5
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

Query = Callable[[asyncpg.Connection, int, random.Random], Awaitable[Any]]


async def recent_repairs(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.fetch(
        "SELECT id, status, price FROM repairs WHERE shop_id = $1 ORDER BY id DESC LIMIT 10", shop)


async def open_repairs(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.fetchval(
        "SELECT count(*) FROM repairs WHERE shop_id = $1 AND status <> 'returned'", shop)


async def customer_count(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.fetchval("SELECT count(*) FROM customers WHERE shop_id = $1", shop)


async def new_repair(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.execute(
        "INSERT INTO repairs (shop_id, customer_id, device_model_id, price)"
        " SELECT $1, max(id), $2, $3 FROM customers WHERE shop_id = $1",
        shop, rnd.randint(1, 24), rnd.randint(2000, 30000) / 100)


async def advance_repair(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.execute(
        "UPDATE repairs SET status = $2, notes = notes || jsonb_build_object('step', $3::int)"
        " WHERE shop_id = $1 AND id = (SELECT max(id) FROM repairs WHERE shop_id = $1)",
        shop, rnd.choice(("diagnosed", "repaired", "returned")), rnd.randint(1, 9))


async def new_customer(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.execute(
        "INSERT INTO customers (shop_id, name, phone) VALUES ($1, $2, $3)",
        shop, f"Walk-in {rnd.randint(1, 99999)}", f"+49 30 {rnd.randint(200000, 999999)}")


async def update_customer(conn: asyncpg.Connection, shop: int, rnd: random.Random) -> Any:
    return await conn.execute(
        "UPDATE customers SET phone = $2"
        " WHERE shop_id = $1 AND id = (SELECT min(id) FROM customers WHERE shop_id = $1)",
        shop, f"+49 30 {rnd.randint(200000, 999999)}")


READS: tuple[Query, ...] = (recent_repairs, open_repairs, customer_count)
WRITES: tuple[Query, ...] = (new_repair, advance_repair, new_customer, update_customer)


@dataclass
class Counters:
    reads: int = 0
    writes: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return self.reads + self.writes

    def failure(self, exc: BaseException) -> None:
        self.failed += 1
        text = f"{type(exc).__name__}: {exc}"[:200]
        if text not in self.errors and len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)


class Workload:
    def __init__(
        self,
        connect_kwargs: dict[str, Any],
        shops: Sequence[int],
        *,
        readers: int = 3,
        writers: int = 2,
        pause_s: float = 0.01,
    ) -> None:
        self.connect_kwargs = connect_kwargs
        self.shops = tuple(shops)
        self.readers = readers
        self.writers = writers
        self.pause_s = pause_s
        self.counters = Counters()
        #: Shops the clients leave alone for now (see :meth:`leave`).
        self.left: set[int] = set()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect every client (a failure here is raised: the proxy is not serving) and start them."""
        conns = await asyncio.gather(
            *(asyncpg.connect(**self.connect_kwargs) for _ in range(self.readers + self.writers)))
        loop = asyncio.get_running_loop()
        for n, conn in enumerate(conns):
            writer = n >= self.readers
            self._tasks.append(loop.create_task(self._client(conn, n, writer), name=f"workload-{n}"))

    def leave(self, shop: int) -> None:
        """Stop querying ``shop`` (the other shops go on) until :meth:`resume`."""
        self.left.add(shop)

    def resume(self, shop: int) -> None:
        self.left.discard(shop)

    async def stop(self) -> None:
        self._stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _client(self, conn: asyncpg.Connection | None, n: int, writer: bool) -> None:
        rnd = random.Random(n)
        shops = itertools.cycle(self.shops[n % len(self.shops):] + self.shops[:n % len(self.shops)])
        try:
            while not self._stopping.is_set():
                if conn is None or conn.is_closed():
                    conn = await self._reconnect()
                    if conn is None:
                        continue
                shop = next(shops)
                if shop in self.left:
                    await asyncio.sleep(self.pause_s)
                    continue
                query, is_write = self._pick(rnd, writer)
                try:
                    await query(conn, shop, rnd)
                except _FAILURES as exc:
                    self.counters.failure(exc)
                else:
                    if is_write:
                        self.counters.writes += 1
                    else:
                        self.counters.reads += 1
                await asyncio.sleep(self.pause_s)
        finally:
            if conn is not None and not conn.is_closed():
                await _close(conn)

    @staticmethod
    def _pick(rnd: random.Random, writer: bool) -> tuple[Query, bool]:
        if writer and rnd.random() < 0.8:
            return rnd.choice(WRITES), True
        return rnd.choice(READS), False

    async def _reconnect(self) -> asyncpg.Connection | None:
        try:
            return await asyncpg.connect(**self.connect_kwargs)
        except _FAILURES as exc:
            self.counters.failure(exc)
            await asyncio.sleep(0.5)
            return None


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except Exception:
        conn.terminate()
