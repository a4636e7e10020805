"""What the router may look at about a session (:class:`SessionFacts`), kept by the machine."""

from __future__ import annotations

from dataclasses import dataclass, field

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.session.statements import PreparedStatements

#: Session settings a tenant connection must share with the client's session.
SHARED_SETTINGS = ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle", "standard_conforming_strings")


@dataclass(frozen=True, slots=True)
class FirstRow:
    """The first row of a COPY FROM STDIN the proxy started itself: its shop (None: no row came)."""

    shop_id: int | None


@dataclass
class SessionFacts:
    """What the router may look at about a session.

    The machine is the only writer of every field but ``router_state`` (the
    router's own): ``tx_status`` from unified's last ReadyForQuery,
    ``settings`` from unified's ParameterStatus, ``statements`` from the
    client's Parse/Close/DEALLOCATE, ``pinned_shop`` / ``deferred_begin`` from
    where the session's transaction is (:class:`~pgtenantproxy.session.state.TxPlace`),
    ``copy_first_row`` for the time of one ``decide`` call.
    """

    startup: dict[str, str]
    statements: PreparedStatements = field(default_factory=PreparedStatements)
    settings: dict[str, str] = field(default_factory=dict)
    tx_status: int = c.TX_IDLE
    #: Anything the router keeps per session (SET shop tracking, watermarks...).
    router_state: object | None = None
    #: The shop whose tenant connection holds this session's open transaction, if any.
    pinned_shop: int | None = None
    #: The SQL of a BEGIN the proxy answered itself and has not sent anywhere yet (lazy BEGIN).
    deferred_begin: str | None = None
    #: Statements after that BEGIN the proxy answered too (SET LOCAL, SAVEPOINT...), replayed after it.
    deferred_replay: tuple[str, ...] = ()
    #: The shop whose connection the session still holds after an autocommit statement that drew from
    #: a sequence (so lastval()/currval() can be answered there), until its next statement.
    linger_shop: int | None = None
    #: Set only while the machine asks where a COPY FROM STDIN it started runs (a
    #: :class:`~pgtenantproxy.session.decision.CopyFirstRow`): what its first row says.
    copy_first_row: FirstRow | None = None

    def shared_settings(self) -> dict[str, str]:
        """The settings a tenant connection must share with this session."""
        return {k: v for k, v in self.settings.items() if k in SHARED_SETTINGS}
