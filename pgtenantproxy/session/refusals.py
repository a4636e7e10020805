"""The errors the session raises itself, each a :class:`~pgtenantproxy.session.decision.Refusal`."""

from __future__ import annotations

from pgtenantproxy.protocol.errors import CONNECTION_FAILURE, FEATURE_NOT_SUPPORTED, error_response
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
