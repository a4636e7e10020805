"""Which shop a statement belongs to, and according to whom.

Sources, consulted in the order ``[routing] identify`` lists them:

* ``startup``: ``options=-c pgtenantproxy.shop_id=N`` (or ``--pgtenantproxy.shop_id=N``,
  or the setting sent as a startup parameter of its own), parsed as PostgreSQL
  does (``pg_split_opts``: blanks separate, backslash escapes);
* ``set``: ``SET [SESSION|LOCAL] pgtenantproxy.shop_id``, tracked over
  transactions by :class:`~pgtenantproxy.routing.session_shop.SessionShop`;
* ``comment``: ``/* shop_id=N */`` in the SQL text;
* ``query``: the tenant-column pins the analyser found, ``$n`` resolved from
  the Bind message.

The first three are *declarations*: the application says the statement is
about shop N, which also covers tenant-table occurrences the query itself
does not pin. The query is *evidence*: without a declaration every tenant-table
occurrence must be pinned for the statement to have a shop. Either way every
source that says something must agree, and the query's pins are always checked
(even when ``query`` is not a listed source): a declaration of shop 5 on a
statement pinned to shop 6 is a conflict, never shop 5. The source recorded is
the first listed source that names the shop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from pgtenantproxy.routing.model import SHOP_SETTING, Analysis, ShopRef, StatementAnalysis
from pgtenantproxy.routing.param_values import CAST_OIDS, INT2, INT4, INT8, TEXT_OIDS, param_array
from pgtenantproxy.routing.session_shop import SessionShop
from pgtenantproxy.routing.tables import is_tenant_table
from pgtenantproxy.routing.values import int_text

__all__ = [
    "BoundParams",
    "Claim",
    "Identification",
    "QueryShops",
    "SessionShop",
    "comment_claim",
    "decode_shop",
    "identify",
    "query_shops",
    "resolve",
    "set_claim",
    "startup_claim",
    "startup_settings",
]

_INT_LENGTHS = {INT2: 2, INT4: 4, INT8: 8}


@dataclass(frozen=True, slots=True)
class Claim:
    """A declared shop: ``shop_id`` None when the source names something that is not a shop id."""

    source: str
    shop_id: int | None


@dataclass(frozen=True, slots=True)
class Identification:
    shop_id: int | None
    source: str | None
    #: "identified", or why not: no_shop, unpinned_table, multiple_shops, conflict,
    #: unresolved (a $n without a usable value), invalid_claim.
    reason: str
    #: The shops the statement may touch when its pins (or a claim) say so; None: any shop. (Derived
    #: from the same evidence: not part of equality.)
    shops: frozenset[int] | None = field(default=None, compare=False)

    @property
    def identified(self) -> bool:
        return self.shop_id is not None


# -- startup ------------------------------------------------------------------------------------


def _split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts: blank-separated words, backslash escapes the next character."""
    words: list[str] = []
    current: list[str] = []
    escaped = in_word = False
    for ch in options:
        if ch.isspace() and not escaped:
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
            continue
        in_word = True
        if ch == "\\" and not escaped:
            escaped = True
            continue
        current.append(ch)
        escaped = False
    if in_word:
        words.append("".join(current))
    return words


def startup_settings(options: str) -> dict[str, str]:
    """Settings given by ``-c name=value``, ``-cname=value`` or ``--name=value`` (last one wins)."""
    settings: dict[str, str] = {}
    words = _split_options(options)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "-c" and i < len(words):
            spec = words[i]
            i += 1
        elif word.startswith("--"):
            spec = word[2:]
        elif word.startswith("-c") and len(word) > 2:
            spec = word[2:]
        else:
            continue
        name, eq, value = spec.partition("=")
        if eq:
            settings[name.replace("-", "_").lower()] = value
    return settings


def startup_claim(parameters: Mapping[str, str]) -> Claim | None:
    """The shop the startup packet declares; the parameter of its own wins over ``options``."""
    value = startup_settings(parameters.get("options", "")).get(SHOP_SETTING)
    for key, raw in parameters.items():
        if key.lower() == SHOP_SETTING:
            value = raw
    return None if value is None else Claim("startup", int_text(value))


def set_claim(session: SessionShop) -> Claim | None:
    """What the session's SET says now (UNKNOWN and non-shop values claim no usable shop)."""
    value = session.value
    if value is None:
        return None
    return Claim("set", value if isinstance(value, int) else None)


def comment_claim(analysis: Analysis) -> Claim | None:
    shops = analysis.comment_shops
    if not shops:
        return None
    return Claim("comment", next(iter(shops)) if len(shops) == 1 else None)


# -- Bind parameters ----------------------------------------------------------------------------


def decode_shop(raw: bytes, fmt: int, type_oid: int, cast: str | None = None) -> int | None:
    """A bound parameter value as a shop id.

    Text format: the integer text. Binary: int2/int4/int8 by their declared type
    (from Parse, else from a cast in the SQL), text types as text; with no type
    at all the server takes the tenant column's type, assumed to be an integer
    type, so 2, 4 or 8 bytes are read as a big-endian signed integer.
    """
    if fmt == 0:
        return _text_shop(raw)
    oid = type_oid or CAST_OIDS.get(cast or "", 0)
    if oid in _INT_LENGTHS:
        return int.from_bytes(raw, "big", signed=True) if len(raw) == _INT_LENGTHS[oid] else None
    if oid in TEXT_OIDS:
        return _text_shop(raw)
    if oid == 0 and len(raw) in (2, 4, 8):
        return int.from_bytes(raw, "big", signed=True)
    return None


