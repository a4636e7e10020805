"""The driver tier's workload: the statements every driver runs, and how two runs are compared.

Every driver (psycopg 3, asyncpg, node-postgres + Drizzle, pgjdbc, psql) runs
the same app-like workload against one shop ``S`` in its own idiom and prints
(or returns) a result: ``{"driver": ..., "shop": S, "steps": [outcome, ...]}``
where an outcome is ``{"label": L}`` plus exactly one of

* ``"rows": [[v, ...], ...]`` -- the rows a statement returned, columns as in :data:`STEPS`;
* ``"count": n`` -- the rows a write affected (or COPY FROM copied);
* ``"ok": true`` -- a statement with nothing to report (COMMIT, SAVEPOINT, executemany);
* ``"error": {"sqlstate": "23505", "message": "..."}`` -- the statement failed.

The labels, their kinds, their columns and the SQL each stands for
(``what``) are :data:`STEPS`, the contract the driver programs follow. The
optional labels (``txN.begin``, ``prepared.prepare``) are for drivers where
BEGIN or PREPARE is a statement of its own (psql).

Comparing a direct run with a run through the proxy (:func:`compare`): ids
drawn from sequences differ (after cutover they come from the shop's id
block), so :func:`normalize` replaces every id newer than the sample's rows
by its rank among the new ids of that kind seen in the run
(``new customer #2``); counts, rows and SQLSTATEs are compared exactly.
No difference is allowed: ``global_join`` (a shop's rows joined with the global
``device_models`` table) and ``all_shops`` (a read over every shop, cut over,
retired or not) must give the same rows through the proxy as on the unmigrated
copy (:data:`MAY_BE_REFUSED_AFTER_CUTOVER`, the mechanism for a refusal the
comparison tolerates, is empty).

``all_shops`` reads the sample's customers only (``c.id <= $1``, ``$1`` the
sample's largest customer id, :data:`~.bed.BASELINE`): no workload updates or
deletes a customer, they only add new ones (larger ids), so its rows are the
same whatever ran before, on every shop and in both copies.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["rows", "count", "ok"]
Outcome = dict[str, Any]
Result = dict[str, Any]

#: Columns holding ids drawn from a sequence, by the sequence they come from.
ID_COLUMNS = ("customer_id", "repair_id")
#: Labels the proxy may refuse (with this SQLSTATE) after cutover and still count as the same outcome.
#: Empty: global tables and reads over every shop are federated, so they must give the same rows.
MAY_BE_REFUSED_AFTER_CUTOVER: dict[str, str] = {}
#: Labels whose rows grow as the workload runs again on the same shop (the lifecycle loop).
GROWING = frozenset({"copy_out"})


@dataclass(frozen=True)
class Step:
    label: str
    kind: Kind
    columns: tuple[str, ...] = ()
    #: Drivers that have no such statement leave it out.
    optional: bool = False
    #: What the step does (for reports).
    what: str = ""


STEPS: tuple[Step, ...] = (
    Step("insert_customer", "rows", ("customer_id",),
         what="INSERT INTO customers (shop_id, name, phone) VALUES (S, ...) RETURNING id"),
    Step("insert_repair", "rows", ("repair_id",),
         what="INSERT INTO repairs (shop_id, customer_id, device_model_id, status, price) ... RETURNING id"),
    Step("select_repair", "rows", ("repair_id", "customer_id", "device_model_id", "status", "price"),
         what="SELECT ... FROM repairs WHERE id = $1 (by id only)"),
    Step("update_status", "count", what="UPDATE repairs SET status = $1 WHERE id = $2 (by id only)"),
    Step("tx1.begin", "ok", optional=True, what="BEGIN"),
    Step("tx1.update_price", "count",
         what="UPDATE repairs SET price = price + 1 WHERE id = $1 (first in tx)"),
    Step("tx1.insert_repair", "count",
         what="INSERT INTO repairs (shop_id, customer_id, status) VALUES (S, ...)"),
    Step("tx1.commit", "ok", what="COMMIT"),
    Step("tx1.check", "rows", ("count",),
         what="SELECT count(*) FROM repairs WHERE shop_id = S AND customer_id = $1"),
    Step("tx2.begin", "ok", optional=True, what="BEGIN"),
    Step("tx2.update_status", "count",
         what="UPDATE repairs SET status = 'diagnosed' WHERE id = $1 (first in tx)"),
    Step("tx2.savepoint", "ok", what="SAVEPOINT"),
    Step("tx2.duplicate_user", "count", what="INSERT INTO users ... existing email (23505)"),
    Step("tx2.rollback_to_savepoint", "ok", what="ROLLBACK TO SAVEPOINT"),
    Step("tx2.update_price", "count", what="UPDATE repairs SET price = 99.50 WHERE id = $1"),
    Step("tx2.commit", "ok", what="COMMIT"),
    Step("tx2.check", "rows", ("status", "price"), what="SELECT status, price FROM repairs WHERE id = $1"),
    Step("tx3.begin", "ok", optional=True, what="BEGIN"),
    Step("tx3.insert_customer", "count",
         what="INSERT INTO customers (shop_id, ...) VALUES (S, ...) (first in tx)"),
    Step("tx3.bad_repair", "count", what="INSERT INTO repairs ... unknown customer_id (23503)"),
    Step("tx3.after_error", "rows", ("count",),
         what="SELECT count(*) FROM customers WHERE shop_id = S (25P02)"),
    Step("tx3.rollback", "ok", what="ROLLBACK"),
    Step("tx3.check", "rows", ("count",), what="the rolled back customer is not there"),
    Step("executemany", "ok", what="5 x INSERT INTO customers (shop_id, name, phone) VALUES (S, ...)"),
    Step("executemany.check", "rows", ("count",), what="SELECT count(*) ... name LIKE '<tag> batch %'"),
    Step("prepared.prepare", "ok", optional=True, what="PREPARE (SQL level)"),
    Step("prepared.1", "rows", ("customer_id", "name", "phone"),
         what="prepared SELECT id, name, phone FROM customers WHERE shop_id = $1 AND name = $2"),
    Step("prepared.2", "rows", ("customer_id", "name", "phone"), what="the same prepared statement again"),
    Step("prepared.3", "rows", ("customer_id", "name", "phone"), what="and again"),
    Step("fk_join", "rows", ("repair_id", "name"),
         what="SELECT r.id, c.name FROM repairs r JOIN customers c ON c.id = r.customer_id "
              "WHERE r.shop_id = $1 ORDER BY r.id LIMIT 20"),
    Step("global_join", "rows", ("repair_id", "brand", "model"),
         what="repairs of S joined with device_models (global), newest 3"),
    Step("all_shops", "rows", ("shop_id", "name", "count"),
         what="SELECT s.id, s.name, count(c.id) FROM shops s JOIN customers c ON c.shop_id = s.id"
              " WHERE c.id <= $1 GROUP BY s.id, s.name ORDER BY s.id ($1: the sample's largest customer id;"
              " every shop, whatever its phase)"),
    Step("copy_in", "count", what="COPY customers (shop_id, name, phone) FROM STDIN, 20 rows of S"),
    Step("copy_out", "rows", ("customer_id", "name"),
         what="COPY (SELECT id, name FROM customers WHERE shop_id = S ORDER BY id) TO STDOUT"),
    Step("delete_repair", "count", what="DELETE FROM repairs WHERE id = $1 (by id only)"),
    Step("select_deleted", "rows", ("repair_id", "customer_id", "device_model_id", "status", "price"),
         what="the same SELECT by id: no row"),
)
BY_LABEL = {s.label: s for s in STEPS}


class WorkloadError(AssertionError):
    """A driver's output breaks the contract (not a difference the proxy made)."""


