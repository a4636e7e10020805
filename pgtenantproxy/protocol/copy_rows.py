"""COPY FROM STDIN data cut into rows, sans-IO: one column's value of every row.

:class:`CopyFormat` is the data layout a COPY statement's options describe, with
PostgreSQL's defaults filled in. :func:`row_reader` gives a reader for one stream
and one column (0-based): :meth:`RowReader.feed` takes the payload of each
CopyData message, in order, and returns a :class:`CopyRow` for every row it
completes (its number among the data rows, from 1, the header line not counted;
the column's value; or why the value cannot be read). A row may span any number
of feeds, and one feed may hold many rows: the reader keeps what it needs of an
incomplete row (text and CSV: the row so far; binary: at most the column's value
and a 4-byte length) and never the whole stream.

What each format's reader follows (PostgreSQL's ``copyfromparse.c``):

* **text**: rows end at an unescaped LF, CR or CRLF; a backslash escapes the
  next byte (an escaped delimiter or newline is data); a field whose raw text
  is the NULL string (``\\N``) is NULL; the value is de-escaped (``\\t``,
  ``\\123``, ``\\x41``...); a line ``\\.`` ends the data.
* **csv**: fields may be quoted; inside quotes delimiters, CR and LF are data,
  and the escape character (the quote by default) escapes a quote or itself; an
  unquoted field equal to the NULL string (empty by default) is NULL, a quoted
  one never is; a line ``\\.`` alone ends the data.
* **binary**: the 11-byte signature, flags and header extension, then tuples
  (an int16 field count, then per field an int32 length, -1 for NULL, and the
  bytes) up to the int16 -1 trailer. A row is reported as soon as its column's
  value is complete; the fields after it are skipped by length.

``HEADER`` skips the first line (text, csv). A reader reports a row with a
``problem`` (and reads nothing more) when the data is not of its format; rows
with too few fields are reported with a problem too. :func:`shop_of` reads a
value as a shop id: an integer in text, or a 2, 4 or 8-byte big-endian integer
in binary (the tenant column is assumed to be an integer type).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal, Protocol

CopyKind = Literal["text", "csv", "binary"]

BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER_FIXED = len(BINARY_SIGNATURE) + 8  # signature, flags, header extension length
_LF, _CR, _BACKSLASH = 0x0A, 0x0D, 0x5C
_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
_OCTAL = frozenset(b"01234567")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_WHITESPACE = b" \t\n\r\f\v"


@dataclass(frozen=True, slots=True)
class CopyFormat:
    """How COPY data is laid out: ``kind`` and, for text and csv, the separators.

    Build it with :meth:`of`, which applies PostgreSQL's defaults and refuses
    what a byte-level reader cannot follow (a separator that is not one byte).
    """

    kind: CopyKind = "text"
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'
    header: bool = False

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @classmethod
    def of(
        cls,
        kind: str = "text",
        *,
        delimiter: str | None = None,
        null: str | None = None,
        quote: str | None = None,
        escape: str | None = None,
        header: bool = False,
    ) -> CopyFormat:
        """The format with PostgreSQL's defaults; ValueError for what the readers cannot follow."""
        if kind not in ("text", "csv", "binary"):
            raise ValueError(f"COPY format {kind!r}")
        if kind == "binary":
            if delimiter is not None or null is not None or quote is not None or escape is not None or header:
                raise ValueError("binary COPY takes no delimiter, null, quote, escape or header")
            return cls("binary")
        csv = kind == "csv"
        delim = _one_byte(delimiter if delimiter is not None else ("," if csv else "\t"), "delimiter")
        if delim in b"\r\n\\" or (not csv and delim in b".abcdefghijklmnopqrstuvwxyz0123456789"):
            raise ValueError("COPY delimiter")
        null_bytes = _ascii(null if null is not None else ("" if csv else "\\N"), "null")
        if not csv:
            if quote is not None or escape is not None:
                raise ValueError("quote and escape are for csv")
            return cls("text", delim, null_bytes, header=header)
        q = _one_byte(quote if quote is not None else '"', "quote")
        e = _one_byte(escape, "escape") if escape is not None else q
        if q == delim or q in b"\r\n":
            raise ValueError("COPY quote")
        return cls("csv", delim, null_bytes, q, e, header)


def _ascii(value: str, what: str) -> bytes:
    if not value.isascii():
        raise ValueError(f"COPY {what} is not ASCII")
    return value.encode("ascii")


def _one_byte(value: str, what: str) -> bytes:
    raw = _ascii(value, what)
    if len(raw) != 1:
        raise ValueError(f"COPY {what} must be one byte")
    return raw


