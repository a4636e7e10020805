"""psql (``psql/workload.sql``: explicit BEGIN, SAVEPOINT, PREPARE/EXECUTE, ``\\copy``): as directly."""

from __future__ import annotations

from tests.integration.drivers.bed import Target
from tests.integration.drivers.harness import Tier, compare_driver, run_psql
from tests.integration.drivers.workload import Result


def test_psql(tier: Tier) -> None:
    def runner(target: Target, shop: int, tag: str) -> Result:
        return run_psql(target, shop, tag, bindir=tier.bed.bindir, workdir=tier.results_dir)

    compare_driver(tier, "psql", runner)
