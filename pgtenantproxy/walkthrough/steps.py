"""The migration phases as a list of named steps, in the order the walkthrough runs them.

Each :class:`Step` has a short name, a heading, a sentence on what it does,
an action (``async (walk) -> outcome line``) and how long the load runs
before its figures are taken. :func:`walkthrough_steps` returns the list;
the write cutover, the rollback of one shop, retirement and restore follow
the reads (their actions live in :mod:`.lifecycle`). Actions use the same
entry points as the CLI and the admin API:
``TenancyService.provision_many``, ``DualWriteService.enable``,
:func:`~pgtenantproxy.migration.backfill.backfill_shops`,
:func:`~pgtenantproxy.migration.verify.verify_shops` and the admin action
:func:`~pgtenantproxy.admin.actions.set_reads`, so the walkthrough shows
what an operator's commands do, not a shortcut.

Invariant: a step either returns its outcome or raises :class:`StepFailed`
saying why; nothing is retried behind the operator's back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pgtenantproxy.admin.actions import set_reads
from pgtenantproxy.dispatch.routing_state import RoutingState
from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.backfill import backfill_shops
from pgtenantproxy.migration.verify import verify_shops
from pgtenantproxy.walkthrough.context import ACTOR, StepFailed, Walk
from pgtenantproxy.walkthrough.figures import BackfillLines
from pgtenantproxy.walkthrough.lifecycle import cutover, restore, retire, rollback_one
from pgtenantproxy.walkthrough.reports import federated_reads

Action = Callable[[Walk], Awaitable[str]]
PHASE_TIMEOUT_S = 15.0
#: Shops provisioned at once (each holds one connection of the runtime's small control-plane pool).
PROVISION_CONCURRENCY = 4


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    explain: str
    action: Action
    #: Seconds the load runs after the action before the figures (a quarter with --fast).
    pause_s: float = 2.0


async def baseline(walk: Walk) -> str:
    return (f"{len(walk.shops)} shops, all data in unified; read strategy percentage 0: "
            "every read runs on unified")


async def provision(walk: Walk) -> str:
    outcomes = await walk.tenancy.provision_many(walk.shops, concurrency=PROVISION_CONCURRENCY)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise StepFailed("provisioning failed: " + "; ".join(f"shop {o.shop_id}: {o.error}" for o in failed))
    await walk.runtime.refresh_now()
    servers = sorted({o.server for o in outcomes if o.server})
    return f"{len(outcomes)} shop databases created" + (f" on {', '.join(servers)}" if servers else "")


async def capture(walk: Walk) -> str:
    captured = await walk.mirror.enable()
    return (f"capture triggers on {len(captured)} tables ({', '.join(t.label for t in captured)}); "
            "every committed write now also lands in the outbox")


async def backfill(walk: Walk) -> str:
    report = await backfill_shops(walk.tenancy, walk.shops, config=walk.config,
                                  progress=BackfillLines(walk.console), wait=True, actor=ACTOR)
    if not report.ok:
        bad = [f"shop {s.shop_id}: {s.status} ({s.detail})" for s in report.shops if not s.ok]
        raise StepFailed("backfill failed: " + "; ".join(bad))
    rate = report.rows / report.seconds if report.seconds else 0.0
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(report.by_status().items()))
    return (f"{report.rows:,} rows ({report.bytes / 1e6:.1f} MB) copied in {report.seconds:.1f}s "
            f"({rate:,.0f} rows/s); shops: {statuses}")


async def verify(walk: Walk) -> str:
    try:
        report = await verify_shops(walk.tenancy, walk.shops, config=walk.config, actor=ACTOR)
    except MigrationError as exc:
        raise StepFailed(f"verification refused: {exc}") from None
    if not report.identical:
        bad = [f"shop {s.shop_id}: {s.status} ({s.summary()})" for s in report.shops if not s.identical]
        raise StepFailed("verification found differences: " + "; ".join(bad))
    return (f"{len(report.shops)} shops identical: {report.rows:,} rows compared by checksum "
            f"in {report.seconds:.1f}s, while the load kept writing")


def reads_at(percentage: int) -> Action:
    async def action(walk: Walk) -> str:
        await set_reads(walk.runtime, RoutingState("percentage", percentage=percentage),
                        f"activate-reads {percentage}%", ACTOR)
        chosen = [s for s in walk.shops if walk.runtime.dispatcher.selects(s)]

        def settled(shop: int, phase: str) -> bool:
            return phase == (ph.READS_ON_TENANT if shop in chosen else ph.MIRRORING)

        phases = await walk.wait_phases(settled, timeout_s=PHASE_TIMEOUT_S)
        stuck = [f"shop {s} in {p}" for s, p in phases.items() if not settled(s, p)]
        if stuck:
            raise StepFailed(f"the phase keeper did not move the shops within {PHASE_TIMEOUT_S:.0f}s: "
                             + ", ".join(stuck))
        if not chosen:
            return f"the strategy selects none of the {len(walk.shops)} shops: every read stays on unified"
        return (f"the strategy selects {len(chosen)} of {len(walk.shops)} shops "
                f"({', '.join(map(str, chosen))}): their phase is now reads_on_tenant")

    return action


def walkthrough_steps() -> list[Step]:
    return [
        Step("baseline", "Baseline: the application runs through the proxy",
             "Readers and writers query every shop through the proxy; nothing has moved yet.", baseline),
        Step("provision", "Provision: one database per shop",
             "Each shop gets its database and role on the tenant server, with the tenant tables' "
             "schema cloned from unified (TenancyService.provision_many).", provision, pause_s=1.0),
        Step("capture", "Capture: write capture on",
             "Triggers on the tenant tables record every committed write in the outbox, in the writer's "
             "own transaction. Until a shop is backfilled its entries wait there (its lag grows); then "
             "the mirror worker applies them to the shop's database.", capture, pause_s=1.0),
        Step("backfill", "Backfill: copy every shop's rows",
             "Per shop, the rows are copied with binary COPY from one snapshot; the mirror then applies "
             "what was written meanwhile and the shop moves on to mirroring.", backfill),
        Step("verify", "Verify: compare every shop, row by row",
             "Row counts and checksums over primary-key ranges on both sides, with rechecks for writes "
             "in flight; nothing is locked.", verify),
        Step("reads-0", "Reads 0%: every shop mirrored, all reads still on unified",
             "The read strategy is set through the admin API action (percentage 0): shops are ready, "
             "none is selected.", reads_at(0), pause_s=4.0),
        Step("reads-50", "Reads 50%: about half the shops read from their own database",
             "Percentage 50: shops whose stable hash bucket is under 50 send their reads to tenant; "
             "writes stay on unified and are mirrored.", reads_at(50), pause_s=6.0),
        Step("reads-100", "Reads 100%: every shop reads from its own database",
             "Percentage 100: every shop's reads go to its tenant database while its mirror keeps up. "
             "A read right after the same session's write stays on unified until the mirror has applied "
             "that write (read-your-writes).", reads_at(100), pause_s=6.0),
        Step("cutover", "Cutover: every shop's writes move to its own database",
             "Per shop, one at a time: hold its new write transactions in every proxy, let its open ones "
             "finish, drain its mirror, verify, set its sequences, flip it to tenant_primary, release. Other "
             "shops never pause. From then on its database is the source of truth and reverse mirroring "
             "keeps unified current, for a rollback.", cutover, pause_s=4.0),
        Step("rollback", "Rollback: one shop's writes come back to unified",
             "The reverse fence: hold the shop's writes, drain its reverse mirror, flip it back to "
             "reads_on_tenant, release. Its writes go to unified again and are mirrored forward; its reads "
             "stay on its database.", rollback_one, pause_s=3.0),
        Step("retire", "Retirement: the legacy rows of a shop leave unified",
             "A dry run of every shop in tenant_primary (gate: reverse mirror drained, verification "
             "identical; nothing changes), then one shop is retired: its rows are archived per table with "
             "checksums, then deleted from unified in one transaction. The load keeps using the shop.",
             retire, pause_s=2.0),
        Step("federated", "After retirement: reports over every shop stay whole",
             "A report over all shops and a retired shop's join with a global table, through the proxy as "
             "the app: reads that need several databases run on unified, reading cut-over and retired shops "
             "through postgres_fdw foreign tables, so no answer silently loses rows.",
             federated_reads, pause_s=1.0),
        Step("restore", "Restore: the retired shop's rows come back from the archive",
             "The archive is checked, loaded into unified in one transaction, what the shop wrote since is "
             "synced, and the shop is verified against its database before it returns to tenant_primary.",
             restore, pause_s=2.0),
    ]