def outcome_text(outcome: Outcome | None) -> str:
    if outcome is None:
        return "(missing)"
    if "error" in outcome:
        err = outcome["error"]
        return f"ERROR {err.get('sqlstate')}: {err.get('message', '')}"
    if "rows" in outcome:
        rows = outcome["rows"]
        shown = json.dumps(rows[:4], default=str)[:-1] + (", ...]" if len(rows) > 4 else "]")
        return f"{len(rows)} rows {shown[:400]}"
    if "count" in outcome:
        return f"count {outcome['count']}"
    return "ok"


def check_shape(result: Result, *, complete: bool = True, skipped: frozenset[str] = frozenset()) -> None:
    """Every label known, in the contract's order, one kind of outcome each, and (``complete``) the
    required ones present: a run through the proxy may miss a label (a failed SAVEPOINT skips its
    block), which :func:`compare` then reports as a difference."""
    labels = [o.get("label") for o in result["steps"]]
    order = [s.label for s in STEPS]
    unknown = [label for label in labels if label not in BY_LABEL]
    if unknown:
        raise WorkloadError(f"{result.get('driver')}: unknown labels {unknown}")
    if labels != sorted(labels, key=order.index) or len(set(labels)) != len(labels):
        raise WorkloadError(f"{result.get('driver')}: labels out of order or repeated: {labels}")
    missing = [s.label for s in STEPS if not s.optional and s.label not in labels and s.label not in skipped]
    if missing and complete:
        raise WorkloadError(f"{result.get('driver')}: labels missing: {missing}")
    for outcome in result["steps"]:
        keys = {"rows", "count", "ok", "error"} & set(outcome)
        if len(keys) != 1:
            raise WorkloadError(f"{result.get('driver')}: {outcome['label']} has outcomes {sorted(keys)}")


