"""Which shop owns a key: the proxy's side of routing by key (Vitess's lookup vindex, in place).

A key's shop is found, in this order:

1. **id blocks** (no I/O): an integer key inside a block reserved for a shop's
   own database was drawn there (:mod:`pgtenantproxy.lifecycle.keys`);
2. **the cache**: a bounded LRU of keys already looked up (a key never changes
   shop: keys are unique, and a row's shop is only changed by a statement the
   router refuses as touching two shops);
3. **unified's own table** (one indexed query for all of a unit's keys of a
   table): every shop's rows but retired ones, reverse-mirrored ones included;
4. **the key directory** (``key_directory`` ranges and ``key_directory_text``):
   the keys retired shops had when they were retired;
5. **confirmation**: a key found nowhere above may have been created on a
   cut-over shop's own database and not yet reverse-mirrored (or created after
   retirement with an app-assigned key), so it is looked for on every
   ``tenant_primary``/``retired`` shop's database, at most ``[routing]
   key_confirm_limit`` of them (beyond that the statement is refused, never
   guessed). Only then is the key *nowhere*: the statement touches no row and
   runs where PostgreSQL's own answer (``UPDATE 0``, no rows) comes from.

"Nowhere" is never cached (the key may be created a moment later): it is
handed once to the decision that asked. Lookups run in the background; the
session holds its unit (:class:`~pgtenantproxy.session.decision.Hold`, woken
when the lookup ends) and decides it again. A lookup that fails or takes
longer than ``key_lookup_timeout_ms`` refuses the statement (0A000): never a
guess that could turn a write into a silent no-op.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from pgtenantproxy.dispatch.key_facts import KeyFacts
from pgtenantproxy.routing.keys import PENDING, KeyShop, canonical
from pgtenantproxy.sqltext import QualifiedName, ident

logger = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (table label, key column, canonical key text)
ONCE_LIMIT = 10_000
_ARRAY_TYPES = {"int": "int8[]", "uuid": "uuid[]", "text": "text[]"}


class KeyLookupError(Exception):
    """A key's shop could not be established (the statement is refused)."""


@dataclass
class KeyStats:
    hits: int = 0
    misses: int = 0
    block_hits: int = 0
    lookups: int = 0
    confirmed: int = 0
    nowhere: int = 0
    failures: int = 0


@dataclass
class KeyScope:
    """One routing decision's view of the directory (:class:`~pgtenantproxy.routing.keys.KeyView`)."""

    directory: KeyDirectory
    facts: KeyFacts
    lookups: bool
    wanted: set[Key] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)
    _seen: dict[Key, int | None] = field(default_factory=dict)

    def is_key(self, table: str, column: str) -> bool:
        return self.lookups and self.facts.is_key(table, column)

    def consistent(self, a: str, a_col: str, b: str, b_col: str) -> bool:
        return self.facts.consistent(a, a_col, b, b_col)

    def shop_of(self, table: str, column: str, key: str) -> KeyShop:
        kind = self.facts.kind(table, column)
        text = canonical(key, kind) if kind is not None else None
        if text is None:
            return None  # not a value of the key's type: PostgreSQL answers the error wherever it runs
        directory = self.directory
        if kind == "int":
            shop = self.facts.block_shop(table, column, int(text))
            if shop is not None:
                directory.stats.block_hits += 1
                return shop
        k = (table, column, text)
        if k in self._seen:
            return self._seen[k]
        found = directory.answer(k)
        if isinstance(found, KeyLookupError):
            self.failed.append(str(found))
            return PENDING
        if found is not PENDING:
            self._seen[k] = found  # type: ignore[assignment]
            return found
        self.wanted.add(k)
        return PENDING


