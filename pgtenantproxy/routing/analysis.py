"""SQL text -> :class:`Analysis`, with libpg_query (pglast) and a bounded LRU cache.

Parsing uses pglast's fast path (``parse_sql_json`` + ``json.loads``: no
Python AST objects). Analyses are cached per SQL text, so a prepared statement
or a repeated query is parsed once; the cache is bounded (least recently used
text goes first) and counts hits and misses. Texts longer than
``max_sql_length`` are neither parsed nor cached: they are "not understood"
and so go to unified.

The analysis never fails: a parse error, a tree too deep for Python, or any
surprise in the tree gives a not-understood analysis (routing then picks
unified), never an exception on the data path.

Comment hints (``/* shop_id=N */`` or ``-- shop_id=N``) are taken from real
comments only (pglast's scanner), so the same text inside a string literal
is no hint. A cheap regex decides first whether scanning is needed at all.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass

from pglast import parser as pg

from pgtenantproxy.routing.model import Analysis, StatementAnalysis
from pgtenantproxy.routing.statements import analyse_statement

logger = logging.getLogger(__name__)

DEFAULT_MAX_SQL_LENGTH = 1 << 20


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    capacity: int


def _failed(error: str) -> Analysis:
    return Analysis((StatementAnalysis(kind="other", understood=False, note=error),), error=error)


class Analyser:
    """Analyses SQL texts for one tenant column; the cache is per instance."""

    def __init__(
        self,
        tenant_column: str = "shop_id",
        cache_size: int = 10000,
        *,
        max_sql_length: int = DEFAULT_MAX_SQL_LENGTH,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.tenant_column = tenant_column
        self.cache_size = cache_size
        self.max_sql_length = max_sql_length
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self.hits = 0
        self.misses = 0
        keys = {"shop_id", re.escape(tenant_column)}
        self._hint = re.compile(
            rf"(?<![\w.])(?:pgtenantproxy\.)?(?:{'|'.join(sorted(keys))})\s*=\s*'?([0-9]+)'?(?![\w.])",
            re.IGNORECASE,
        )

    @property
    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._cache), self.cache_size)

    def clear(self) -> None:
        self._cache.clear()

    def analyse(self, sql: str) -> Analysis:
        """The analysis of ``sql``, from the cache when it was seen before."""
        cache = self._cache
        found = cache.get(sql)
        if found is not None:
            self.hits += 1
            cache.move_to_end(sql)
            return found
        self.misses += 1
        result = self.parse(sql)
        if len(sql) <= self.max_sql_length:
            cache[sql] = result
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        return result

    def parse(self, sql: str) -> Analysis:
        """Analyse without the cache."""
        if len(sql) > self.max_sql_length:
            return _failed(f"SQL text longer than {self.max_sql_length} characters")
        try:
            tree = json.loads(pg.parse_sql_json(sql))
            statements = tuple(analyse_statement(s["stmt"], self.tenant_column) for s in tree["stmts"])
        except pg.ParseError as exc:
            return _failed(f"parse error: {exc.args[0] if exc.args else exc}")
        except RecursionError:
            return _failed("statement nested too deeply to analyse")
        except Exception as exc:  # a surprise in the tree must not break routing
            logger.debug("analysis failed: %s", exc.__class__.__name__)
            return _failed(f"analysis failed: {exc.__class__.__name__}")
        return Analysis(statements, fingerprint=_fingerprint(sql), comment_shops=self._hints(sql))

    def _hints(self, sql: str) -> frozenset[int]:
        if ("/*" not in sql and "--" not in sql) or self._hint.search(sql) is None:
            return frozenset()
        found: set[int] = set()
        for comment in pg.comments(sql):
            found.update(int(m.group(1)) for m in self._hint.finditer(comment.str))
        return frozenset(found)


def _fingerprint(sql: str) -> str | None:
    try:
        return str(pg.fingerprint(sql))
    except Exception:
        return None