def _id_value(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def normalize(result: Result, baseline: Mapping[str, int], *, tag: str | None = None,
              drop_rows: Iterable[str] = ()) -> dict[str, Outcome]:
    """The outcomes by label, with new ids replaced by their rank and every value as text.

    ``baseline`` is the largest id of each kind in the sample (ids up to it are the
    same rows in both beds); ``tag`` (the run's name prefix) becomes ``<tag>``;
    ``drop_rows`` labels are compared by the kind of their outcome only (rows, not which).
    """
    dropped = set(drop_rows)
    new_ids: dict[str, set[int]] = {kind: set() for kind in ID_COLUMNS}
    for outcome in result["steps"]:
        step = BY_LABEL[outcome["label"]]
        if "rows" not in outcome or step.label in dropped:
            continue
        for row in outcome["rows"]:
            for column, value in zip(step.columns, row, strict=False):
                number = _id_value(value) if column in ID_COLUMNS else None
                if number is not None and number > baseline[column]:
                    new_ids[column].add(number)
    rank = {kind: {v: n for n, v in enumerate(sorted(ids), 1)} for kind, ids in new_ids.items()}

    def text(column: str, value: Any) -> Any:
        if value is None:
            return None
        if column in ID_COLUMNS:
            number = _id_value(value)
            if number is not None and number in rank[column]:
                return f"new {column.removesuffix('_id')} #{rank[column][number]}"
            return str(number)
        out = str(value)
        return out.replace(tag, "<tag>") if tag else out

    normalized: dict[str, Outcome] = {}
    for outcome in result["steps"]:
        label = outcome["label"]
        step = BY_LABEL[label]
        if "error" in outcome:
            normalized[label] = {"error": outcome["error"].get("sqlstate")}
        elif "rows" in outcome:
            rows = outcome["rows"]
            if label in dropped:
                normalized[label] = {"rows": "some"}
            else:
                normalized[label] = {"rows": [[text(c, v) for c, v in zip(step.columns, row, strict=False)]
                                              + [str(v) for v in row[len(step.columns):]] for row in rows]}
        elif "count" in outcome:
            normalized[label] = {"count": int(outcome["count"])}
        else:
            normalized[label] = {"ok": True}
    return normalized


@dataclass(frozen=True)
class Difference:
    label: str
    direct: Outcome | None
    proxied: Outcome | None
    #: An allowed difference (see MAY_BE_REFUSED_AFTER_CUTOVER: none is, today).
    allowed: bool = False

    @property
    def sqlstate(self) -> str | None:
        if self.proxied is None or "error" not in self.proxied:
            return None
        return str(self.proxied["error"]["sqlstate"])

    def describe(self) -> str:
        what = BY_LABEL[self.label].what
        mark = " (allowed: refused after cutover)" if self.allowed else ""
        return (f"{self.label}{mark} -- {what}\n      direct:  {outcome_text(self.direct)}\n"
                f"      proxied: {outcome_text(self.proxied)}")


def compare(direct: Result, proxied: Result, baseline: Mapping[str, int], *,
            tags: tuple[str | None, str | None] = (None, None),
            drop_rows: Iterable[str] = ()) -> list[Difference]:
    """Every label whose normalized outcome differs between the two runs, in the workload's order.

    ``tags``: the name prefix each run used, when they differ (the lifecycle load).
    """
    drop = tuple(drop_rows)
    want = normalize(direct, baseline, tag=tags[0], drop_rows=drop)
    got = normalize(proxied, baseline, tag=tags[1], drop_rows=drop)
    raw_direct = {o["label"]: o for o in direct["steps"]}
    raw_proxied = {o["label"]: o for o in proxied["steps"]}
    differences = []
    for step in STEPS:
        if step.label not in want and step.label not in got:
            continue
        if want.get(step.label) == got.get(step.label):
            continue
        proxied_outcome = raw_proxied.get(step.label)
        allowed = (
            step.label in MAY_BE_REFUSED_AFTER_CUTOVER
            and proxied_outcome is not None
            and proxied_outcome.get("error", {}).get("sqlstate") == MAY_BE_REFUSED_AFTER_CUTOVER[step.label]
            and bool(proxied_outcome["error"].get("message"))
        )
        differences.append(Difference(step.label, raw_direct.get(step.label), proxied_outcome, allowed))
    return differences


def failures(differences: Sequence[Difference]) -> list[Difference]:
    return [d for d in differences if not d.allowed]


def report(driver: str, differences: Sequence[Difference]) -> str:
    if not differences:
        return f"{driver}: identical"
    lines = [f"{driver}: {len(failures(differences))} statements differ from the direct run"]
    lines += ["  " + d.describe() for d in differences]
    return "\n".join(lines)


def expect_direct(result: Result, skipped: frozenset[str] = frozenset(), *, shops: Mapping[int, int]) -> None:
    """The workload does what it says on the unmigrated database (guards the workload, not the proxy).

    ``shops``: the sample's customers per shop, which ``all_shops`` must return (shop id -> count).
    """
    check_shape(result, skipped=skipped)
    by = {o["label"]: o for o in result["steps"]}
    errors = {label: o["error"]["sqlstate"] for label, o in by.items() if "error" in o}
    expected_errors = {"tx2.duplicate_user": "23505", "tx3.bad_repair": "23503", "tx3.after_error": "25P02"}
    if errors != expected_errors:
        raise WorkloadError(f"{result['driver']}: direct run errors {errors}, expected {expected_errors}")
    counts = {label: by[label].get("count") for label in
              ("update_status", "tx1.update_price", "tx1.insert_repair", "tx2.update_status",
               "tx2.update_price", "tx3.insert_customer", "copy_in", "delete_repair")}
    expected_counts = dict.fromkeys(counts, 1) | {"copy_in": 20}
    if counts != expected_counts:
        raise WorkloadError(f"{result['driver']}: direct run counts {counts}, expected {expected_counts}")
    single = {label: [[str(v) for v in row] for row in by[label]["rows"]]
              for label in ("tx1.check", "tx3.check", "executemany.check")}
    if single != {"tx1.check": [["2"]], "tx3.check": [["0"]], "executemany.check": [["5"]]}:
        raise WorkloadError(f"{result['driver']}: direct run checks {single}")
    if len(by["select_repair"]["rows"]) != 1 or by["select_deleted"]["rows"] != []:
        raise WorkloadError(f"{result['driver']}: select by id before/after delete: "
                            f"{by['select_repair']['rows']} / {by['select_deleted']['rows']}")
    if [str(v) for v in by["tx2.check"]["rows"][0]] != ["diagnosed", "99.50"]:
        raise WorkloadError(f"{result['driver']}: tx2 did not commit as expected: {by['tx2.check']['rows']}")
    if any(len(by[f"prepared.{n}"]["rows"]) != 1 for n in (1, 2, 3)):
        found = [by[f"prepared.{n}"] for n in (1, 2, 3)]
        raise WorkloadError(f"{result['driver']}: prepared statement rows {found}")
    global_rows = len(by["global_join"]["rows"]) if "global_join" in by else 3  # a run may skip it
    if len(by["fk_join"]["rows"]) != 20 or global_rows != 3:
        raise WorkloadError(f"{result['driver']}: joins returned {len(by['fk_join']['rows'])}"
                            f" / {global_rows} rows")
    if "all_shops" in by:
        per_shop = {int(row[0]): int(row[2]) for row in by["all_shops"]["rows"]}
        if per_shop != dict(shops) or [int(row[0]) for row in by["all_shops"]["rows"]] != sorted(per_shop):
            raise WorkloadError(f"{result['driver']}: all_shops returned {by['all_shops']['rows']},"
                                f" expected {dict(shops)} customers per shop, by shop id")


# --- names the workloads use (the same in every driver) ------------------------------------------
def customer_name(tag: str) -> str:
    return f"{tag} customer"


def batch_names(tag: str) -> list[str]:
    return [f"{tag} batch {n}" for n in range(1, 6)]


def copy_names(tag: str) -> list[str]:
    return [f"{tag} copy {n:02d}" for n in range(1, 21)]


def duplicate_email(shop: int) -> str:
    """The sample's owner of ``shop``: inserting it again violates users.email's unique constraint."""
    return f"owner{shop}@example.test"


#: A customer id no shop has: the FK violation of tx3.
MISSING_CUSTOMER = 2147483647
