"""Building SQL text safely: identifiers and literals quoted the way PostgreSQL quotes them.

DDL (CREATE ROLE, CREATE DATABASE, GRANT, ALTER ROLE ... PASSWORD) cannot take
bind parameters, so names and values are spliced in as text. Everything spliced
goes through :func:`ident` or :func:`literal`, which follow ``quote_ident`` and
``quote_literal`` (identifiers are always double-quoted, so names keep their exact
spelling; a literal with a backslash uses the ``E''`` form, correct whatever
``standard_conforming_strings`` says). NUL characters cannot be represented and
are refused.
"""

from __future__ import annotations

from dataclasses import dataclass


def _no_nul(text: str, what: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} contains a NUL character")


def ident(name: str) -> str:
    """An identifier, double-quoted (``a"b`` -> ``"a""b"``)."""
    _no_nul(name, "identifier")
    if not name:
        raise ValueError("empty identifier")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A string literal, as ``quote_literal`` builds it."""
    _no_nul(value, "literal")
    quoted = "'" + value.replace("'", "''") + "'"
    if "\\" in value:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


@dataclass(frozen=True, order=True)
class QualifiedName:
    """A schema-qualified relation or type name."""

    schema: str
    name: str

    @property
    def sql(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def parse(cls, text: str, default_schema: str = "public") -> QualifiedName:
        """``name`` or ``schema.name`` (as written in config; no quoting)."""
        schema, dot, name = text.rpartition(".")
        return cls(schema if dot else default_schema, name)
