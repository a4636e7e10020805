"""The pure parts of backfill: the token bucket (injected clock), chunk plans, COPY SQL, progress, reports."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

import pytest

from pgtenantproxy.dualwrite.sqlgen import ColumnInfo, TableInfo
from pgtenantproxy.migration.backfill_report import BackfillReport, ShopResult
from pgtenantproxy.migration.copier import TablePlan, select_sql
from pgtenantproxy.migration.keyranges import KeyRange
from pgtenantproxy.migration.progress import CHUNK, ProgressEvent, ProgressFeed
from pgtenantproxy.migration.throttle import TokenBucket
from pgtenantproxy.sqltext import QualifiedName


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Drive a coroutine that never really suspends (the fake sleep returns at once)."""
    with pytest.raises(StopIteration):
        coro.send(None)


def bucket(rate: float) -> tuple[TokenBucket, Clock]:
    clock = Clock()
    return TokenBucket(rate, clock=clock, sleep=clock.sleep), clock


def test_a_full_bucket_lets_one_second_of_rows_through_then_makes_callers_wait() -> None:
    b, clock = bucket(1000)
    run(b.acquire(1000))
    assert clock.slept == []
    run(b.acquire(500))
    assert clock.slept == [0.5]
    run(b.acquire(1000))
    assert clock.slept == [0.5, 1.0]
    assert b.waited_s == 1.5


def test_the_bucket_refills_with_time_but_never_beyond_one_second() -> None:
    b, clock = bucket(200)
    assert b.reserve(200) == 0.0
    clock.now += 0.5
    assert b.tokens == pytest.approx(100)
    clock.now += 60
    assert b.tokens == pytest.approx(200)


def test_callers_sharing_a_bucket_queue_up_behind_each_others_debt() -> None:
    b, _ = bucket(100)
    delays = [b.reserve(100) for _ in range(4)]
    assert delays == [0.0, 1.0, 2.0, 3.0]


def test_a_chunk_bigger_than_the_bucket_passes_after_the_time_it_is_worth() -> None:
    b, clock = bucket(10)
    run(b.acquire(10))
    run(b.acquire(35))
    assert clock.slept == [3.5]


def test_rate_zero_is_no_throttle_and_a_negative_rate_is_refused() -> None:
    b, clock = bucket(0)
    run(b.acquire(10**9))
    assert clock.slept == [] and not b.enabled and b.chunk_rows(50000) == 50000
    with pytest.raises(ValueError):
        TokenBucket(-1)


def test_chunks_are_at_most_one_second_of_the_throttle() -> None:
    assert bucket(3000)[0].chunk_rows(50000) == 3000
    assert bucket(100000)[0].chunk_rows(50000) == 50000
    assert bucket(0.5)[0].chunk_rows(50000) == 1


SHOP = ColumnInfo("shop_id", "integer")
ID = ColumnInfo("id", "bigint")
TAG = ColumnInfo("tag", "text")
DOUBLED = ColumnInfo("doubled", "integer", generated=True)
TABLE = TableInfo("public.t", QualifiedName("public", "t"), "shop_id", (ID, SHOP, TAG, DOUBLED), (ID, TAG))


def test_a_plan_cuts_the_rows_into_ranges_covering_every_key() -> None:
    plan = TablePlan(TABLE, 25, ['[10, "a"]', '[20, "b"]'], every=10, binary=True)
    chunks = plan.chunks()
    assert [n for _, n in chunks] == [10, 10, 5]
    assert [r for r, _ in chunks] == [KeyRange(None, '[10, "a"]'), KeyRange('[10, "a"]', '[20, "b"]'),
                                      KeyRange('[20, "b"]', None)]
    assert TablePlan(TABLE, 0, [], every=10, binary=True).chunks() == [(KeyRange(), 0)]
    assert [n for _, n in TablePlan(TABLE, 20, ["[1]", "[2]"], every=10, binary=True).chunks()] == [10, 10, 0]


def test_the_copy_query_selects_stored_columns_of_the_shop_in_key_order() -> None:
    sql = select_sql(TablePlan(TABLE, 25, [], 10, True), 7, KeyRange('[10, "a"]', None))
    assert sql.startswith('SELECT "id", "shop_id", "tag" FROM "public"."t"')
    assert """WHERE "shop_id" = '7'::text::integer AND""" in sql
    assert '"doubled"' not in sql
    assert """AND ROW("id", "tag") > ROW((('[10, "a"]'::jsonb) ->> 0)::bigint, """ in sql
    assert sql.endswith('ORDER BY "id", "tag"')


def test_a_failing_progress_subscriber_is_dropped_and_the_others_keep_getting_events() -> None:
    seen: list[ProgressEvent] = []

    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("bar exploded")

    feed = ProgressFeed(broken, seen.append, None)
    for rows in (1, 2):
        feed.emit(ProgressEvent(CHUNK, 3, "public.t", rows=rows))
    assert [e.rows for e in seen] == [1, 2]


def test_the_report_is_ok_only_when_every_shop_is_and_serialises_to_json() -> None:
    report = BackfillReport([ShopResult(1, "backfilled", rows=100, bytes=2000, tables=3, seconds=2.0),
                             ShopResult(2, "done_already")], seconds=2.5, throttle_rows_per_s=50)
    assert report.ok and report.rows == 100 and report.by_status() == {"backfilled": 1, "done_already": 1}
    data = json.loads(report.to_json())
    assert data["shops"][0]["rows_per_s"] == 50.0 and data["rows_per_s"] == 40.0
    report.shops.append(ShopResult(3, "refused", detail="capture off"))
    assert not report.ok and not json.loads(report.to_json())["ok"]
