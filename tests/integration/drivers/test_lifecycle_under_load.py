"""The psycopg workload looping through the proxy while every shop goes mirroring -> reads_on_tenant ->
tenant_primary, one by one, by the operator's commands (run by the package fixture, :mod:`.lifecycle`).

Every iteration is compared with the same workload on the unmigrated copy:
zero failed or refused statements, no broken connection, every command
succeeded under the load, and the load ran in every phase of its shops.
"""

from __future__ import annotations

from collections import Counter

from tests.integration.drivers.harness import Tier


def test_every_command_succeeded_under_load(tier: Tier) -> None:
    run = tier.lifecycle
    bad = [f"shop {m.shop}: `{m.command}` exited {m.returncode} ({m.phase_after}): {m.output.strip()[-800:]}"
           for m in run.moves if m.returncode != 0]
    assert bad == [], "\n".join(bad)
    assert run.retried_without_load == []
    assert set(run.final_phases.values()) == {"tenant_primary"}


def test_the_load_ran_in_every_phase(tier: Tier) -> None:
    phases = Counter(it.phase for it in tier.lifecycle.iterations)
    print(f"load iterations per phase of their shop: {dict(phases)}")
    for phase in ("mirroring", "reads_on_tenant", "tenant_primary"):
        assert phases[phase] > 0, phases


def test_zero_failed_or_refused_transactions(tier: Tier) -> None:
    run = tier.lifecycle
    summary = run.summary()
    (tier.results_dir / "lifecycle.txt").write_text(summary + "\n")
    print(summary)
    assert [it.crash for it in run.iterations if it.crash] == [], summary
    assert run.failed() == [], summary
