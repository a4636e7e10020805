"""A recording world for :class:`~pgtenantproxy.session.machine.SessionMachine`: no loop, no sockets.

* :class:`FakeLink`: a tenant connection as the machine sees it (``prepared``,
  ``settings``, ``broken``, ``usable``).
* :class:`Recorder`: the :class:`~pgtenantproxy.session.contract.Effects`; every call is
  logged as a tuple (``("client", bytes)``, ``("unified", bytes)``, ``("borrow", shop)``,
  ``("attach", link)``, ``("tenant", link, bytes)``, ``("detach", link)``,
  ``("give_back", shop, link, reusable, failed)``, ``("cancel", link)``,
  ``("timer", seconds)``, ``("clear_timer",)``, ``("pause",)``, ``("resume",)``,
  ``("end", reason)``, ``("violation", exc)``). ``borrow`` hands out the links queued
  per shop in :attr:`Recorder.pool`, or None (the pool is pending) when there are none.
* :class:`ScriptedRouter`: a :class:`~pgtenantproxy.session.contract.UnitRouter` whose
  ``decide`` looks the unit's SQL up in a table of substring -> decision.
* :class:`Clock`: a settable clock (holds' deadlines, ``completed`` seconds).
* :class:`Harness`: all of the above around one machine, with feeding shortcuts.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgtenantproxy.protocol import constants as c
from pgtenantproxy.protocol.batch import Unit, UnitKind
from pgtenantproxy.protocol.errors import ProtocolViolation
from pgtenantproxy.session.decision import Decision, ToUnified
from pgtenantproxy.session.facts import SessionFacts
from pgtenantproxy.session.machine import SessionMachine
from pgtenantproxy.session.state import Event, State, TxEvent, TxPlace


@dataclass(eq=False)
class FakeLink:
    name: str = "link"
    prepared: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    broken: bool = False
    closed: bool = False

    @property
    def usable(self) -> bool:
        return not self.broken and not self.closed

    def __repr__(self) -> str:
        return f"FakeLink({self.name})"


class Recorder:
    """Effects that record every call (see the module docstring)."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        #: shop -> links ``borrow`` hands out, in order; empty: ``borrow`` returns None (pending)
        self.pool: dict[int, deque[FakeLink]] = defaultdict(deque)
        self.timer: float | None = None

    # --- Effects ------------------------------------------------------------------
    def to_client(self, data: bytes) -> None:
        self.log.append(("client", bytes(data)))

    def to_unified(self, data: bytes) -> None:
        self.log.append(("unified", bytes(data)))

    def borrow(self, shop_id: int) -> FakeLink | None:
        self.log.append(("borrow", shop_id))
        links = self.pool[shop_id]
        return links.popleft() if links else None

    def attach(self, link: FakeLink) -> None:
        self.log.append(("attach", link))

    def to_tenant(self, link: FakeLink, data: bytes) -> None:
        self.log.append(("tenant", link, bytes(data)))

    def detach(self, link: FakeLink) -> None:
        self.log.append(("detach", link))

    def give_back(self, shop_id: int, link: FakeLink, *, reusable: bool, failed: bool) -> None:
        self.log.append(("give_back", shop_id, link, reusable, failed))
        if not reusable:
            link.closed = True

    def cancel_tenant(self, link: FakeLink) -> None:
        self.log.append(("cancel", link))

    def set_timer(self, seconds: float) -> None:
        self.log.append(("timer", seconds))
        self.timer = seconds

    def clear_timer(self) -> None:
        self.log.append(("clear_timer",))
        self.timer = None

    def pause_client(self) -> None:
        self.log.append(("pause",))

    def resume_client(self) -> None:
        self.log.append(("resume",))

    def end(self, reason: str) -> None:
        self.log.append(("end", reason))

    def violation(self, exc: ProtocolViolation) -> None:
        self.log.append(("violation", exc))

    # --- reading the log --------------------------------------------------------------
    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [entry for entry in self.log if entry[0] == kind]

    def kinds(self) -> list[str]:
        return [entry[0] for entry in self.log]

    def client_bytes(self) -> bytes:
        return b"".join(e[1] for e in self.of("client"))

    def unified_bytes(self) -> bytes:
        return b"".join(e[1] for e in self.of("unified"))

    def tenant_writes(self, link: FakeLink | None = None) -> list[bytes]:
        return [e[2] for e in self.of("tenant") if link is None or e[1] is link]

    def take(self) -> list[tuple[Any, ...]]:
        """The log so far, cleared."""
        log, self.log = self.log, []
        return log


