"""Write mirroring: every committed write of a tenant table reaches the shop's own database.

Statement replay is wrong for this (serial ids, ``now()``, ``gen_random_uuid()``,
defaults, triggers and cascades give different rows the second time, and
writes that bypass the proxy are missed), so writes are captured at the
source, in the writer's own transaction, and synced by key:

* :mod:`.capture` installs AFTER statement triggers (a generated function per
  table, reading the statement's transition table) that append (shop, table,
  primary key, op, txid, time) to ``pgtenantproxy.outbox`` (:mod:`.schema`):
  committed means captured, rolled back means never captured; a row trigger
  rejects a change of a row's tenant column.
* :mod:`.worker` drains the outbox per shop (lease per shop: safe with several
  proxy instances), :mod:`.apply` syncs each batch of dirty keys (current row
  read from the source by key in one snapshot, upserted into the target, or
  deleted there), idempotent and order-insensitive, in either direction.
* Retries with backoff (:mod:`.retry`), then dead letters (:mod:`.dlq`) and the
  shop marked degraded; nothing is dropped.
* :mod:`.status` answers the router synchronously: lag, degraded,
  read-your-writes markers. :mod:`.stats` holds the metrics.
* :mod:`.fence`: the per-shop write fence in a source database (checked by
  every capture function): what a write cutover closes behind a shop.
* :mod:`.reverse`: after the cutover the same machinery the other way, from
  the shop's tenant database into unified (capture there, the same applier).
* :class:`~.service.DualWriteService` puts it together for the proxy and the CLI.
"""

from pgtenantproxy.dualwrite.errors import CaptureError, DualWriteError, TargetUnavailable
from pgtenantproxy.dualwrite.service import DualWriteService
from pgtenantproxy.dualwrite.stats import MirrorStats
from pgtenantproxy.dualwrite.status import MirrorStatus, WriteMarker

__all__ = [
    "CaptureError",
    "DualWriteError",
    "DualWriteService",
    "MirrorStats",
    "MirrorStatus",
    "TargetUnavailable",
    "WriteMarker",
]
