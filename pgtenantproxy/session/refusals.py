"""The errors the session raises itself, each a :class:`~pgtenantproxy.session.decision.Refusal`."""

from __future__ import annotations

from pgtenantproxy.protocol.errors import (
    CONNECTION_FAILURE,
    FEATURE_NOT_SUPPORTED,
    PROTOCOL_VIOLATION,
    error_response,
)
from pgtenantproxy.session.decision import Refusal


def hold_timeout_error(shop_id: int | None) -> Refusal:
    return Refusal(
        "55P03",
        f"pgtenantproxy: shop {shop_id} is being cut over; retry",
        "Its writes pause for a few seconds while its data moves; the transaction can be retried.",
    )


def pinned_refusal(shop_id: int) -> Refusal:
    return Refusal(
        FEATURE_NOT_SUPPORTED,
        f"pgtenantproxy: this statement cannot run in a transaction on shop {shop_id}'s database",
        "Run it in a transaction of its own.",
    )


def primary_unavailable(shop_id: int | None) -> Refusal:
    return Refusal(
        CONNECTION_FAILURE,
        f"pgtenantproxy: the database of shop {shop_id} is unavailable",
        "The shop's data lives on its own database since its cutover; the transaction can be retried.",
    )


def lost_transaction(shop_id: int | None) -> Refusal:
    return Refusal(
        CONNECTION_FAILURE,
        f"pgtenantproxy: the transaction on shop {shop_id}'s database was lost (its connection was not "
        "in a clean state) and rolled back",
        "Nothing of it was committed; retry the transaction.",
    )


def tenant_unavailable(shop_id: int | None) -> bytes:
    return error_response(
        CONNECTION_FAILURE,
        f"pgtenantproxy: the database of shop {shop_id} is unavailable",
        hint="[routing] enable_fallback = true re-runs such reads on the unified database.",
    )


def not_in_tenant_transaction(shop_id: int | None) -> bytes:
    return error_response(
        FEATURE_NOT_SUPPORTED,
        "pgtenantproxy: a Flush, COPY data or a function call cannot run in a transaction on "
        f"shop {shop_id}'s database",
        severity="FATAL",
    )


_COPY_HINT = ("Each shop's rows live on its own database: copy each shop's rows in a COPY of its own; "
              "see docs/routing.md, \"COPY\".")


def copy_row_refusal(table: str, row: int, *, shop_id: int | None, runs_on: int | None,
                     problem: str | None = None, transaction: bool = False) -> Refusal:
    """A COPY FROM STDIN row the proxy cannot let through: another shop's, or one with no shop."""
    where = "transaction" if transaction else "COPY"
    if problem is not None or shop_id is None:
        what = f"row {row} {problem or 'has no shop'}"
    else:
        what = f"row {row} belongs to shop {shop_id}, but this {where} runs on shop {runs_on}'s database"
    return Refusal(FEATURE_NOT_SUPPORTED, f"pgtenantproxy: COPY into {table}: {what}; nothing was copied",
                   _COPY_HINT)


def copy_interrupted(message_type: int) -> Refusal:
    """What PostgreSQL says when a client sends another message in the middle of COPY data."""
    return Refusal(
        PROTOCOL_VIOLATION,
        f"unexpected message type 0x{message_type:02X} during COPY from stdin",
        "The client sent another message before the end of its COPY data.",
    )


#: Raised on a shop's database inside a failed transaction, which answers with its own 25P02 (as a
#: statement parsed there directly would get).
IN_FAILED_TRANSACTION = Refusal(
    "25P02", "current transaction is aborted, commands ignored until end of transaction block", ""
)
