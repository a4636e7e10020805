"""Bound parameter values as the router reads them: type OIDs, scalars and one-dimensional arrays.

A value arrives in text or binary format with the Parse's declared type (or
none: then a cast in the SQL, or its length, tells). :func:`param_text` gives
a scalar as text (integers in decimal, UUIDs canonical), :func:`param_array`
the elements of an array; None when the value cannot be read (the caller then
knows nothing, never a wrong value).
"""

from __future__ import annotations

import uuid

from pgtenantproxy.routing.values import array_literal

UUID_OID, INT2, INT4, INT8 = 2950, 21, 23, 20
TEXT_OIDS = frozenset({25, 1043, 1042, 19, 705})  # text, varchar, bpchar, name, unknown
ARRAY_ELEMENTS = {1005: INT2, 1007: INT4, 1016: INT8, 2951: UUID_OID, 1009: 25, 1015: 1043}
CAST_OIDS = {"int2": INT2, "int4": INT4, "int8": INT8, "uuid": UUID_OID, "text": 25, "varchar": 1043,
             "bpchar": 1042}


def param_text(raw: bytes, fmt: int, oid: int) -> str | None:
    if fmt == 0:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if oid in (INT2, INT4, INT8) or (oid == 0 and len(raw) in (2, 4, 8)):
        return str(int.from_bytes(raw, "big", signed=True))
    if oid == UUID_OID and len(raw) == 16:
        return str(uuid.UUID(bytes=raw))
    if oid in TEXT_OIDS:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def param_array(raw: bytes, fmt: int, oid: int) -> list[str] | None:
    """A one-dimensional array parameter's elements (text ``{1,2}`` or binary), None if unreadable."""
    if fmt == 0:
        try:
            return array_literal(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    if len(raw) < 12:
        return None
    ndim = int.from_bytes(raw[0:4], "big")
    element = int.from_bytes(raw[8:12], "big")
    if ndim == 0:
        return []
    if ndim != 1 or len(raw) < 20:
        return None
    count = int.from_bytes(raw[12:16], "big", signed=True)
    pos, out = 20, []
    for _ in range(count):
        size = int.from_bytes(raw[pos:pos + 4], "big", signed=True)
        pos += 4
        if size < 0:
            continue  # NULL element
        text = param_text(raw[pos:pos + size], 1, element or ARRAY_ELEMENTS.get(oid, 0))
        if text is None:
            return None
        out.append(text)
        pos += size
    return out