@dataclass(frozen=True, slots=True)
class CopyRow:
    """One data row: its number (from 1), the column's value (None: NULL), or why it has none."""

    number: int
    value: bytes | None
    problem: str | None = None


class RowReader(Protocol):
    #: Data rows reported so far.
    rows: int
    #: The end of the data was seen (``\\.``, the binary trailer, or unreadable data).
    ended: bool

    def feed(self, data: bytes) -> list[CopyRow]: ...

    def finish(self) -> list[CopyRow]:
        """The end of the data: a last line without its newline is a row too."""
        ...


def row_reader(fmt: CopyFormat, column: int) -> RowReader:
    if column < 0:
        raise ValueError("column")
    if fmt.kind == "binary":
        return BinaryRows(column)
    if fmt.kind == "csv":
        return CsvRows(fmt, column)
    return TextRows(fmt, column)


def shop_of(value: bytes, binary: bool) -> int | None:
    """A column value as a shop id (None when it is not one); see the module docstring."""
    if binary:
        if len(value) in (2, 4, 8):
            return int.from_bytes(value, "big", signed=True)
        return None
    text = value.strip(_WHITESPACE)
    if not text or not text.isascii():
        return None
    try:
        body = text.lstrip(b"+-").lower()
        if body[:2] in (b"0x", b"0o", b"0b"):
            return int(text, 0)
        return int(text)
    except ValueError:
        return None


# --- text and csv: lines ---------------------------------------------------------------------