class KeyDirectory:
    def __init__(
        self,
        *,
        unified: Callable[[], Any],
        pool: asyncpg.Pool | None = None,
        tenant_connect: Callable[[int], Awaitable[asyncpg.Connection]],
        tenant_column: str,
        cache_size: int = 100_000,
        timeout: float = 2.0,
        confirm_limit: int = 32,
    ) -> None:
        self._unified = unified  # () -> an asyncpg pool's acquire() context
        self._pool = pool  # closed with the directory
        self._tenant_connect = tenant_connect
        self.tenant_column = tenant_column
        self.cache_size = cache_size
        self.timeout = timeout
        self.confirm_limit = confirm_limit
        self.stats = KeyStats()
        self._cache: OrderedDict[Key, int] = OrderedDict()
        #: A lookup's answers, each handed once to the decision that waited for it (bounded: a session
        #: that left before asking again leaves its answer behind).
        self._once: OrderedDict[Key, int | KeyLookupError | None] = OrderedDict()
        self._pending: dict[Key, asyncio.Future[None]] = {}
        self._batch: _Batch | None = None
        self._tenants: dict[int, asyncpg.Connection] = {}
        self._tenant_locks: dict[int, asyncio.Lock] = {}

    @property
    def cached(self) -> int:
        return len(self._cache)

    def scope(self, facts: KeyFacts, *, lookups: bool) -> KeyScope:
        return KeyScope(self, facts, lookups)

    def answer(self, key: Key) -> KeyShop | KeyLookupError:
        """What is known of ``key`` now: a shop, nowhere/failure (a lookup's answer is handed once to
        the decision that waited for it, not counted as a cache hit), or PENDING."""
        if key in self._once and key not in self._pending:
            return self._once.pop(key)
        cache = self._cache
        shop = cache.get(key)
        if shop is not None:
            cache.move_to_end(key)
            self.stats.hits += 1
            return shop
        self.stats.misses += 1
        return PENDING

    def request(self, keys: Iterable[Key], facts: KeyFacts, own: Iterable[int]) -> asyncio.Future[None]:
        """Look ``keys`` up (those not already being looked up); the future ends when all are known.

        Keys asked for in one turn of the event loop, by every session, go in one batch: one query
        per table on unified.
        """
        loop = asyncio.get_running_loop()
        waits = {id(f): f for k in keys if (f := self._pending.get(k)) is not None}
        fresh = [k for k in keys if k not in self._pending]
        if fresh:
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch(loop.create_future())
                loop.call_soon(self._flush)
            batch.facts, batch.own = facts, own  # the newest snapshot asks
            for k in fresh:
                self._pending[k] = batch.done
                batch.keys.append(k)
            waits[id(batch.done)] = batch.done
        futures = list(waits.values())
        return futures[0] if len(futures) == 1 else asyncio.ensure_future(_all(futures))

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        lookup = self._lookup(batch.keys, batch.facts, sorted(batch.own))
        task = asyncio.get_running_loop().create_task(lookup)
        task.add_done_callback(lambda _t: _finish(batch.done))

    def _hand_once(self, key: Key, answer: int | KeyLookupError | None) -> None:
        once = self._once
        once[key] = answer
        if len(once) > ONCE_LIMIT:
            once.popitem(last=False)

    async def _lookup(self, keys: list[Key], facts: KeyFacts, own: list[int]) -> None:
        self.stats.lookups += 1
        by_column: dict[tuple[str, str], list[str]] = {}
        for table, column, text in keys:
            by_column.setdefault((table, column), []).append(text)
        try:
            async with asyncio.timeout(self.timeout):
                for (table, column), texts in by_column.items():
                    found = await self._resolve(table, column, texts, facts, own)
                    for text in texts:
                        self._store((table, column, text), found.get(text))
        except Exception as exc:  # a failed lookup refuses the statement, never guesses
            self.stats.failures += 1
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or exc.__class__.__name__
            logger.warning("routing by key: lookup of %d key(s) failed: %s", len(keys), reason)
            for k in keys:
                if k not in self._once:
                    self._hand_once(k, KeyLookupError(
                        f"the shop of a key of {k[0]} could not be looked up: {reason}"))
        finally:
            for k in keys:
                self._pending.pop(k, None)

    def _store(self, key: Key, shop: int | None) -> None:
        self._hand_once(key, shop)
        if shop is None:
            self.stats.nowhere += 1
            return
        cache = self._cache
        cache[key] = shop
        cache.move_to_end(key)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    # --- the lookup, step by step ------------------------------------------------------------
    async def _resolve(
        self, table: str, column: str, texts: list[str], facts: KeyFacts, own: list[int]
    ) -> dict[str, int]:
        kind = facts.kind(table, column)
        assert kind is not None
        select = self._select(table, column, kind)
        values = _typed(texts, kind)
        async with self._unified() as conn:
            found = {r[0]: int(r[1]) for r in await conn.fetch(select, values)}
            missing = [t for t in texts if t not in found]
            in_directory = missing and facts.primary.get(table) == column  # it holds primary keys
            candidates = await _directory(conn, table, kind, missing) if in_directory else {}
        confirm: dict[int, list[str]] = {}
        drawn_in_blocks = kind == "int" and facts.blocks_cover(table, column, own)
        for text in missing:
            shops = candidates.get(text)
            if shops is not None and len(shops) == 1:
                found[text] = next(iter(shops))
                continue
            if not shops and drawn_in_blocks:
                continue  # a cut-over shop draws this key's ids from its blocks only: nowhere
            where = sorted(shops) if shops else own
            if len(where) > self.confirm_limit:
                raise KeyLookupError(
                    f"key {text} of {table} is neither in unified nor in the key directory, and looking "
                    f"for it on {len(where)} shops' databases exceeds [routing] key_confirm_limit "
                    f"({self.confirm_limit})")
            for shop in where:
                confirm.setdefault(shop, []).append(text)
        for shop, keys in confirm.items():
            self.stats.confirmed += 1
            for text in await self._on_tenant(shop, select, _typed(keys, kind)):
                if text in found and found[text] != shop:
                    raise KeyLookupError(f"key {text} of {table} exists on shops {found[text]} and {shop}")
                found[text] = shop
        return found

    def _select(self, table: str, column: str, kind: str) -> str:
        col = ident(column)
        return (f"SELECT {col}::text, {ident(self.tenant_column)} FROM {QualifiedName.parse(table).sql} "
                f"WHERE {col} = ANY($1::{_ARRAY_TYPES[kind]})")

    async def _on_tenant(self, shop: int, select: str, values: list[Any]) -> list[str]:
        lock = self._tenant_locks.setdefault(shop, asyncio.Lock())
        async with lock:
            conn = self._tenants.get(shop)
            if conn is None or conn.is_closed():
                conn = self._tenants[shop] = await self._tenant_connect(shop)
            try:
                return [r[0] for r in await conn.fetch(select, values)]
            except (asyncpg.InterfaceError, OSError):
                self._tenants.pop(shop, None)
                raise

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 2.0)
            except Exception:
                self._pool.terminate()
        conns, self._tenants = list(self._tenants.values()), {}
        for conn in conns:
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()


