"""``SET pgtenantproxy.shop_id`` followed over transactions, savepoints, errors and pipelining.

Each step is one unit as the session layer reports it: the statements sent,
then the ReadyForQuery status and whether an ErrorResponse came. Expected
values follow PostgreSQL's documented rules for SET / SET LOCAL / RESET.
"""

from __future__ import annotations

import pytest

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import Claim, set_claim
from pgtenantproxy.routing.session_shop import Mark, SessionShop, Value

A = Analyser()
Step = tuple[str, str, bool]  # sql, status after, error


def run(session: SessionShop, sql: str, status: str = "I", error: bool = False) -> Value:
    session.before_batch(A.analyse(sql).statements)
    session.on_ready(ord(status), error=error)
    return session.value


def replay(steps: list[Step]) -> list[Value]:
    session = SessionShop()
    return [run(session, *step) for step in steps]


S5 = "set pgtenantproxy.shop_id = 5"
S6 = "set pgtenantproxy.shop_id = 6"
L6 = "set local pgtenantproxy.shop_id = 6"

SCENARIOS: list[tuple[str, list[Step], list[Value]]] = [
    ("plain set", [(S5, "I", False)], [5]),
    ("set in one unit, read in the next", [(S5, "I", False), ("select 1", "I", False)], [5, 5]),
    ("set then reset", [(S5, "I", False), ("reset pgtenantproxy.shop_id", "I", False)], [5, None]),
    ("reset all", [(S5, "I", False), ("reset all", "I", False)], [5, None]),
    ("discard all", [(S5, "I", False), ("discard all", "I", False)], [5, None]),
    ("set to default", [(S5, "I", False), ("set pgtenantproxy.shop_id to default", "I", False)], [5, None]),
    ("failed implicit transaction undoes the set", [(f"{S5}; select 1/0", "I", True)], [None]),
    ("failed unit keeps the earlier value", [(S5, "I", False), (f"{S6}; select 1/0", "I", True)], [5, 5]),
    ("set local outside a block does nothing", [(L6, "I", False)], [None]),
    (
        "committed block keeps the set",
        [("begin", "T", False), (S5, "T", False), ("commit", "I", False)],
        [None, 5, 5],
    ),
    (
        "rolled back block drops the set",
        [("begin", "T", False), (S5, "T", False), ("rollback", "I", False)],
        [None, 5, None],
    ),
    (
        "error then rollback",
        [("begin", "T", False), (S5, "T", False), ("select 1/0", "E", True), ("rollback", "I", False)],
        [None, 5, 5, None],
    ),
    (
        "commit of a failed block is a rollback",
        [("begin", "T", False), (S5, "T", False), ("select 1/0", "E", True), ("commit", "I", False)],
        [None, 5, 5, None],
    ),
    (
        "set local lasts until the block ends",
        [(S5, "I", False), ("begin", "T", False), (L6, "T", False), ("commit", "I", False)],
        [5, 5, 6, 5],
    ),
    (
        "set then set local in one block: the set wins at commit",
        [("begin", "T", False), (S5, "T", False), (L6, "T", False), ("commit", "I", False)],
        [None, 5, 6, 5],
    ),
    (
        "set local then set in one block: the set wins",
        [("begin", "T", False), (L6, "T", False), (S5, "T", False), ("commit", "I", False)],
        [None, 6, 5, 5],
    ),
    (
        "savepoints",
        [
            ("begin", "T", False),
            (S5, "T", False),
            ("savepoint a", "T", False),
            (S6, "T", False),
            ("rollback to savepoint a", "T", False),
            (S6, "T", False),
            ("release savepoint a", "T", False),
            ("commit", "I", False),
        ],
        [None, 5, 5, 6, 5, 6, 6, 6],
    ),
    (
        "nested savepoints, rollback to the outer one",
        [
            ("begin; savepoint a; set pgtenantproxy.shop_id = 5; savepoint b; " + S6, "T", False),
            ("rollback to a", "T", False),
            ("commit", "I", False),
        ],
        [6, None, None],
    ),
    (
        "rollback to a savepoint recovers a failed block",
        [
            ("begin", "T", False),
            (S5, "T", False),
            ("savepoint a", "T", False),
            (S6, "T", False),
            ("select 1/0", "E", True),
            ("rollback to a", "T", False),
            ("commit", "I", False),
        ],
        [None, 5, 5, 6, 6, 5, 5],
    ),
    ("whole block in one unit", [(f"begin; {S5}; commit", "I", False)], [5]),
    ("whole rolled-back block in one unit", [(f"begin; {S5}; rollback", "I", False)], [None]),
    (
        "commit and chain",
        [
            ("begin", "T", False),
            (S5, "T", False),
            ("commit and chain", "T", False),
            (L6, "T", False),
            ("rollback", "I", False),
        ],
        [None, 5, 5, 6, 5],
    ),
    (
        "a lone failing commit rolls back",
        [("begin", "T", False), (S5, "T", False), ("commit", "I", True)],
        [None, 5, None],
    ),
    ("set to a non-shop value", [("set pgtenantproxy.shop_id = 'abc'", "I", False)], [Mark.INVALID]),
    (
        "set_config is a set",
        [("select set_config('pgtenantproxy.shop_id', '7', false)", "I", False)],
        [7],
    ),
    (
        "set_config with unknown values loses track",
        [("select set_config($1, $2, false)", "I", False)],
        [Mark.UNKNOWN],
    ),
    # errors after which the proxy cannot know what ran
    (
        "begin and set then an error in one unit",
        [(f"begin; {S5}; select 1/0", "E", True), ("rollback", "I", False)],
        [Mark.UNKNOWN, None],
    ),
    (
        "commit then an error in one unit",
        [("begin", "T", False), (S5, "T", False), ("commit; select 1/0", "I", True), (S6, "I", False)],
        [None, 5, Mark.UNKNOWN, 6],
    ),
    (
        "an unrelated error inside a dirty block undoes nothing",
        [("begin", "T", False), (S5, "T", False), ("select 1/0", "E", True)],
        [None, 5, 5],
    ),
    (
        "a savepoint rollback plus an error in a dirty block",
        [
            ("begin", "T", False),
            (S5, "T", False),
            ("savepoint a", "T", False),
            (S6, "T", False),
            ("rollback to a; select 1/0", "E", True),
            ("rollback", "I", False),
        ],
        [None, 5, 5, 6, Mark.UNKNOWN, None],
    ),
    (
        "the server says idle while the proxy thought a block was open",
        [("begin", "T", False), (S5, "T", False), ("select 1", "I", False)],
        [None, 5, Mark.UNKNOWN],
    ),
    (
        "the server says a block is open the proxy did not see",
        [("select 1", "T", False), (S5, "T", False), ("rollback", "I", False)],
        [None, 5, None],
    ),
]


