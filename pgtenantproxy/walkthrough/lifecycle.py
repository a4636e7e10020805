"""The walkthrough's steps after "reads 100%": write cutover, rollback of one shop, retirement, restore.

Each action calls the entry point the CLI and the admin API call
(:func:`~pgtenantproxy.migration.cutover.cutover_shops`,
:func:`~pgtenantproxy.migration.rollback.rollback_shops`,
:func:`~pgtenantproxy.migration.retire.retire_shops`,
:func:`~pgtenantproxy.migration.restore.restore_shop`), prints what it did per
shop (write pause, rows archived, the archive's path) and returns its outcome
line; the load keeps running through all of them.

Which shops: the first shop is rolled back (its writes return to unified, its
reads stay on its database), the last one is retired and then restored, so
the end-of-run verification still compares every shop; the load keeps reading
and writing the retired shop (its statements run on its own database, as for
any cut-over shop; reads that need it with other shops or global tables are
federated) until its restore, which needs its writes quiet. The archive goes to
``[migration] archive_dir``, which the walkthrough's config points into the
throwaway cluster's directory (:meth:`.cluster.Sandbox.config`).

Invariant (as in :mod:`.steps`): an action returns its outcome or raises
:class:`~.context.StepFailed`; nothing is retried behind the operator's back.
"""

from __future__ import annotations

from rich.table import Table

from pgtenantproxy.lifecycle import phases as ph
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.migration.cutover import CutoverContext, cutover_shops
from pgtenantproxy.migration.cutover_report import DONE, FenceReport
from pgtenantproxy.migration.restore import restore_shop
from pgtenantproxy.migration.retire import retire_shops
from pgtenantproxy.migration.retire_report import RETIRED, WOULD_RETIRE, RetirementReport
from pgtenantproxy.migration.rollback import rollback_shops
from pgtenantproxy.walkthrough.context import ACTOR, StepFailed, Walk


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _pause_table(report: FenceReport) -> Table:
    table = Table("shop", "outcome", "phase", "write pause", "detail", title_justify="left")
    for shop in report.shops:
        pause = None if shop.pause_s is None else shop.pause_s * 1000
        table.add_row(str(shop.shop_id), shop.status, shop.phase or "-", _ms(pause), shop.detail or "")
    return table


async def cutover(walk: Walk) -> str:
    report = await cutover_shops(walk.tenancy, None, percentage=100, config=walk.config, actor=ACTOR)
    walk.console.print(_pause_table(report))
    if not report.ok or len(report.shops) != len(walk.shops):
        bad = [f"shop {s.shop_id}: {s.status} ({s.detail})" for s in report.shops if not s.ok]
        raise StepFailed(f"cutover of {len(report.shops)} of {len(walk.shops)} shops: " + "; ".join(bad))
    await walk.runtime.refresh_now()
    pauses = report.as_dict()["pause_ms"]
    done = sum(1 for s in report.shops if s.status == DONE)
    return (f"{done} shops cut over, one at a time: their writes now go to their own databases; "
            f"write pause P50 {_ms(pauses['p50'])}, P99 {_ms(pauses['p99'])}, max {_ms(pauses['max'])}")


async def rollback_one(walk: Walk) -> str:
    shop = walk.shops[0]
    results = await rollback_shops(CutoverContext(walk.tenancy, walk.config, actor=ACTOR), [shop])
    report = FenceReport("rollback", results)
    walk.console.print(_pause_table(report))
    result = results[0]
    if result.status != DONE or result.phase != ph.READS_ON_TENANT:
        raise StepFailed(f"rollback of shop {shop}: {result.status} in phase {result.phase} "
                         f"({result.detail})")
    await walk.runtime.refresh_now()
    pause = None if result.pause_s is None else result.pause_s * 1000
    return (f"shop {shop} is back in phase {result.phase}: its writes go to unified again (mirrored "
            f"forward), its reads stay on its database; write pause {_ms(pause)}")


def _retirement_table(report: RetirementReport) -> Table:
    table = Table("shop", "gate", "rows in unified", "verification", "archive", title_justify="left")
    for shop in report.shops:
        gate = shop.status + (f": {'; '.join(shop.reasons)}" if shop.reasons else "")
        table.add_row(str(shop.shop_id), gate, f"{shop.total_rows:,}", shop.verification or "-",
                      shop.archive or "-")
    return table


async def retire(walk: Walk) -> str:
    """A dry run of every shop in tenant_primary, then one shop retired for real."""
    dry = await retire_shops(walk.tenancy, None, config=walk.config, dry_run=True, actor=ACTOR)
    walk.console.print(f"dry run (nothing changed): {len(dry.with_status(WOULD_RETIRE))} of "
                       f"{len(dry.shops)} shops in tenant_primary would retire, {dry.rows:,} rows")
    walk.console.print(_retirement_table(dry))
    shop = walk.shops[-1]
    walk.console.print(f"the load keeps reading and writing shop {shop}: its statements run on its own "
                       "database")
    if shop not in dry.with_status(WOULD_RETIRE):
        raise StepFailed(f"the dry run says shop {shop} cannot retire: {dry.to_json(indent=None)}")
    report = await retire_shops(walk.tenancy, [shop], config=walk.config, actor=ACTOR)
    walk.console.print(_retirement_table(report))
    if report.with_status(RETIRED) != [shop]:
        raise StepFailed(f"retirement of shop {shop} failed: {report.to_json(indent=None)}")
    done = report.shops[0]
    return (f"shop {shop} retired: {done.total_rows:,} rows archived ({done.bytes / 1024:,.0f} KiB, "
            f"checksummed) in {done.archive} and deleted from unified; its reads and writes stay on "
            "its database")


async def restore(walk: Walk) -> str:
    shop = walk.shops[-1]
    walk.workload.leave(shop)  # a restore catches up and verifies against a quiet shop (docs/migration.md)
    walk.console.print(f"the load leaves shop {shop} alone while it is restored")
    try:
        result = await restore_shop(walk.tenancy, shop, config=walk.config, actor=ACTOR)
    except MigrationError as exc:
        raise StepFailed(f"restore of shop {shop} refused: {exc}") from None
    finally:
        walk.workload.resume(shop)
    return (f"shop {shop} restored from {result.archive}: {result.total_rows:,} rows loaded, "
            f"{result.caught_up} keys written since the retirement synced, verification "
            f"{result.verification}; back in phase tenant_primary, reverse mirroring resumed")