@dataclass
class _Batch:
    """Keys asked for in one turn of the event loop."""

    done: asyncio.Future[None]
    keys: list[Key] = field(default_factory=list)
    facts: KeyFacts = field(default_factory=KeyFacts)
    own: Iterable[int] = ()


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def _all(waits: list[asyncio.Future[None]]) -> None:
    await asyncio.gather(*waits)


def _typed(texts: list[str], kind: str) -> list[Any]:
    if kind == "int":
        return [int(t) for t in texts]
    if kind == "uuid":
        return [uuid.UUID(t) for t in texts]
    return texts


async def _directory(
    conn: asyncpg.Connection, table: str, kind: str, texts: list[str]
) -> dict[str, set[int]]:
    """Retired shops' keys: the shops whose directory entries cover each key."""
    if kind == "int":
        rows = await conn.fetch(
            "SELECT k::text, d.shop_id FROM unnest($2::int8[]) AS k "
            "JOIN pgtenantproxy.key_directory d ON d.tbl = $1 AND d.keys @> k",
            table, [int(t) for t in texts])
    else:
        rows = await conn.fetch(
            "SELECT key, shop_id FROM pgtenantproxy.key_directory_text "
            "WHERE tbl = $1 AND key = ANY($2::text[])",
            table, texts)
    out: dict[str, set[int]] = {}
    for r in rows:
        out.setdefault(r[0], set()).add(int(r[1]))
    return out
