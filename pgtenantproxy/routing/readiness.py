"""Cutover readiness: transactions that could not stay atomic after a shop's cutover (pure).

After shop N's write cutover its rows live on N's database while global tables
and other shops stay elsewhere, so a transaction that *writes* and touches
(several shops) or (a shop and a global table) could no longer commit
atomically: the proxy refuses it then. Before cutover the proxy watches for
such transactions and counts them per shop, so ``cutover --check`` can list
them.

* :class:`TxTrace` accumulates one session's current transaction (an
  autocommit unit, or BEGIN..COMMIT), unit by unit, and says at its end which
  ``(shop, kind)`` pairs it conflicts on: ``cross_shop`` (it touched several
  shops) and/or ``global`` (a shop and a global table). Read-only
  transactions never conflict.
* :class:`ConflictTally` counts them per ``(shop, kind, fingerprint)`` with one
  sample (constants stripped) until the flusher takes the counts; it is
  bounded (:data:`MAX_KEYS`), new keys beyond that are dropped and counted.

A transaction's fingerprint is the distinct pglast fingerprints of its SQL
texts in order of first appearance (at most :data:`MAX_TEXTS`), so a loop
repeating a statement does not make a new fingerprint per iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pglast import parser as pg

from pgtenantproxy.routing.primary import Touch

MAX_TEXTS = 16
MAX_SAMPLE = 1000
MAX_KEYS = 10000
GLOBAL = "global"
CROSS_SHOP = "cross_shop"
#: A statement that could not be placed on one database once the shop owns its rows (reads too).
UNPLACED = "unplaced"
#: A statement the proxy refused while the shop's rows were on its own database (tenant_primary):
#: it would be refused once the shop is retired too (``retire`` waits for none to be seen).
REFUSED = "refused"
#: The shop id under which statements that name no shop are recorded: they concern every shop.
ANY_SHOP = -1


@dataclass(frozen=True, slots=True)
class UnitNote:
    """One unit as the recorder needs it: what it touched, and its SQL."""

    touch: Touch
    fingerprints: tuple[str, ...]
    texts: tuple[str, ...]
    #: Some statement touches tenant tables without a shop, even counting keys of known shops.
    unknown: bool = False
    #: Every statement that touches tenant tables is a plain read: once its shops are cut over it runs
    #: on unified as a federated read when it cannot run on one shop's database.
    federatable: bool = False


@dataclass
class TxTrace:
    shops: set[int] = field(default_factory=set)
    global_tables: bool = False
    writes: bool = False
    #: Shops touched by a statement that cannot run on a shop's own database (not movable).
    immovable: set[int] = field(default_factory=set)
    #: Some statement names no shop.
    unknown: bool = False
    fingerprints: dict[str, str] = field(default_factory=dict)  # fingerprint -> one text
    #: Every unit so far is a plain read (on one shop's database, or federated on unified).
    reads: bool = True
    #: A unit put the transaction on one shop's database (its first statement that needs one)...
    pinned: bool = False
    #: ...and a later unit needs more than that database: refused there once the shop is cut over.
    mixed_after_pin: bool = False

    def add(self, note: UnitNote) -> None:
        t = note.touch
        single = t.single is not None
        self.reads = self.reads and t.quiet and (single or note.federatable or not (t.shops or note.unknown))
        if not single and (t.shops or note.unknown or t.global_tables) and self.pinned:
            self.mixed_after_pin = True
        self.pinned = self.pinned or single
        self.shops.update(t.shops)
        self.global_tables = self.global_tables or t.global_tables
        self.writes = self.writes or t.writes
        if not t.movable:
            self.immovable.update(t.shops)
        self.unknown = self.unknown or note.unknown
        for fp, text in zip(note.fingerprints, note.texts, strict=False):
            if len(self.fingerprints) < MAX_TEXTS:
                self.fingerprints.setdefault(fp, text)

    @property
    def empty(self) -> bool:
        return not self.shops and not self.fingerprints

    def conflicts(self, watched: Callable[[int], bool]) -> list[tuple[int, str]]:
        """``(shop, kind)`` for each watched shop this (ended) transaction conflicts on.

        Writing transactions over several shops or a shop and global tables are ``cross_shop`` /
        ``global``; anything else that could not be placed on the shop's database after its
        cutover (reads with global tables or other shops, statements that cannot run there) is
        ``unplaced``, and statements naming no shop are ``unplaced`` for :data:`ANY_SHOP`.
        """
        pairs: list[tuple[int, str]] = []
        if self.reads and not self.mixed_after_pin:
            return pairs  # reads only: each on its shop's database, or federated on unified
        mixed = len(self.shops) > 1 or self.global_tables
        for shop in sorted(self.shops):
            if not watched(shop):
                continue
            if self.writes and mixed:
                pairs += ([(shop, CROSS_SHOP)] if len(self.shops) > 1 else []) + (
                    [(shop, GLOBAL)] if self.global_tables else [])
            elif mixed or shop in self.immovable:
                pairs.append((shop, UNPLACED))
        if self.unknown:
            pairs.append((ANY_SHOP, UNPLACED))
        return pairs

    @property
    def fingerprint(self) -> str:
        return " ".join(self.fingerprints)

    def sample(self) -> str:
        return _bounded("; ".join(_normalize(t) for t in self.fingerprints.values()))


def _normalize(sql: str) -> str:
    try:
        return str(pg.normalize(sql)).strip().rstrip(";")
    except Exception:
        return "?"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_SAMPLE else text[: MAX_SAMPLE - 1] + "…"


@dataclass(slots=True)
class _Entry:
    count: int
    sample: str


Row = tuple[int, str, str, str, int]  # shop, kind, fingerprint, sample, count


@dataclass
class ConflictTally:
    counts: dict[tuple[int, str, str], _Entry] = field(default_factory=dict)
    dropped: int = 0

    def add(self, trace: TxTrace, pairs: Iterable[tuple[int, str]]) -> None:
        fingerprint = trace.fingerprint or "?"
        for shop, kind in pairs:
            self._count((shop, kind, fingerprint), trace.sample)

    def refused(self, shops: Iterable[int], fingerprint: str, texts: Iterable[str]) -> None:
        """A statement refused while ``shops`` (``ANY_SHOP``: it named none) owned their rows."""
        for shop in shops:
            self._count((shop, REFUSED, fingerprint), lambda: _bounded("; ".join(map(_normalize, texts))))

    def _count(self, key: tuple[int, str, str], sample: Callable[[], str]) -> None:
        entry = self.counts.get(key)
        if entry is not None:
            entry.count += 1
        elif len(self.counts) < MAX_KEYS:
            self.counts[key] = _Entry(1, sample())
        else:
            self.dropped += 1

    def take(self) -> list[Row]:
        """``(shop, kind, fingerprint, sample, count)`` rows counted so far; the tally starts again."""
        counts, self.counts = self.counts, {}
        return [(shop, kind, fp, e.sample, e.count) for (shop, kind, fp), e in counts.items()]

    def give_back(self, rows: Iterable[Row]) -> None:
        """A flush failed: put its rows back so they are counted next time."""
        for shop, kind, fp, sample, count in rows:
            self.counts.setdefault((shop, kind, fp), _Entry(0, sample)).count += count
