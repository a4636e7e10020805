"""Issue 14: after retirement every read still returns all its rows.

The answers of every shape (:mod:`.shapes`) recorded through the proxy while
every shop was on unified (the package fixture) are the expected ones: with
every shop cut over and shops 1, 3, 6 retired (their rows deleted from
unified), each shape must answer exactly the same through the proxy, with
psycopg 3 and with asyncpg, or -- only for the shapes marked
``allowed_refusal`` -- be refused with SQLSTATE 0A000 (and change nothing).
The fan-out shapes run through a second proxy with a low
``[federation] max_shops_per_query``. Reports: ``after-<shapes|fanout>-<driver>.txt``
in the bed's directory.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from tests.integration.drivers.bed import SHOPS, Target
from tests.integration.federation.conftest import FederationBed
from tests.integration.federation.runner import (
    DRIVERS,
    indent,
    problem,
    report,
    run_asyncpg,
    run_psycopg,
)
from tests.integration.federation.shapes import FANOUT_SHAPES, NARROW_MAX_SHOPS, RETIRED, SHAPES, Shape

# The bed and the migration (about a minute or two together) are built in the first test's setup.
pytestmark = pytest.mark.timeout(600)


def test_the_shapes_are_many_and_distinct() -> None:
    names = [s.name for s in SHAPES + FANOUT_SHAPES]
    assert len(names) == len(set(names))
    assert len(SHAPES) >= 30


def test_answers_before_recorded(federation: FederationBed) -> None:
    """Every shape answered (no error, rows in every read) by both drivers through the proxy before the
    migration, and the same as directly on the unmigrated copy."""
    bad = []
    for driver in DRIVERS:
        for shape in SHAPES + FANOUT_SHAPES:
            answer = federation.before[driver][shape.name]
            if answer.error is not None:
                bad.append(f"{driver} {shape.name}: {answer.error}")
            elif any(kind == "rows" and not rows for kind, rows in answer.results):
                bad.append(f"{driver} {shape.name}: a read returned no rows (a useless shape)")
            elif (diff := problem(replace(shape, allowed_refusal=None),
                                  federation.direct[driver][shape.name], answer)) is not None:
                bad.append(f"{driver} {shape.name}: through the proxy != directly:\n{indent(diff)}")
    for shape in SHAPES + FANOUT_SHAPES:
        print(f"  {shape.name}: " + " | ".join(f"{d} {federation.before[d][shape.name].brief()}"
                                               for d in DRIVERS))
    assert bad == [], "\n".join(bad)


def test_shops_migrated_and_retired(federation: FederationBed) -> None:
    phases = federation.bed.phases()
    expected = {shop: "retired" if shop in RETIRED else "tenant_primary" for shop in SHOPS}
    assert phases == expected, federation.migration.log()


def _run(federation: FederationBed, where: Target, shapes: tuple[Shape, ...],
         tag: str) -> tuple[str, list[str]]:
    bed = federation.bed
    after = {"psycopg": run_psycopg(where.conninfo(), shapes),
             "asyncpg": run_asyncpg(where.asyncpg_kwargs(), shapes)}
    texts, failing = [], []
    for driver in DRIVERS:
        text, bad = report(driver, shapes, federation.before[driver], after[driver])
        (bed.workdir / f"after-{tag}-{driver}.txt").write_text(text + "\n")
        texts.append(f"[{tag}, through {where.name}] {text}")
        failing += [f"{tag} {driver}: {name}" for name in bad]
    return "\n\n".join(texts), failing


def test_every_shape_answers_as_before(federation: FederationBed) -> None:
    """Every shape through the bed's proxy; then the fan-out shapes through a second proxy with
    ``[federation] max_shops_per_query`` = NARROW_MAX_SHOPS (more moved shops: refused with 0A000; as
    many: answered as before). Both drivers, one verdict (so that ``-x`` still shows every failure)."""
    assert NARROW_MAX_SHOPS < len(SHOPS)
    bed = federation.bed
    shapes_text, failing = _run(federation, bed.proxied, SHAPES, "shapes")
    fanout_text, fanout_failing = _run(federation, federation.narrow, FANOUT_SHAPES, "fanout")
    failing += fanout_failing
    print("\n" + shapes_text + "\n\n" + fanout_text)
    trouble = [line for line in bed.proxy_log().splitlines()
               if re.search(r"\b(ERROR|CRITICAL)\b|Traceback", line)]
    if trouble:
        print(f"\nproxy log ({bed.log_path}): {len(trouble)} ERROR/Traceback lines, e.g.:\n"
              + indent("\n".join(trouble[:5])))
    assert failing == [], f"{len(failing)} failing (shape, driver):\n" + "\n".join(failing)
