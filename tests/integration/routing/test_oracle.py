"""The routing core against real PostgreSQL: a tenant route never changes a query's answer.

For generated queries (tests/unit/routing/querygen.py) that the router sends to
shop B's database, PostgreSQL runs each twice in one rolled-back transaction:
once over every shop's rows, once after deleting every other shop's rows (what
shop B's tenant database holds). The answers must be equal; a query that read
another shop's rows would differ. A deliberately wrong analyser fails this.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import psycopg
import pytest

from pgtenantproxy.embedded import PgCluster
from tests.unit.routing.querygen import SHOPS, TENANT_TABLES, generate
from tests.unit.routing.test_property import RandomDraw, route

SEEDS = 600


@pytest.fixture(scope="module")
def oracle_db(unified: PgCluster) -> Iterator[psycopg.Connection]:  # type: ignore[type-arg]
    with psycopg.connect(unified.dsn(), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS routing_oracle")
        admin.execute("CREATE DATABASE routing_oracle")
    conn = psycopg.connect(unified.dsn(dbname="routing_oracle"), autocommit=True, cursor_factory=psycopg.RawCursor)
    rng = random.Random(7)
    for table in (*TENANT_TABLES, "devices"):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id int, shop_id int)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(rng.randint(1, 12), rng.choice(SHOPS)) for _ in range(40)])
    conn.execute("CREATE TABLE IF NOT EXISTS scratch_dummy (x int)")
    yield conn
    conn.close()


def test_tenant_routes_never_change_the_answer(oracle_db: psycopg.Connection) -> None:  # type: ignore[type-arg]
    checked = 0
    for seed in range(SEEDS):
        gen = generate(RandomDraw(seed))
        unit = route(gen, None)
        if not unit.route.tenant:
            continue
        shop = unit.route.shop_id
        params = [p.decode() for p in gen.params] or None
        try:
            with oracle_db.transaction():
                full = sorted(map(repr, oracle_db.execute(gen.sql, params, prepare=False).fetchall()))
                for table in TENANT_TABLES:
                    oracle_db.execute(f"DELETE FROM {table} WHERE shop_id <> {shop}")
                only = sorted(map(repr, oracle_db.execute(gen.sql, params, prepare=False).fetchall()))
                raise psycopg.Rollback()
        except psycopg.Error:
            continue  # generated SQL PostgreSQL rejects (type mismatches...): nothing to compare
        checked += 1
        assert full == only, f"shop {shop}: {gen.sql} {params}"
    assert checked > SEEDS // 10  # the generator does reach tenant routes