def _text_shop(raw: bytes) -> int | None:
    try:
        return int_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class BoundParams:
    """Parameter values of one Bind, with the Parse's declared types."""

    values: tuple[bytes | None, ...]
    #: Bind's format codes: none (all text), one (for all), or one per value.
    formats: tuple[int, ...] = ()
    type_oids: tuple[int, ...] = ()

    def raw(self, param: int) -> tuple[bytes | None, int, int] | None:
        """``$param``'s (value, format code, declared type OID), or None if there is no such parameter."""
        if not 0 < param <= len(self.values):
            return None
        index = param - 1
        formats = self.formats
        fmt = formats[0] if len(formats) == 1 else (formats[index] if index < len(formats) else 0)
        oid = self.type_oids[index] if index < len(self.type_oids) else 0
        return self.values[index], fmt, oid

    def shop(self, ref: ShopRef) -> int | None:
        if ref.value is not None:
            return ref.value
        found = self.raw(ref.param) if ref.param is not None else None
        if found is None:
            return None
        raw, fmt, oid = found
        return None if raw is None else decode_shop(raw, fmt, oid, ref.cast)


def resolve(ref: ShopRef, params: BoundParams | None) -> int | None:
    if ref.value is not None:
        return ref.value
    if ref.array:
        return None  # several shops: resolve_all
    return params.shop(ref) if params is not None else None


def resolve_all(ref: ShopRef, params: BoundParams | None) -> frozenset[int] | None:
    """The shops a pin stands for: one, or the elements of an array parameter (``= ANY($1)``)."""
    if not ref.array:
        value = resolve(ref, params)
        return None if value is None else frozenset((value,))
    found = params.raw(ref.param) if params is not None and ref.param is not None else None
    if found is None:
        return None
    raw, fmt, oid = found
    if raw is None:
        return frozenset()  # = ANY(NULL) matches nothing
    elements = param_array(raw, fmt, oid or CAST_OIDS.get(ref.cast or "", 0))
    shops = None if elements is None else [int_text(e) for e in elements]
    return None if shops is None or None in shops else frozenset(s for s in shops if s is not None)


# -- identification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryShops:
    """What the pins of a statement's tenant-table occurrences say."""

    shops: frozenset[int]
    unpinned: bool  # some tenant-table occurrence has no pin
    unresolved: bool  # some pin is a parameter without a usable value
    pending: bool = False  # some key's shop is being looked up (routing/keys.py)
    #: Every tenant-table occurrence is restricted to keys that exist nowhere: it touches no row.
    nowhere: bool = False

    @property
    def covered(self) -> frozenset[int] | None:
        """The shops every tenant-table occurrence is pinned to (None: some occurrence may be any)."""
        if self.nowhere:
            return frozenset()
        return None if self.unpinned or self.unresolved or self.pending else self.shops


def query_shops(stmt: StatementAnalysis, params: BoundParams | None, tenant_tables: Set[str]) -> QueryShops:
    shops: set[int] = set()
    unpinned = unresolved = False
    for occ in stmt.occurrences:
        if not is_tenant_table(occ.table, tenant_tables):
            continue
        if not occ.pins:
            unpinned = True
        for ref in occ.pins:
            values = resolve_all(ref, params)
            if values is None:
                unresolved = True
            else:
                shops |= values
    return QueryShops(frozenset(shops), unpinned, unresolved)


def _none(reason: str, query: QueryShops | None = None) -> Identification:
    return Identification(None, None, reason, None if query is None else query.covered)


def identify(
    stmt: StatementAnalysis,
    *,
    order: Sequence[str],
    claims: Sequence[Claim | None] = (),
    params: BoundParams | None = None,
    tenant_tables: Set[str],
    query: QueryShops | None = None,
) -> Identification:
    """The statement's shop from the listed sources, or why there is none.

    ``query``: the query's own evidence when the caller computed it already (routing by key).
    """
    if query is None:
        query = query_shops(stmt, params, tenant_tables)
    if query.pending:
        return _none("key_pending")
    if query.unresolved:
        return _none("unresolved")
    if len(query.shops) > 1:
        return _none("multiple_shops", query)
    declared = [c for c in claims if c is not None and c.source in order]
    if any(c.shop_id is None for c in declared):
        return _none("invalid_claim")
    named = {c.shop_id for c in declared if c.shop_id is not None} | set(query.shops)
    if len(named) > 1:
        return _none("conflict")
    use_query = "query" in order and bool(query.shops)
    if not declared and not use_query:
        return _none("nowhere" if query.nowhere else "no_shop", query)
    if not declared and query.unpinned:
        return _none("unpinned_table", query)
    (shop,) = named
    speakers = {c.source for c in declared} | ({"query"} if use_query else set())
    source = next(s for s in order if s in speakers)
    return Identification(shop, source, "identified", frozenset((shop,)))
