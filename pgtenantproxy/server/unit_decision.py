"""What the routed relay and its router say to each other about one unit.

:class:`Decision` is the router's answer for a unit (where it runs, or what
the proxy does instead: refuse, hold, answer a lazy BEGIN); :class:`SessionFacts`
is what the router may look at about a session; :class:`UnitRouter` is the
router's side of the contract (:class:`pgtenantproxy.dispatch.dispatcher.Dispatcher`).
The error texts the relay raises itself live here too. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pgtenantproxy.pools.pool import TenantPool
from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import CONNECTION_FAILURE, error_response
from pgtenantproxy.protocol.framing import Message
from pgtenantproxy.server.statements import PreparedStatements

#: Session settings a tenant connection must share with the client's session.
SHARED_SETTINGS = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings")


@dataclass(frozen=True)
class Decision:
    target: str  # "unified" | "tenant" | "refuse" | "hold" | "begin" | "local" | "aside"
    shop_id: int | None = None
    reason: str = ""
    source: str | None = None
    #: For metrics: the unit's statement kind (select|insert|update|delete|other) and first table.
    kind: str = "other"
    table: str = ""
    #: A tenant_primary shop's unit: may write and open a transaction there; never falls back.
    primary: bool = False
    #: "refuse": (sqlstate, message, hint) of the error raised instead of running the unit.
    error: tuple[str, str, str] | None = None
    #: "hold": is the shop still held (polled), and the longest wait in seconds.
    held: Callable[[], bool] | None = None
    hold_s: float = 0.0
    #: "begin" / "local": the command tag the proxy answers with.
    tag: str = ""
    #: "begin": the SQL of the BEGIN the proxy replays, as a simple Query, where the transaction runs.
    begin_sql: str = ""
    #: What the router wants back in ``completed`` (the readiness recorder's note); opaque here.
    note: object | None = None

    @property
    def tenant(self) -> bool:
        return self.target == "tenant"


UNIFIED_PINNED = Decision("unified", reason="pinned")


@dataclass
class SessionFacts:
    """What the router may look at about a session."""

    startup: dict[str, str]
    statements: PreparedStatements = field(default_factory=PreparedStatements)
    settings: dict[str, str] = field(default_factory=dict)
    tx_status: int = c.TX_IDLE
    #: Anything the router keeps per session (SET shop tracking, watermarks...).
    router_state: object | None = None
    #: The shop whose tenant connection holds this session's open transaction, if any.
    pinned_shop: int | None = None
    #: A BEGIN the proxy answered itself and has not sent anywhere yet (lazy BEGIN), as a simple Query.
    deferred_begin: Message | None = None

    def shared_settings(self) -> dict[str, str]:
        """The settings a tenant connection must share with this session."""
        return {k: v for k, v in self.settings.items() if k in SHARED_SETTINGS}


class UnitRouter(Protocol):
    def decide(self, unit: Unit, facts: SessionFacts) -> Decision: ...
    def pool(self, shop_id: int) -> TenantPool: ...
    def completed(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None: ...
    @property
    def tenant_timeout(self) -> float: ...
    @property
    def fallback_enabled(self) -> bool: ...


def hold_timeout_error(shop_id: int | None) -> tuple[str, str, str]:
    return (
        "55P03",
        f"pgtenantproxy: shop {shop_id} is being cut over; retry",
        "Its writes pause for a few seconds while its data moves; the transaction can be retried.",
    )


def pinned_refusal(shop_id: int) -> tuple[str, str, str]:
    return (
        "0A000",
        f"pgtenantproxy: this statement cannot run in a transaction on shop {shop_id}'s database",
        "Run it in a transaction of its own.",
    )


def primary_unavailable(shop_id: int | None) -> tuple[str, str, str]:
    return (
        CONNECTION_FAILURE,
        f"pgtenantproxy: the database of shop {shop_id} is unavailable",
        "The shop's data lives on its own database since its cutover; the transaction can be retried.",
    )


def lost_transaction(shop_id: int | None) -> tuple[str, str, str]:
    return (
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
