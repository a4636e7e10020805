"""Backfill progress as events, handed to callbacks (the CLI's progress bars, the admin API, logs).

The backfill emits one :class:`ProgressEvent` when a shop starts (with the
rows of its tables counted in its snapshot, and those already copied by an
earlier, interrupted run), one per copied chunk, one per finished table and one
when the shop ends. :class:`ProgressFeed` hands each event to every
subscriber; a subscriber that raises is logged and dropped, never allowed to
fail the copy. Rendering is the subscribers' business (no ``rich`` here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: Event kinds.
ESTIMATE = "estimate"  # before any shop starts: rows of the shop in unified right now (rows_total)
SHOP_STARTED = "shop_started"  # rows_total / tables_total of the shop, rows_done / tables_done already
CHUNK = "chunk"  # rows / bytes just copied of ``table``
TABLE_DONE = "table_done"
SHOP_DONE = "shop_done"  # ``status``: the shop's outcome; ``detail``: why (failures)


@dataclass(frozen=True)
class ProgressEvent:
    kind: str
    shop_id: int
    table: str | None = None
    rows: int = 0
    bytes: int = 0
    rows_total: int = 0
    rows_done: int = 0
    tables_total: int = 0
    tables_done: int = 0
    status: str | None = None
    detail: str | None = None


Subscriber = Callable[[ProgressEvent], None]


class ProgressFeed:
    """Fans events out to subscribers; a failing subscriber is removed (logged once)."""

    def __init__(self, *subscribers: Subscriber | None) -> None:
        self._subscribers = [s for s in subscribers if s is not None]

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: ProgressEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                logger.exception("backfill progress subscriber failed; it gets no further events")
                self._subscribers.remove(subscriber)
