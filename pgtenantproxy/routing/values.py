"""Reading shop ids out of parse-tree values: literals, ``$n`` parameters, casts.

A value is a shop id only when it is plainly one: an integer constant, a string
constant holding an integer (``'5'``, as PostgreSQL's int input accepts it:
optional sign and surrounding blanks, decimal digits), a ``$n`` parameter, or
one of those under a cast to an integer or text type (``'5'::int``,
``5::bigint``, ``$1::int8``). Anything else (expressions, ``5.0``, NULL,
DEFAULT) is not a shop id.
"""

from __future__ import annotations

import re
from typing import Any

from pgtenantproxy.routing.model import UNKNOWN_REF, KeyValue, ShopRef

Node = dict[str, Any]

_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")
#: Types a shop id may be cast to and still be read as one (last name of the type).
VALUE_CASTS = frozenset({"int2", "int4", "int8", "numeric", "text", "varchar", "bpchar"})


def int_text(text: str) -> int | None:
    """An integer as PostgreSQL's int input reads it, or None."""
    return int(text) if _INT_TEXT.fullmatch(text) else None


def const_value(const: Node) -> int | None:
    """An ``A_Const`` body as a shop id (pglast omits zero-valued fields: ``{"ival": {}}`` is 0)."""
    if "ival" in const:
        value = const["ival"].get("ival", 0)
        return value if isinstance(value, int) else None
    if "fval" in const:  # integers beyond int4 come as "float" strings
        return int_text(const["fval"].get("fval", ""))
    if "sval" in const:
        return int_text(const["sval"].get("sval", ""))
    return None


def _type_name(type_name: Node) -> str | None:
    names = [n["String"]["sval"] for n in type_name.get("names", ()) if "String" in n]
    return names[-1] if names else None


def value_ref(node: Any, cast: str | None = None) -> ShopRef:
    """The shop id a value node stands for, or UNKNOWN_REF."""
    if not isinstance(node, dict) or len(node) != 1:
        return UNKNOWN_REF
    ((key, body),) = node.items()
    if key == "A_Const":
        value = const_value(body)
        return UNKNOWN_REF if value is None else ShopRef(value=value)
    if key == "ParamRef":
        number = body.get("number", 0)
        return ShopRef(param=number, cast=cast) if number > 0 else UNKNOWN_REF
    if key == "TypeCast":
        type_name = body.get("typeName", {})
        name = _type_name(type_name)
        if name in VALUE_CASTS and not type_name.get("arrayBounds"):
            return value_ref(body.get("arg"), name)  # innermost cast types the parameter
    return UNKNOWN_REF


def single_array_element(node: Any) -> Any:
    """The one element of ``ARRAY[x]``, ``'{x}'`` or ``'{x}'::int[]`` (for ``= ANY(...)``), or None."""
    elements = array_elements(node)
    return elements[0] if elements is not None and len(elements) == 1 else None


def array_elements(node: Any) -> list[Any] | None:
    """The element nodes of ``ARRAY[...]``, ``'{...}'`` or ``'{...}'::int[]`` (integer literals), or None."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((key, body),) = node.items()
    if key == "A_ArrayExpr":
        return list(body.get("elements", ())) or None
    if key == "TypeCast" and body.get("typeName", {}).get("arrayBounds"):
        if _type_name(body["typeName"]) in VALUE_CASTS:
            return array_elements(body.get("arg"))
        return None
    if key == "A_Const" and "sval" in body:
        text = body["sval"].get("sval", "").strip()
        if not (text.startswith("{") and text.endswith("}")):
            return None
        inner = [part.strip().strip('"') for part in text[1:-1].split(",")]
        if not inner or any(int_text(part) is None for part in inner):
            return None
        return [{"A_Const": {"sval": {"sval": part}}} for part in inner]
    return None


def key_value(node: Any, cast: str | None = None) -> KeyValue | None:
    """A value a key column is compared with: a literal (kept as its text) or ``$n``, under casts."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((key, body),) = node.items()
    if key == "A_Const":
        if "ival" in body:
            return KeyValue(text=str(body["ival"].get("ival", 0)), cast=cast)
        for kind in ("fval", "sval"):
            if kind in body:
                return KeyValue(text=str(body[kind].get(kind, "")), cast=cast)
        return None  # NULL, booleans, bit strings: no key
    if key == "ParamRef":
        number = body.get("number", 0)
        return KeyValue(param=number, cast=cast) if number > 0 else None
    if key == "TypeCast":
        type_name = body.get("typeName", {})
        if type_name.get("arrayBounds"):
            return None
        return key_value(body.get("arg"), _type_name(type_name))  # innermost cast types the parameter
    return None


def key_list(node: Any, cast: str | None = None) -> tuple[KeyValue, ...] | None:
    """The keys of ``= ANY(node)``: ``ARRAY[...]``, an array literal ``'{1,2}'``, or an array ``$n``."""
    if not isinstance(node, dict) or len(node) != 1:
        return None
    ((key, body),) = node.items()
    if key == "A_ArrayExpr":
        values = [key_value(e, cast) for e in body.get("elements", ())]
        return tuple(v for v in values if v is not None) if values and None not in values else None
    if key == "ParamRef":
        number = body.get("number", 0)
        return (KeyValue(param=number, cast=cast, array=True),) if number > 0 else None
    if key == "TypeCast" and body.get("typeName", {}).get("arrayBounds"):
        return key_list(body.get("arg"), _type_name(body["typeName"]))
    if key == "A_Const" and "sval" in body:
        elements = array_literal(body["sval"].get("sval", ""))
        return None if elements is None else tuple(KeyValue(text=e, cast=cast) for e in elements)
    return None


def array_literal(text: str) -> list[str] | None:
    """The elements of a one-dimensional array literal without quoting (``{1,2,3}``), or None."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")) or any(ch in text[1:-1] for ch in '{}"\\'):
        return None
    inner = text[1:-1].strip()
    if not inner:
        return []
    elements = [e.strip() for e in inner.split(",")]
    return None if any(not e or e.upper() == "NULL" for e in elements) else elements
