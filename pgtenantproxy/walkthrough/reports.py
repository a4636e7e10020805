"""The walkthrough's proof that reads stay whole after retirement: a cross-shop report and a global join.

After one shop is retired (its legacy rows gone from unified) and the others
are cut over, the app's reports still see every shop: the proxy federates
reads that need several databases (docs/routing.md, "Federated reads"). This
step runs, through the proxy as the application:

* a report over all shops (``count(*)`` per shop of the sample's repairs: ids
  up to the number loaded, which the running load never adds to, since its
  new rows take later ids on unified and id-block ids on cut-over shops),
  compared with the same count asked shop by shop (each of those runs on the
  shop's own database);
* one page of the retired shop's repairs joined with the global table
  ``device_models`` (a reference table in the walkthrough: answered by the
  shop's own database from its copy while the copy is current, else
  federated).

It returns its outcome or raises :class:`~.context.StepFailed` when an
answer is missing rows.
"""

from __future__ import annotations

import asyncpg
from rich.table import Table

from pgtenantproxy.walkthrough.context import StepFailed, Walk

REPORT = ("SELECT shop_id, count(*) FROM repairs WHERE id <= $1 AND shop_id = ANY($2::int[]) "
          "GROUP BY shop_id ORDER BY shop_id")
ONE_SHOP = "SELECT count(*) FROM repairs WHERE id <= $1 AND shop_id = $2"
GLOBAL_JOIN = ("SELECT r.id, m.model, r.status FROM repairs r JOIN device_models m "
               "ON m.id = r.device_model_id WHERE r.shop_id = $1 ORDER BY r.id LIMIT 5")


async def federated_reads(walk: Walk) -> str:
    conn = await asyncpg.connect(**walk.workload.connect_kwargs)
    try:
        return await _reports(walk, conn)
    finally:
        await conn.close()


async def _reports(walk: Walk, conn: asyncpg.Connection) -> str:
    shops = list(walk.shops)
    retired = shops[-1]
    last = walk.sample.get("repairs", 0)
    report = {r[0]: r[1] for r in await conn.fetch(REPORT, last, shops)}
    per_shop = {shop: await conn.fetchval(ONE_SHOP, last, shop) for shop in shops}
    table = Table("shop", "phase", "report over all shops", "asked shop by shop", title_justify="left")
    phases = await walk.phases()
    for shop in shops:
        table.add_row(str(shop), phases[shop], f"{report.get(shop, 0):,}", f"{per_shop[shop]:,}")
    walk.console.print(table)
    page = await conn.fetch(GLOBAL_JOIN, retired)
    joined = Table("repair", "device model (global table)", "status", title=f"shop {retired}, retired",
                   title_justify="left")
    for row in page:
        joined.add_row(str(row["id"]), row["model"], row["status"])
    walk.console.print(joined)
    if report != {s: n for s, n in per_shop.items() if n}:
        raise StepFailed("the report over all shops disagrees with the shops' own counts: "
                         f"{report} vs {per_shop}")
    if not page:
        raise StepFailed(f"shop {retired}'s repairs joined with device_models came back empty")
    return (f"after retirement a report over {len(shops)} shops ({sum(report.values()):,} repairs) matches "
            f"every shop's own count (federated: unified reads the cut-over and retired shops through "
            f"postgres_fdw), and shop {retired}'s repairs join the global device_models (its reference copy)")
