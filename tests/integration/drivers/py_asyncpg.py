"""The workload in asyncpg's idiom: ``fetchrow``/``fetch``/``execute``, ``executemany``,
``conn.transaction()``, ``conn.prepare``, ``copy_records_to_table`` (binary COPY), ``copy_from_query``.

asyncpg sends every query as a named prepared statement with binary
parameters (Parse/Describe, then Bind/Execute), so the whole workload is
extended protocol; ``conn.prepare`` is the explicit server-side statement.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg

from tests.integration.drivers.workload import (
    MISSING_CUSTOMER,
    Outcome,
    Result,
    batch_names,
    copy_names,
    customer_name,
    duplicate_email,
)

SELECT_REPAIR = "SELECT id, customer_id, device_model_id, status, price FROM repairs WHERE id = $1"
ALL_SHOPS = ("SELECT s.id, s.name, count(c.id) FROM shops s JOIN customers c ON c.shop_id = s.id"
             " WHERE c.id <= $1 GROUP BY s.id, s.name ORDER BY s.id")
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError)


def _error(exc: BaseException) -> dict[str, Any]:
    text = str(exc)
    return {"sqlstate": getattr(exc, "sqlstate", None),
            "message": text.splitlines()[0] if text else type(exc).__name__}


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def _rows(records: list[Any]) -> list[list[Any]]:
    return [[_plain(v) for v in r] for r in records]


def _affected(status: str) -> int:
    """The row count of a command tag (``UPDATE 1``, ``INSERT 0 1``, ``COPY 20``)."""
    return int(status.rsplit(" ", 1)[-1])


class _Steps:
    def __init__(self) -> None:
        self.steps: list[Outcome] = []

    async def rows(self, label: str, call: Awaitable[list[Any]]) -> list[list[Any]] | None:
        try:
            rows = _rows(await call)
        except _ERRORS as exc:
            self.steps.append({"label": label, "error": _error(exc)})
            return None
        self.steps.append({"label": label, "rows": rows})
        return rows

    async def count(self, label: str, call: Awaitable[str]) -> None:
        try:
            status = await call
        except _ERRORS as exc:
            self.steps.append({"label": label, "error": _error(exc)})
            return
        self.steps.append({"label": label, "count": _affected(status)})

    async def ok(self, label: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except _ERRORS as exc:
            self.steps.append({"label": label, "error": _error(exc)})
            return
        self.steps.append({"label": label, "ok": True})


class _Rollback(Exception):
    pass


async def run_workload(conn: asyncpg.Connection, shop: int, tag: str, max_customer: int) -> Result:
    """The whole workload for ``shop``; ``max_customer``: the sample's largest customer id (``all_shops``)."""
    s = _Steps()
    try:
        row = await conn.fetchrow(
            "INSERT INTO customers (shop_id, name, phone) VALUES ($1, $2, $3) RETURNING id",
            shop, customer_name(tag), "+49 30 555 0100")
        s.steps.append({"label": "insert_customer", "rows": [[row["id"]]]})
        cid = row["id"]
    except _ERRORS as exc:
        s.steps.append({"label": "insert_customer", "error": _error(exc)})
        cid = None
    try:  # binary parameters: int4, int8, numeric
        row = await conn.fetchrow(
            "INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id", shop, cid, 3, "received", Decimal("120.00"))
        s.steps.append({"label": "insert_repair", "rows": [[row["id"]]]})
        rid = row["id"]
    except _ERRORS as exc:
        s.steps.append({"label": "insert_repair", "error": _error(exc)})
        rid = None
    await s.rows("select_repair", conn.fetch(SELECT_REPAIR, rid))
    await s.count("update_status", conn.execute(
        "UPDATE repairs SET status = $1 WHERE id = $2", "diagnosed", rid))

    try:
        async with conn.transaction():
            await s.count("tx1.update_price", conn.execute(
                "UPDATE repairs SET price = price + 1 WHERE id = $1", rid))
            await s.count("tx1.insert_repair", conn.execute(
                "INSERT INTO repairs (shop_id, customer_id, status) VALUES ($1, $2, 'received')", shop, cid))
        s.steps.append({"label": "tx1.commit", "ok": True})
    except _ERRORS as exc:
        s.steps.append({"label": "tx1.commit", "error": _error(exc)})
    await s.rows("tx1.check", conn.fetch(
        "SELECT count(*) FROM repairs WHERE shop_id = $1 AND customer_id = $2", shop, cid))

    try:
        async with conn.transaction():
            await s.count("tx2.update_status", conn.execute(
                "UPDATE repairs SET status = 'diagnosed' WHERE id = $1", rid))
            try:
                async with conn.transaction():  # nested: a savepoint
                    s.steps.append({"label": "tx2.savepoint", "ok": True})
                    await s.count("tx2.duplicate_user", conn.execute(
                        "INSERT INTO users (shop_id, email, role) VALUES ($1, $2, 'staff')",
                        shop, duplicate_email(shop)))
                    raise _Rollback
            except _Rollback:
                s.steps.append({"label": "tx2.rollback_to_savepoint", "ok": True})
            except _ERRORS as exc:
                s.steps.append({"label": "tx2.rollback_to_savepoint", "error": _error(exc)})
            await s.count("tx2.update_price", conn.execute(
                "UPDATE repairs SET price = $1 WHERE id = $2", Decimal("99.50"), rid))
        s.steps.append({"label": "tx2.commit", "ok": True})
    except _ERRORS as exc:
        s.steps.append({"label": "tx2.commit", "error": _error(exc)})
    await s.rows("tx2.check", conn.fetch("SELECT status, price FROM repairs WHERE id = $1", rid))

    tr = conn.transaction()
    try:
        await tr.start()
        await s.count("tx3.insert_customer", conn.execute(
            "INSERT INTO customers (shop_id, name, phone) VALUES ($1, $2, NULL)", shop, f"{tag} rolled back"))
        await s.count("tx3.bad_repair", conn.execute(
            "INSERT INTO repairs (shop_id, customer_id, status) VALUES ($1, $2, 'received')",
            shop, MISSING_CUSTOMER))
        await s.rows("tx3.after_error", conn.fetch("SELECT count(*) FROM customers WHERE shop_id = $1", shop))
    except _ERRORS as exc:  # BEGIN itself failed
        s.steps.append({"label": "tx3.insert_customer", "error": _error(exc)})
    await s.ok("tx3.rollback", tr.rollback)
    await s.rows("tx3.check", conn.fetch(
        "SELECT count(*) FROM customers WHERE shop_id = $1 AND name = $2", shop, f"{tag} rolled back"))

    await s.ok("executemany", lambda: conn.executemany(
        "INSERT INTO customers (shop_id, name, phone) VALUES ($1, $2, $3)",
        [(shop, name, f"+49 30 555 02{n}") for n, name in enumerate(batch_names(tag))]))
    await s.rows("executemany.check", conn.fetch(
        "SELECT count(*) FROM customers WHERE shop_id = $1 AND name LIKE $2", shop, f"{tag} batch %"))
    try:
        stmt = await conn.prepare("SELECT id, name, phone FROM customers WHERE shop_id = $1 AND name = $2")
    except _ERRORS as exc:
        s.steps.append({"label": "prepared.1", "error": _error(exc)})
    else:
        for n, name in enumerate(batch_names(tag)[:3], 1):
            await s.rows(f"prepared.{n}", stmt.fetch(shop, name))

    await s.rows("fk_join", conn.fetch(
        "SELECT r.id, c.name FROM repairs r JOIN customers c ON c.id = r.customer_id"
        " WHERE r.shop_id = $1 ORDER BY r.id LIMIT 20", shop))
    await s.rows("global_join", conn.fetch(
        "SELECT r.id, d.brand, d.model FROM repairs r JOIN device_models d ON d.id = r.device_model_id"
        " WHERE r.shop_id = $1 ORDER BY r.id DESC LIMIT 3", shop))
    await s.rows("all_shops", conn.fetch(ALL_SHOPS, max_customer))

    await s.count("copy_in", conn.copy_records_to_table(  # binary COPY
        "customers", columns=["shop_id", "name", "phone"],
        records=[(shop, name, None) for name in copy_names(tag)]))
    out = io.BytesIO()
    try:
        await conn.copy_from_query("SELECT id, name FROM customers WHERE shop_id = $1 ORDER BY id", shop,
                                   output=out, format="text")
        lines = out.getvalue().decode().splitlines()
        rows = [[int(a), b] for a, b in (ln.split("\t") for ln in lines)]
        s.steps.append({"label": "copy_out", "rows": rows})
    except _ERRORS as exc:
        s.steps.append({"label": "copy_out", "error": _error(exc)})
    await s.count("delete_repair", conn.execute("DELETE FROM repairs WHERE id = $1", rid))
    await s.rows("select_deleted", conn.fetch(SELECT_REPAIR, rid))
    return {"driver": "asyncpg", "shop": shop, "steps": s.steps}


async def run(connect_kwargs: dict[str, Any], shop: int, tag: str, max_customer: int) -> Result:
    conn = await asyncpg.connect(**connect_kwargs)
    try:
        return await run_workload(conn, shop, tag, max_customer)
    finally:
        await conn.close()
