"""Errors of write mirroring, and which failures are the target's fault rather than an entry's.

A failure while applying entries is either *transient* (the target cannot be
reached, is shutting down, out of resources, a lock or serialization conflict):
the whole shop backs off and retries later and no entry is charged an attempt,
however long it lasts; or it is *entry-level* (any other SQL error: a missing
column, a revoked privilege, a constraint): the keys that fail are retried
with backoff and, after the configured retries, dead-lettered.
"""

from __future__ import annotations

import asyncio

import asyncpg
from asyncpg.exceptions._base import DataError as _ClientDataError
from asyncpg.exceptions._base import OutdatedSchemaCacheError as _OutdatedCache

from pgtenantproxy.tenancy.errors import describe

__all__ = ["CaptureError", "DualWriteError", "TargetUnavailable", "describe", "is_transient"]

#: SQLSTATE classes that say "the server or the connection", not "this row".
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
TRANSIENT_CODES = frozenset({"55P03", "55006"})  # lock_not_available, object_in_use


class DualWriteError(Exception):
    """A write-mirroring failure an operator can act on (the message names what is at fault)."""


class CaptureError(DualWriteError):
    """Capture cannot be installed as asked (a table without a primary key, a missing column...)."""


class TargetUnavailable(DualWriteError):
    """The shop's target database cannot be used right now; the shop backs off and retries."""

    def __init__(self, shop_id: int, cause: BaseException) -> None:
        super().__init__(f"shop {shop_id}: target database unavailable: {describe(cause)}")
        self.shop_id = shop_id
        self.cause = cause


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` says the server or connection failed, not the data being applied."""
    if isinstance(exc, OSError | asyncio.TimeoutError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    # "connection is closed" and the like; not the client-side data errors (bad parameter values).
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, _ClientDataError | _OutdatedCache)
