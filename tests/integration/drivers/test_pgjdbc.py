"""pgjdbc (Debian's libpostgresql-jdbc-java, ``java/Workload.java``): through the proxy as directly."""

from __future__ import annotations

from tests.integration.drivers.harness import Tier, compare_driver, java_missing, run_pgjdbc, skip_unless


def test_pgjdbc(tier: Tier) -> None:
    skip_unless(java_missing())
    compare_driver(tier, "pgjdbc", run_pgjdbc)
