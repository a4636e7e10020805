"""pgbench (``pgbench/by_id.pgbench``): transactions that begin with an update by id, reads by id.

Random repairs of every shop (all cut over), 4 clients, ``-M extended`` and
``-M prepared``: every transaction processed, 0 failed transactions AND no
aborted client (pgbench aborts a client on an error that is not a
serialization or deadlock failure, and counts only those as failed).
Directly on the unmigrated copy first, which must be clean too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.drivers.bed import BASELINE
from tests.integration.drivers.harness import Tier, run_pgbench

SCRIPT = Path(__file__).parent / "pgbench" / "by_id.pgbench"
CLIENTS, TRANSACTIONS = 4, 50


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_by_id(tier: Tier, mode: str) -> None:
    runs = {}
    for target in (tier.bed.direct, tier.bed.proxied):
        runs[target.name] = run_pgbench(target, SCRIPT, bindir=tier.bed.bindir, mode=mode, clients=CLIENTS,
                                        transactions=TRANSACTIONS, max_repair=BASELINE["repair_id"])
        (tier.results_dir / f"pgbench-{mode}-{target.name}.txt").write_text(runs[target.name].output)
    assert runs["direct"].problems() == [], runs["direct"].output
    problems = runs["proxy"].problems()
    print(f"pgbench -M {mode} through the proxy: {problems or 'clean'}")
    assert problems == [], runs["proxy"].output
