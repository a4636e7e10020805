"""The psycopg workload looping through the proxy while every shop goes mirroring -> reads_on_tenant ->
tenant_primary, one by one, by the operator's commands (run by the package fixture, :mod:`.lifecycle`);
then some shops retired (``retire --shop N``).

Every iteration is compared with the same workload on the unmigrated copy:
zero failed or refused statements, no broken connection, every command
succeeded under the load, and the load ran in every phase of its shops.
Every retirement succeeded at once (no refusal, so no ``--force``): the shops
of ``RETIRED_SHOPS`` are ``retired``, the others ``tenant_primary``.
"""

from __future__ import annotations

from collections import Counter

from tests.integration.drivers.bed import RETIRED_SHOPS, SHOPS
from tests.integration.drivers.harness import Tier


def test_every_command_succeeded_under_load(tier: Tier) -> None:
    run = tier.lifecycle
    bad = [f"shop {m.shop}: `{m.command}` exited {m.returncode} ({m.phase_after}): {m.output.strip()[-800:]}"
           for m in run.moves if m.returncode != 0]
    assert bad == [], "\n".join(bad)
    assert run.retried_without_load == []


def test_the_retirements_succeeded(tier: Tier) -> None:
    run = tier.lifecycle
    done = [f"shop {m.shop}: `{m.command}` exited {m.returncode} ({m.phase_after}): "
            f"{m.output.strip()[-1500:]}" for m in run.retirements]
    print("\n".join(done))
    expected = {shop: "retired" if shop in RETIRED_SHOPS else "tenant_primary" for shop in SHOPS}
    assert run.final_phases == expected, "\n".join(done)
    # Each retired by its first command: no refusal (a --check and --force after one is recorded, and fails).
    assert [m.shop for m in run.retirements] == list(RETIRED_SHOPS), "\n".join(done)
    assert all(m.returncode == 0 for m in run.retirements), "\n".join(done)


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
