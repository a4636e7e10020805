"""The session machine's small records: a tenant unit in progress, a held unit, where unified's
extended-protocol stream is, and the proxy's own answer to a lazy BEGIN (sans-IO)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.local_answers import command_complete, extended_reply
from pgtenantproxy.session.contract import TenantLink
from pgtenantproxy.session.decision import Hold, ToTenant
from pgtenantproxy.session.statements import PreparedStatements
from pgtenantproxy.session.tenant_unit import TenantUnit

_DESCRIBE_ONLY = frozenset({c.PARSE, c.DESCRIBE, c.CLOSE, c.FLUSH})


class UnifiedBatch(enum.Enum):
    """Where unified's extended-protocol stream is: at a Sync, inside the client's batch, or
    after a Flush-split head the proxy ended with a Sync of its own."""

    AT_SYNC = "at_sync"
    CLIENT_OPEN = "client_open"
    PROXY_SYNCED = "proxy_synced"


class _Admit(enum.Enum):
    GO = "go"
    ASIDE = "aside"  # described aside: look at the next unit
    STOP = "stop"  # the session ends


@dataclass
class TenantRun:
    """The tenant unit in progress."""

    unit: Unit
    decision: ToTenant
    work: TenantUnit
    started: float
    #: The unit continues or begins a transaction (its failure loses that transaction).
    in_tx: bool
    link: TenantLink | None = None


@dataclass(frozen=True)
class HeldUnit:
    unit: Unit
    decision: Hold
    deadline: float


def describes_only(unit: Unit) -> bool:
    """An extended-protocol part with no Execute (nothing runs: Parse, Describe, Close, Flush)."""
    return unit.kind is UnitKind.EXTENDED and all(m.type in _DESCRIBE_ONLY for m in unit.messages)


def local_reply(unit: Unit, tag: str, status: int) -> bytes:
    """The proxy's own answer to a lazy BEGIN (status T) or the COMMIT/ROLLBACK after it (I)."""
    if unit.kind is UnitKind.QUERY:
        return command_complete(tag, status)
    return extended_reply(unit, tag, status)


def lacks_statements(unit: Unit, prepared: Mapping[str, str], statements: PreparedStatements) -> bool:
    """Does ``unit`` bind or describe a statement the link has not prepared as the client did (so the
    tenant unit would parse it first)?"""
    parsed_here: set[str] = set()
    for msg in unit.messages:
        if msg.type == c.PARSE:
            parsed_here.add(msg.name)
            continue
        name = msg.statement
        if name is None or name in parsed_here:
            continue
        record = statements.get(name)
        if record is not None and (name == "" or prepared.get(name) != record.sql):
            return True
    return False
