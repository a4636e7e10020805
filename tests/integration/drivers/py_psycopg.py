"""The workload in psycopg 3's idiom: ``cursor.execute``, ``executemany``, ``conn.transaction()``,
``cursor.copy()``.

One autocommit connection; transactions are ``with conn.transaction():``
blocks (a nested block is a savepoint); the prepared statement is executed
with ``prepare=True`` (server-side, named); COPY in and out in text format.
Also the lifecycle test's load (:func:`run_workload` on an open connection).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg

from tests.integration.drivers.workload import (
    MISSING_CUSTOMER,
    Outcome,
    Result,
    batch_names,
    copy_names,
    customer_name,
    duplicate_email,
)

SELECT_REPAIR = "SELECT id, customer_id, device_model_id, status, price FROM repairs WHERE id = %s"
FIND_CUSTOMER = "SELECT id, name, phone FROM customers WHERE shop_id = %s AND name = %s"
ALL_SHOPS = ("SELECT s.id, s.name, count(c.id) FROM shops s JOIN customers c ON c.shop_id = s.id"
             " WHERE c.id <= %s GROUP BY s.id, s.name ORDER BY s.id")


class _Steps:
    def __init__(self, skip: frozenset[str] = frozenset()) -> None:
        self.steps: list[Outcome] = []
        self.skip = skip

    def run(self, label: str, action: Callable[[], Any]) -> Any:
        """Run one statement; record its outcome; return the action's value (None after an error)."""
        if label in self.skip:
            return None
        try:
            value = action()
        except psycopg.Error as exc:
            self.steps.append({"label": label, "error": _error(exc)})
            return None
        if isinstance(value, _Rows):
            self.steps.append({"label": label, "rows": value.rows})
        elif isinstance(value, int) and not isinstance(value, bool):
            self.steps.append({"label": label, "count": value})
        else:
            self.steps.append({"label": label, "ok": True})
        return value


def _error(exc: psycopg.Error) -> dict[str, Any]:
    text = str(exc)
    return {"sqlstate": exc.sqlstate, "message": text.splitlines()[0] if text else type(exc).__name__}


class _Rows:
    def __init__(self, rows: list[list[Any]]) -> None:
        self.rows = rows

    def first(self) -> Any:
        return self.rows[0][0] if self.rows else None


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _fetch(cur: psycopg.Cursor[Any], sql: str, params: Any = None, *, prepare: bool | None = None) -> _Rows:
    cur.execute(sql, params, prepare=prepare)
    return _Rows([[_plain(v) for v in row] for row in cur.fetchall()])


def _count(cur: psycopg.Cursor[Any], sql: str, params: Any = None) -> int:
    cur.execute(sql, params)
    return cur.rowcount


class _Rollback(Exception):
    pass