@pytest.mark.parametrize(("steps", "values"), [pytest.param(s, v, id=name) for name, s, v in SCENARIOS])
def test_scenario(steps: list[Step], values: list[Value]) -> None:
    assert replay(steps) == values


def test_pipelined_units_without_errors() -> None:
    session = SessionShop()
    session.before_batch(A.analyse(S5).statements)
    session.before_batch(A.analyse("select 1").statements)
    assert session.value == 5  # simulated ahead of the answers
    session.on_ready(ord("I"), error=False)
    session.on_ready(ord("I"), error=False)
    assert session.value == 5


def test_pipelined_error_after_a_set_loses_track() -> None:
    session = SessionShop()
    session.before_batch(A.analyse(S5).statements)
    session.before_batch(A.analyse("select 1").statements)
    session.on_ready(ord("I"), error=True)
    session.on_ready(ord("I"), error=False)
    assert session.value is Mark.UNKNOWN
    assert run(session, "reset pgtenantproxy.shop_id") is None


def test_pipelined_error_that_touched_nothing_changes_nothing() -> None:
    session = SessionShop()
    run(session, S5)
    session.before_batch(A.analyse("select 1/0").statements)
    session.before_batch(A.analyse("select 1").statements)
    session.on_ready(ord("I"), error=True)
    session.on_ready(ord("I"), error=False)
    assert session.value == 5


def test_ready_without_a_reported_unit() -> None:
    session = SessionShop()
    run(session, S5)
    session.on_ready(ord("I"), error=True)
    assert session.value == 5
    session.on_ready(ord("T"), error=False)
    assert session.value == 5


def test_set_claim() -> None:
    session = SessionShop()
    assert set_claim(session) is None
    run(session, S5)
    assert set_claim(session) == Claim("set", 5)
    run(session, "set pgtenantproxy.shop_id = 'x'")
    assert set_claim(session) == Claim("set", None)
    run(session, f"begin; {S5}; select 1/0", "E", True)
    assert set_claim(session) == Claim("set", None)