class _Lines:
    """Rows of a line-based format, resumable across feeds.

    ``_buf`` holds the data from the start of the current (incomplete) row;
    ``_scan`` is where the search for the row's end resumes.
    """

    def __init__(self, fmt: CopyFormat, column: int) -> None:
        self.fmt = fmt
        self.column = column
        self.rows = 0
        self.ended = False
        self._buf = bytearray()
        self._scan = 0
        self._skip_lf = False  # the last row ended with a CR at the end of a feed
        self._cr = False  # a CR was seen in the stream (CR or CRLF line ends are possible)
        self._header = fmt.header

    def feed(self, data: bytes) -> list[CopyRow]:
        if self.ended or not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        self._cr = self._cr or b"\r" in data
        buf = self._buf
        buf += data
        out: list[CopyRow] = []
        start = 0
        while not self.ended:
            end, eol = self._row_end(buf, start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            next_start = end + eol
            if eol == 1 and buf[end] == _CR:
                if next_start < len(buf):
                    if buf[next_start] == _LF:
                        next_start += 1
                else:
                    self._skip_lf = True
            start, self._scan = next_start, next_start
            self._line(line, out)
        if self.ended:
            buf.clear()
            self._scan = 0
        else:
            del buf[:start]
            self._scan -= start
        return out

    def finish(self) -> list[CopyRow]:
        out: list[CopyRow] = []
        if not self.ended and self._buf and self._complete_at_end():
            line = bytes(self._buf)
            self._buf.clear()
            self._scan = 0
            self._line(line, out)
        self.ended = True
        return out

    def _complete_at_end(self) -> bool:
        """Is what is left a whole line when the data ends (not an open CSV quote)?"""
        return True

    def _line(self, line: bytes, out: list[CopyRow]) -> None:
        if self._header:
            self._header = False
            return
        if self._end_marker(line, out):
            self.ended = True
            return
        self.rows += 1
        value, problem = self._field(line)
        out.append(CopyRow(self.rows, value, problem))

    def _row_end(self, buf: bytearray, start: int) -> tuple[int, int]:
        """(index of the row's terminator, its length) or (-1, 0) when the row is incomplete."""
        raise NotImplementedError

    def _end_marker(self, line: bytes, out: list[CopyRow]) -> bool:
        raise NotImplementedError

    def _field(self, line: bytes) -> tuple[bytes | None, str | None]:
        raise NotImplementedError

    def _eol(self, buf: bytearray, pos: int) -> int:
        """The first LF or CR at or after ``pos`` (-1: none)."""
        lf = buf.find(b"\n", pos)
        if not self._cr:
            return lf
        cr = buf.find(b"\r", pos)
        if cr < 0:
            return lf
        return cr if lf < 0 or cr < lf else lf

    def _missing(self) -> tuple[None, str]:
        return None, f"has no column {self.column + 1}"


class TextRows(_Lines):
    """PostgreSQL's text COPY format (see the module docstring)."""

    def __init__(self, fmt: CopyFormat, column: int) -> None:
        super().__init__(fmt, column)
        delim = re.escape(fmt.delimiter)
        self._fields = re.compile(rb"\\.|" + delim, re.DOTALL)

    def _row_end(self, buf: bytearray, start: int) -> tuple[int, int]:
        pos = max(self._scan, start)
        while True:
            end = self._eol(buf, pos)
            if end < 0:
                self._scan = len(buf)
                return -1, 0
            run = 0
            while end - run - 1 >= start and buf[end - run - 1] == _BACKSLASH:
                run += 1
            if run % 2 == 0:
                return end, 1
            pos = end + 1  # an escaped newline is data

    def _end_marker(self, line: bytes, out: list[CopyRow]) -> bool:
        if not line.endswith(b"\\."):
            return False
        run = 0
        while len(line) - 2 - run >= 0 and line[len(line) - 2 - run] == _BACKSLASH:
            run += 1
        if run % 2 == 0:
            return False  # the backslash is itself escaped: data
        if len(line) > 2:  # data before the marker on its line is a last row (PostgreSQL <= 17)
            self.rows += 1
            value, problem = self._field(line[:-2])
            out.append(CopyRow(self.rows, value, problem))
        return True

    def _field(self, line: bytes) -> tuple[bytes | None, str | None]:
        column, delim = self.column, self.fmt.delimiter
        if b"\\" not in line:
            parts = line.split(delim, column + 1)
            if len(parts) <= column:
                return self._missing()
            raw = parts[column]
        else:
            found = _text_field(self._fields, line, delim, column)
            if found is None:
                return self._missing()
            raw = found
        if raw == self.fmt.null:
            return None, None
        return (_unescape(raw) if b"\\" in raw else raw), None


def _text_field(pattern: re.Pattern[bytes], line: bytes, delim: bytes, column: int) -> bytes | None:
    """Field ``column`` of a text line (raw, still escaped), splitting at unescaped delimiters."""
    index, start = 0, 0
    for m in pattern.finditer(line):
        if m.group() != delim:
            continue
        if index == column:
            return line[start : m.start()]
        index, start = index + 1, m.end()
    return line[start:] if index == column else None


def _unescape(raw: bytes) -> bytes:
    """A text-format field's backslash sequences decoded (PostgreSQL's CopyReadAttributesText)."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        i += 1
        if b != _BACKSLASH or i >= n:
            out.append(b)
            continue
        b = raw[i]
        i += 1
        if b in _OCTAL:
            value, digits = b - 0x30, 1
            while digits < 3 and i < n and raw[i] in _OCTAL:
                value, digits, i = value * 8 + raw[i] - 0x30, digits + 1, i + 1
            out.append(value & 0xFF)
        elif b == ord("x") and i < n and raw[i] in _HEX:
            end = i + 1 if i + 1 >= n or raw[i + 1] not in _HEX else i + 2
            out.append(int(raw[i:end], 16))
            i = end
        else:
            out.append(_ESCAPES.get(b, b))
    return bytes(out)


class CsvRows(_Lines):
    """PostgreSQL's CSV COPY format (see the module docstring)."""

    def __init__(self, fmt: CopyFormat, column: int) -> None:
        super().__init__(fmt, column)
        self._in_quote = False
        q, e = fmt.quote, fmt.escape
        self._quoted_special = re.compile(b"[" + re.escape(q) + (re.escape(e) if e != q else b"") + b"]")
        self._open_special = re.compile(b"[" + re.escape(q) + b"\r\n]")

    def _row_end(self, buf: bytearray, start: int) -> tuple[int, int]:
        pos = max(self._scan, start)
        quote, escape = self.fmt.quote[0], self.fmt.escape[0]
        n = len(buf)
        while True:
            if self._in_quote:
                m = self._quoted_special.search(buf, pos)
                if m is None:
                    self._scan = n
                    return -1, 0
                at = m.start()
                if buf[at] == escape and escape != quote:
                    if at + 1 >= n:
                        self._scan = at  # the escaped byte has not come yet
                        return -1, 0
                    pos = at + 2 if buf[at + 1] in (quote, escape) else at + 1
                    continue
                self._in_quote = False
                pos = at + 1
                continue
            m = self._open_special.search(buf, pos)
            if m is None:
                self._scan = n
                return -1, 0
            at = m.start()
            if buf[at] == quote:
                self._in_quote = True
                pos = at + 1
                continue
            return at, 1

    def _end_marker(self, line: bytes, out: list[CopyRow]) -> bool:
        return line == b"\\."

    def _complete_at_end(self) -> bool:
        return not self._in_quote  # an open quote: PostgreSQL fails the COPY (unterminated CSV quoted field)

    def _field(self, line: bytes) -> tuple[bytes | None, str | None]:
        column, fmt = self.column, self.fmt
        if fmt.quote not in line:
            parts = line.split(fmt.delimiter, column + 1)
            if len(parts) <= column:
                return self._missing()
            raw = parts[column]
            return (None if raw == fmt.null else raw), None
        found = _csv_field(line, fmt, column)
        if found is None:
            return self._missing()
        value, quoted = found
        if not quoted and value == fmt.null:
            return None, None
        return value, None


def _csv_field(line: bytes, fmt: CopyFormat, column: int) -> tuple[bytes, bool] | None:
    """Field ``column`` of a CSV line: (its value, whether it had quotes), None when missing."""
    delim, quote, escape = fmt.delimiter[0], fmt.quote[0], fmt.escape[0]
    index, i, n = 0, 0, len(line)
    value = bytearray()
    quoted = in_quote = False
    while i < n:
        b = line[i]
        i += 1
        if in_quote:
            if b == escape and i < n and line[i] in (quote, escape) and (escape != quote or line[i] == quote):
                if index == column:
                    value.append(line[i])
                i += 1
            elif b == quote:
                in_quote = False
            elif index == column:
                value.append(b)
        elif b == quote:
            in_quote = True
            quoted = quoted or index == column
        elif b == delim:
            if index == column:
                return bytes(value), quoted
            index += 1
        elif index == column:
            value.append(b)
    return (bytes(value), quoted) if index == column else None


# --- binary ----------------------------------------------------------------------------------

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")


class BinaryRows:
    """PostgreSQL's binary COPY format (see the module docstring)."""

    def __init__(self, column: int) -> None:
        self.column = column
        self.rows = 0
        self.ended = False
        self._step: Literal["header", "tuple", "length", "value", "skip"] = "header"
        self._need = _HEADER_FIXED
        self._pend = bytearray()
        self._skip = 0  # bytes still to skip (the header extension, or a field)
        self._fields = 0  # fields of the current tuple
        self._field = 0  # the field whose length comes next

    def feed(self, data: bytes) -> list[CopyRow]:
        out: list[CopyRow] = []
        pos, n = 0, len(data)
        while pos < n and not self.ended:
            if self._step == "skip":
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                if not self._skip:
                    self._next_field()
                continue
            take = min(self._need - len(self._pend), n - pos)
            self._pend += data[pos : pos + take]
            pos += take
            if len(self._pend) < self._need:
                break
            chunk, self._pend = bytes(self._pend), bytearray()
            self._got(chunk, out)
        return out

    def finish(self) -> list[CopyRow]:
        """A tuple cut short is PostgreSQL's error ("unexpected EOF"), not a row to read."""
        self.ended = True
        return []

    def _got(self, chunk: bytes, out: list[CopyRow]) -> None:
        step = self._step
        if step == "header":
            if not chunk.startswith(BINARY_SIGNATURE):
                self._fail(out, "is not binary COPY data (no PGCOPY signature)")
                return
            (extension,) = _INT32.unpack_from(chunk, len(BINARY_SIGNATURE) + 4)
            if extension < 0:
                self._fail(out, "has a malformed binary COPY header")
                return
            self._fields = self._field = 0  # the extension is skipped like a field of an empty tuple
            self._skip_or_next(extension)
        elif step == "tuple":
            (count,) = _INT16.unpack(chunk)
            if count == -1:
                self.ended = True
                return
            if count < 0:
                self._fail(out, "has a malformed binary COPY tuple")
                return
            self.rows += 1
            if count <= self.column:
                out.append(CopyRow(self.rows, None, f"has no column {self.column + 1}"))
            self._fields, self._field = count, 0
            self._expect("length" if count else "tuple")
        elif step == "length":
            (length,) = _INT32.unpack(chunk)
            if length < -1:
                self._fail(out, "has a malformed binary COPY field")
            elif self._field != self.column:
                self._skip_or_next(max(length, 0))
            elif length > 0:
                self._step, self._need = "value", length
            else:
                out.append(CopyRow(self.rows, None if length == -1 else b""))
                self._next_field()
        else:  # value
            out.append(CopyRow(self.rows, chunk))
            self._next_field()

    def _expect(self, step: Literal["tuple", "length"]) -> None:
        self._step, self._need = step, 2 if step == "tuple" else 4

    def _skip_or_next(self, length: int) -> None:
        if length:
            self._step, self._skip = "skip", length
        else:
            self._next_field()

    def _next_field(self) -> None:
        """After a field (or the header extension): the next field's length, or the next tuple."""
        self._field += 1
        self._expect("length" if self._field < self._fields else "tuple")

    def _fail(self, out: list[CopyRow], problem: str) -> None:
        number = self.rows if self._step == "length" else self.rows + 1
        out.append(CopyRow(number, None, problem))
        self.ended = True