def run_workload(
    conn: psycopg.Connection[Any], shop: int, tag: str, max_customer: int, skip: frozenset[str] = frozenset()
) -> Result:
    """The whole workload for ``shop`` on an open autocommit connection (but the ``skip`` steps).

    ``max_customer``: the sample's largest customer id (``all_shops`` counts the customers up to it).
    """
    s = _Steps(skip)
    cur = conn.cursor()
    cid = s.run("insert_customer", lambda: _fetch(
        cur, "INSERT INTO customers (shop_id, name, phone) VALUES (%s, %s, %s) RETURNING id",
        (shop, customer_name(tag), "+49 30 555 0100")))
    cid = cid.first() if cid else None
    rid = s.run("insert_repair", lambda: _fetch(
        cur, "INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price)"
             " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (shop, cid, 3, "received", Decimal("120.00"))))
    rid = rid.first() if rid else None
    s.run("select_repair", lambda: _fetch(cur, SELECT_REPAIR, (rid,)))
    s.run("update_status", lambda: _count(
        cur, "UPDATE repairs SET status = %s WHERE id = %s", ("diagnosed", rid)))

    # A transaction that begins with an update by id.
    try:
        with conn.transaction():
            s.run("tx1.update_price", lambda: _count(
                cur, "UPDATE repairs SET price = price + 1 WHERE id = %s", (rid,)))
            s.run("tx1.insert_repair", lambda: _count(
                cur, "INSERT INTO repairs (shop_id, customer_id, status) VALUES (%s, %s, 'received')",
                (shop, cid)))
        s.steps.append({"label": "tx1.commit", "ok": True})
    except psycopg.Error as exc:
        s.steps.append({"label": "tx1.commit", "error": _error(exc)})
    s.run("tx1.check", lambda: _fetch(
        cur, "SELECT count(*) FROM repairs WHERE shop_id = %s AND customer_id = %s", (shop, cid)))

    # Savepoint: an error inside it, rolled back to, then a good update and COMMIT.
    try:
        with conn.transaction():
            s.run("tx2.update_status", lambda: _count(
                cur, "UPDATE repairs SET status = 'diagnosed' WHERE id = %s", (rid,)))
            try:
                with conn.transaction():
                    s.steps.append({"label": "tx2.savepoint", "ok": True})
                    s.run("tx2.duplicate_user", lambda: _count(
                        cur, "INSERT INTO users (shop_id, email, role) VALUES (%s, %s, 'staff')",
                        (shop, duplicate_email(shop))))
                    raise _Rollback  # the error already happened: leave the savepoint block by rolling back
            except _Rollback:
                s.steps.append({"label": "tx2.rollback_to_savepoint", "ok": True})
            except psycopg.Error as exc:  # ROLLBACK TO SAVEPOINT itself failed
                s.steps.append({"label": "tx2.rollback_to_savepoint", "error": _error(exc)})
            s.run("tx2.update_price", lambda: _count(cur, "UPDATE repairs SET price = %s WHERE id = %s",
                                                     (Decimal("99.50"), rid)))
        s.steps.append({"label": "tx2.commit", "ok": True})
    except psycopg.Error as exc:
        s.steps.append({"label": "tx2.commit", "error": _error(exc)})
    s.run("tx2.check", lambda: _fetch(cur, "SELECT status, price FROM repairs WHERE id = %s", (rid,)))

    # An error without a savepoint: the next statement gets 25P02, then ROLLBACK.
    try:
        with conn.transaction():
            s.run("tx3.insert_customer", lambda: _count(
                cur, "INSERT INTO customers (shop_id, name, phone) VALUES (%s, %s, NULL)",
                (shop, f"{tag} rolled back")))
            s.run("tx3.bad_repair", lambda: _count(
                cur, "INSERT INTO repairs (shop_id, customer_id, status) VALUES (%s, %s, 'received')",
                (shop, MISSING_CUSTOMER)))
            s.run("tx3.after_error", lambda: _fetch(
                cur, "SELECT count(*) FROM customers WHERE shop_id = %s", (shop,)))
            raise psycopg.Rollback
        s.steps.append({"label": "tx3.rollback", "ok": True})
    except psycopg.Error as exc:
        s.steps.append({"label": "tx3.rollback", "error": _error(exc)})
    s.run("tx3.check", lambda: _fetch(
        cur, "SELECT count(*) FROM customers WHERE shop_id = %s AND name = %s", (shop, f"{tag} rolled back")))

    def many() -> None:
        cur.executemany("INSERT INTO customers (shop_id, name, phone) VALUES (%s, %s, %s)",
                        [(shop, name, f"+49 30 555 02{n}") for n, name in enumerate(batch_names(tag))])

    s.run("executemany", many)
    s.run("executemany.check", lambda: _fetch(
        cur, "SELECT count(*) FROM customers WHERE shop_id = %s AND name LIKE %s", (shop, f"{tag} batch %")))
    def find(name: str) -> Callable[[], _Rows]:
        return lambda: _fetch(cur, FIND_CUSTOMER, (shop, name), prepare=True)  # server-side, named

    for n, name in enumerate(batch_names(tag)[:3], 1):
        s.run(f"prepared.{n}", find(name))

    s.run("fk_join", lambda: _fetch(
        cur, "SELECT r.id, c.name FROM repairs r JOIN customers c ON c.id = r.customer_id"
             " WHERE r.shop_id = %s ORDER BY r.id LIMIT 20", (shop,)))
    s.run("global_join", lambda: _fetch(
        cur, "SELECT r.id, d.brand, d.model FROM repairs r JOIN device_models d ON d.id = r.device_model_id"
             " WHERE r.shop_id = %s ORDER BY r.id DESC LIMIT 3", (shop,)))
    s.run("all_shops", lambda: _fetch(cur, ALL_SHOPS, (max_customer,)))

    def copy_in() -> int:
        with cur.copy("COPY customers (shop_id, name, phone) FROM STDIN") as copy:
            for name in copy_names(tag):
                copy.write_row((shop, name, None))
        return cur.rowcount

    def copy_out() -> _Rows:
        rows: list[list[Any]] = []
        query = f"COPY (SELECT id, name FROM customers WHERE shop_id = {int(shop)} ORDER BY id) TO STDOUT"
        with cur.copy(query) as copy:
            copy.set_types(["int4", "text"])
            rows.extend(list(row) for row in copy.rows())
        return _Rows(rows)

    s.run("copy_in", copy_in)
    s.run("copy_out", copy_out)
    s.run("delete_repair", lambda: _count(cur, "DELETE FROM repairs WHERE id = %s", (rid,)))
    s.run("select_deleted", lambda: _fetch(cur, SELECT_REPAIR, (rid,)))
    cur.close()
    return {"driver": "psycopg", "shop": shop, "steps": s.steps}


def run(conninfo: str, shop: int, tag: str, max_customer: int, skip: frozenset[str] = frozenset()) -> Result:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return run_workload(conn, shop, tag, max_customer, skip)
