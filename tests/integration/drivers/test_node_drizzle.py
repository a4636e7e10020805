"""node-postgres + Drizzle ORM (``node/workload.mjs``): through the proxy, all shops cut over, as directly."""

from __future__ import annotations

from tests.integration.drivers.harness import Tier, compare_driver, node_missing, run_node, skip_unless


def test_node_postgres_with_drizzle(tier: Tier) -> None:
    skip_unless(node_missing())
    compare_driver(tier, "node", run_node)
