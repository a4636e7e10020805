"""The driver tier: real drivers' workloads through the proxy with every shop cut over, some retired.

One bed for the whole package (:mod:`.bed`): built, then every shop taken to
``tenant_primary`` by the operator's commands while the psycopg workload
loops through the proxy, then some shops retired (:mod:`.lifecycle`). The tests then compare each
driver's workload through the proxy with the same workload on the
unmigrated copy (:mod:`.harness`), run pgbench, and judge the lifecycle
run. Results, differences and the proxy's log are kept in the bed's
directory (pytest's ``tmp_path_factory``: ``.../drivers0/``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.drivers.bed import make_bed
from tests.integration.drivers.harness import Tier
from tests.integration.drivers.lifecycle import migrate


@pytest.fixture(scope="package")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    bed = make_bed(tmp_path_factory.mktemp("drivers"))
    try:
        run = migrate(bed)
        print(f"\ndriver tier bed in {bed.workdir}; lifecycle: {run.summary()}")
        yield Tier(bed, run)
    finally:
        bed.destroy()