def unit_sql(unit: Unit, facts: SessionFacts) -> str:
    """What a unit runs, as text: its Query, its Parses, or the statements its Binds use."""
    parts: list[str] = []
    for msg in unit.messages:
        if msg.type in (c.QUERY, c.PARSE) and msg.sql is not None:
            parts.append(msg.sql)
        elif msg.type == c.BIND and not msg.malformed:
            record = facts.statements.get(msg.name)
            if record is not None and record.sql and (msg.name or not parts):
                parts.append(record.sql)
    return "; ".join(dict.fromkeys(parts))


Rule = Decision | Callable[[Unit, SessionFacts], Decision]
DEFAULT_DECISION = ToUnified(reason="default")


class ScriptedRouter:
    """``decide``: the first rule whose substring is in the unit's SQL, else ``default``."""

    def __init__(
        self,
        rules: dict[str, Rule] | None = None,
        *,
        default: Decision = DEFAULT_DECISION,
        tenant_timeout: float = 2.0,
        fallback_enabled: bool = True,
    ) -> None:
        self.rules: dict[str, Rule] = dict(rules or {})
        self.default = default
        self.tenant_timeout = tenant_timeout
        self.fallback_enabled = fallback_enabled
        #: (unit sql, unit kind) of every ``decide`` call
        self.asked: list[tuple[str, UnitKind]] = []
        self.acted_on: list[Decision] = []
        #: (unit sql, decision, outcome, seconds)
        self.done: list[tuple[str, Decision, str, float]] = []
        self.fail_with: Exception | None = None

    def decide(self, unit: Unit, facts: SessionFacts) -> Decision:
        sql = unit_sql(unit, facts)
        self.asked.append((sql, unit.kind))
        if self.fail_with is not None:
            raise self.fail_with
        for needle, rule in self.rules.items():
            if needle in sql:
                return rule(unit, facts) if callable(rule) else rule
        return self.default

    def acted(self, decision: Decision) -> None:
        self.acted_on.append(decision)

    def completed(
        self, unit: Unit, facts: SessionFacts, decision: Decision, outcome: str, seconds: float
    ) -> None:
        self.done.append((unit_sql(unit, facts), decision, outcome, seconds))

    @property
    def outcomes(self) -> list[str]:
        return [d[2] for d in self.done]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingMachine(SessionMachine):
    """The machine, with every move of its two tables recorded (for the reachability test)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.moves: set[tuple[State, Event]] = set()
        self.tx_moves: set[tuple[TxPlace, TxEvent]] = set()
        super().__init__(*args, **kwargs)

    def _advance(self, event: Event) -> None:
        self.moves.add((self.state, event))
        super()._advance(event)

    def _move_tx(self, event: TxEvent, *, shop: int | None = None, begin: str | None = None) -> None:
        self.tx_moves.add((self.tx, event))
        super()._move_tx(event, shop=shop, begin=begin)


class Harness:
    """One machine with its recorder, router and clock."""

    def __init__(
        self,
        rules: dict[str, Rule] | None = None,
        *,
        links: dict[int, list[FakeLink]] | None = None,
        settings: dict[str, str] | None = None,
        **router_kwargs: Any,
    ) -> None:
        self.fx = Recorder()
        for shop, shop_links in (links or {}).items():
            self.fx.pool[shop].extend(shop_links)
        self.router = ScriptedRouter(rules, **router_kwargs)
        self.clock = Clock()
        self.facts = SessionFacts(startup={"user": "app", "database": "shop"})
        if settings:
            self.facts.settings.update(settings)
        self.machine = RecordingMachine(self.router, self.facts, self.fx, clock=self.clock, perf=self.clock)

    # --- feeding ----------------------------------------------------------------------
    def client(self, *parts: bytes) -> None:
        self.machine.client_data(b"".join(parts))

    def unified(self, *parts: bytes) -> None:
        self.machine.unified_data(b"".join(parts))

    def tenant(self, *parts: bytes) -> None:
        self.machine.tenant_data(b"".join(parts))

    def fire(self) -> None:
        self.machine.timer_fired()

    # --- reading -----------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def tx(self) -> TxPlace:
        return self.machine.tx

    @property
    def log(self) -> list[tuple[Any, ...]]:
        return self.fx.log

    def take(self) -> list[tuple[Any, ...]]:
        return self.fx.take()

    def client_bytes(self) -> bytes:
        return self.fx.client_bytes()

    def unified_bytes(self) -> bytes:
        return self.fx.unified_bytes()


def splits(data: bytes) -> list[list[bytes]]:
    """``data`` cut in two at every offset, and byte by byte."""
    out = [[data[:i], data[i:]] for i in range(1, len(data))]
    out.append([data[i : i + 1] for i in range(len(data))])
    return out
