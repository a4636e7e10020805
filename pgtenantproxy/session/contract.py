"""What the session machine needs from the outside, as protocols (no I/O here).

* :class:`UnitRouter`: decides each unit (:class:`pgtenantproxy.dispatch.dispatcher.Dispatcher`);
* :class:`TenantLink`: a tenant connection as the machine sees it (its
  statement and settings state; :class:`pgtenantproxy.pools.connection.ServerConnection`);
* :class:`Effects`: the actions the machine asks its driver to carry out
  (:mod:`pgtenantproxy.server.routed`), and the unit tests record.
"""

from __future__ import annotations

from typing import Protocol

from pgtenantproxy.protocol.batch import Unit
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.session.decision import Decision
from pgtenantproxy.session.facts import SessionFacts


class UnitRouter(Protocol):
    def decide(self, unit: Unit, facts: SessionFacts) -> Decision:
        """Where ``unit`` runs. No side effects but for unified decisions (which are final)."""
        ...

    def acted(self, decision: Decision) -> None:
        """The session acts on ``decision`` (counted once per unit, however often it was asked)."""
        ...

    def completed(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None: ...

    @property
    def tenant_timeout(self) -> float: ...

    @property
    def fallback_enabled(self) -> bool: ...


class TenantLink(Protocol):
    """A tenant connection: what it has prepared and which settings it runs with."""

    #: client statement name -> the SQL text it was prepared with on this connection
    prepared: dict[str, str]
    #: session settings applied on this connection (name -> value)
    settings: dict[str, str]
    broken: bool

    @property
    def usable(self) -> bool: ...


class Effects(Protocol):
    """Actions of the machine; the driver carries them out in order, synchronously."""

    def to_client(self, data: bytes) -> None: ...
    def to_unified(self, data: bytes) -> None: ...

    def borrow(self, shop_id: int) -> TenantLink | None:
        """A connection of the shop's pool now, or None: ``tenant_ready``/``tenant_unavailable`` follows."""
        ...

    def attach(self, link: TenantLink) -> None:
        """From now on the link's bytes go to ``tenant_data``, its loss to ``tenant_lost``."""
        ...

    def to_tenant(self, link: TenantLink, data: bytes) -> None: ...
    def detach(self, link: TenantLink) -> None: ...
    def give_back(self, shop_id: int, link: TenantLink, *, reusable: bool, failed: bool) -> None:
        """The link goes back to its pool (closed unless ``reusable``; ``failed`` counts towards a ban)."""
        ...
    def cancel_tenant(self, link: TenantLink) -> None: ...

    def set_timer(self, seconds: float) -> None:
        """Call ``timer_fired`` once after ``seconds`` (replaces a pending timer)."""
        ...

    def clear_timer(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...

    def end(self, reason: str) -> None:
        """The session is over (``terminate``, ``violation``, ``tenant_failed``, ``idle_close``)."""
        ...

    def violation(self, exc: ProtocolViolation) -> None: ...
