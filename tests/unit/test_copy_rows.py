"""protocol/copy_rows.py: one column of every COPY row, text, CSV and binary, however the data is cut.

Every vector is also fed cut in two at every offset, and byte by byte: the rows
read must not depend on where CopyData messages begin and end.
"""

from __future__ import annotations

import struct

import pytest

from pgtenantproxy.protocol.copy_rows import (
    BINARY_SIGNATURE,
    CopyFormat,
    CopyRow,
    row_reader,
    shop_of,
)

TEXT = CopyFormat.of("text")
CSV = CopyFormat.of("csv")
BINARY = CopyFormat.of("binary")


def read(fmt: CopyFormat, column: int, *chunks: bytes) -> list[tuple[int, bytes | None, str | None]]:
    reader = row_reader(fmt, column)
    rows: list[CopyRow] = []
    for chunk in chunks:
        rows += reader.feed(chunk)
    rows += reader.finish()
    return [(r.number, r.value, r.problem) for r in rows]


def cuts(data: bytes) -> list[list[bytes]]:
    out = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    out.append([data[i : i + 1] for i in range(len(data))])
    return out


def same_however_cut(fmt: CopyFormat, column: int, data: bytes) -> list[tuple[int, bytes | None, str | None]]:
    whole = read(fmt, column, data)
    for parts in cuts(data):
        assert read(fmt, column, *parts) == whole, parts
    return whole


# --- text ---------------------------------------------------------------------------------------

TEXT_CASES = [
    ("one row per line", b"1\ta\n2\tb\n", 0, [(1, b"1", None), (2, b"2", None)]),
    ("the second column", b"a\t1\tx\nb\t22\ty\n", 1, [(1, b"1", None), (2, b"22", None)]),
    ("the last column", b"a\tb\t3\n", 2, [(1, b"3", None)]),
    ("CRLF line ends", b"a\t1\r\nb\t2\r\n", 1, [(1, b"1", None), (2, b"2", None)]),
    ("CR line ends", b"a\t1\rb\t2\r", 1, [(1, b"1", None), (2, b"2", None)]),
    ("NULL", b"a\t\\N\n", 1, [(1, None, None)]),
    ("an escaped tab is data", b"a\\\tb\t5\n", 1, [(1, b"5", None)]),
    ("an escaped newline is data", b"a\\\nb\t6\n", 1, [(1, b"6", None)]),
    ("an escaped backslash before the delimiter", b"a\\\\\t7\n", 1, [(1, b"7", None)]),
    ("an escaped backslash before the newline", b"8\ta\\\\\n9\tb\n", 0, [(1, b"8", None), (2, b"9", None)]),
    ("octal and hex escapes are decoded", b"\\061\\x32\tz\n", 0, [(1, b"12", None)]),
    ("\\N inside a value is not NULL", b"x\\N\ta\n", 0, [(1, b"xN", None)]),
    ("a missing column", b"1\n", 1, [(1, None, "has no column 2")]),
    ("the end marker", b"1\ta\n\\.\n2\tb\n", 0, [(1, b"1", None)]),
    ("the end marker after data on its line", b"1\ta\n2\tb\\.\n3\tc\n", 0,
     [(1, b"1", None), (2, b"2", None)]),
    ("an escaped end marker is data", b"1\ta\\\\.\n2\tb\n", 0, [(1, b"1", None), (2, b"2", None)]),
    ("a last line without its newline", b"1\ta\n2\tb", 0, [(1, b"1", None), (2, b"2", None)]),
    ("an empty line", b"\n3\n", 0, [(1, b"", None), (2, b"3", None)]),
]


@pytest.mark.parametrize(("data", "column", "expected"), [c[1:] for c in TEXT_CASES],
                         ids=[c[0] for c in TEXT_CASES])
def test_text(data: bytes, column: int, expected: list[tuple[int, bytes | None, str | None]]) -> None:
    assert same_however_cut(TEXT, column, data) == expected


def test_text_header_delimiter_and_null_options() -> None:
    fmt = CopyFormat.of("text", delimiter="|", null="-", header=True)
    data = b"shop_id|name\n4|a\n-|b\n5|c\\|d\n"
    assert same_however_cut(fmt, 0, data) == [(1, b"4", None), (2, None, None), (3, b"5", None)]
    assert same_however_cut(fmt, 1, data) == [(1, b"a", None), (2, b"b", None), (3, b"c|d", None)]


def test_text_many_rows_in_one_feed_and_one_row_in_many() -> None:
    rows = b"".join(b"%d\tname %d\n" % (i % 7, i) for i in range(1000))
    got = read(TEXT, 0, rows)
    assert [v for _, v, _ in got] == [b"%d" % (i % 7) for i in range(1000)]
    big = b"9\t" + b"x" * 100_000 + b"\n"
    assert read(TEXT, 0, *[big[i : i + 1000] for i in range(0, len(big), 1000)]) == [(1, b"9", None)]


def test_text_ends_reading_at_the_marker() -> None:
    reader = row_reader(TEXT, 0)
    assert reader.feed(b"1\n\\.\n") == [CopyRow(1, b"1")]
    assert reader.ended
    assert reader.feed(b"2\n") == [] and reader.finish() == []


# --- csv ----------------------------------------------------------------------------------------

CSV_CASES = [
    ("plain", b"1,a\n2,b\n", 0, [(1, b"1", None), (2, b"2", None)]),
    ("a quoted value", b'"3",a\n', 0, [(1, b"3", None)]),
    ("a quoted delimiter before the column", b'"a,b",4\n', 1, [(1, b"4", None)]),
    ("a quoted newline before the column", b'"a\nb",5\n6,x\n', 1, [(1, b"5", None), (2, b"x", None)]),
    ("a quoted CRLF", b'"a\r\nb",7\r\n', 1, [(1, b"7", None)]),
    ("doubled quotes", b'"say ""hi""",8\n', 0, [(1, b'say "hi"', None)]),
    ("unquoted empty is NULL", b",a\n", 0, [(1, None, None)]),
    ("quoted empty is not NULL", b'"",a\n', 0, [(1, b"", None)]),
    ("a quote inside an unquoted field", b'a"b,c"d,9\n', 0, [(1, b"ab,cd", None)]),
    ("after a quote inside an unquoted field", b'a"b,c"d,9\n', 1, [(1, b"9", None)]),
    ("the end marker", b"1,a\n\\.\n2,b\n", 0, [(1, b"1", None)]),
    ("a quoted end marker is data", b'"\\.",1\n', 1, [(1, b"1", None)]),
    ("a last line without its newline", b'1,a\n"2",b', 0, [(1, b"1", None), (2, b"2", None)]),
    ("an open quote at the end is no row", b'1,a\n"2,b', 0, [(1, b"1", None)]),
    ("a missing column", b"1\n", 1, [(1, None, "has no column 2")]),
]


@pytest.mark.parametrize(("data", "column", "expected"), [c[1:] for c in CSV_CASES],
                         ids=[c[0] for c in CSV_CASES])
def test_csv(data: bytes, column: int, expected: list[tuple[int, bytes | None, str | None]]) -> None:
    assert same_however_cut(CSV, column, data) == expected


def test_csv_header_with_a_quoted_newline_escape_and_null() -> None:
    fmt = CopyFormat.of("csv", header=True, escape="\\", null="NULL", delimiter=";")
    data = b'"shop\nid";name\n"1\\"";a\nNULL;b\n"NULL";c\n"x\\\\";"d;\\"e"\n'
    assert same_however_cut(fmt, 0, data) == [(1, b'1"', None), (2, None, None), (3, b"NULL", None),
                                              (4, b"x\\", None)]
    assert same_however_cut(fmt, 1, data)[-1] == (4, b'd;"e', None)


# --- binary -------------------------------------------------------------------------------------


def tuple_(*fields: bytes | None) -> bytes:
    out = struct.pack("!h", len(fields))
    for f in fields:
        out += struct.pack("!i", -1) if f is None else struct.pack("!i", len(f)) + f
    return out


def binary(*tuples: bytes, extension: bytes = b"", trailer: bool = True) -> bytes:
    head = BINARY_SIGNATURE + struct.pack("!ii", 0, len(extension)) + extension
    return head + b"".join(tuples) + (struct.pack("!h", -1) if trailer else b"")


def test_binary_int2_int4_int8_null_and_a_long_field_before_the_column() -> None:
    data = binary(
        tuple_(b"a", struct.pack("!h", 2)),
        tuple_(b"x" * 5000, struct.pack("!i", 4)),
        tuple_(b"", struct.pack("!q", 8)),
        tuple_(b"b", None),
        extension=b"ext!",
    )
    rows = same_however_cut(BINARY, 1, data)
    assert [(n, v if v is None else shop_of(v, True), p) for n, v, p in rows] == [
        (1, 2, None), (2, 4, None), (3, 8, None), (4, None, None),
    ]


def test_binary_first_column_empty_value_and_no_trailer() -> None:
    data = binary(tuple_(struct.pack("!i", 3), b"n"), tuple_(b"", b"m"), trailer=False)
    assert same_however_cut(BINARY, 0, data) == [(1, struct.pack("!i", 3), None), (2, b"", None)]


def test_binary_reports_a_short_tuple_and_stops_at_the_trailer() -> None:
    data = binary(tuple_(b"only"), tuple_(b"a", b"b")) + tuple_(b"after", b"trailer")
    assert same_however_cut(BINARY, 1, data) == [(1, None, "has no column 2"), (2, b"b", None)]


@pytest.mark.parametrize(
    ("data", "problem", "number"),
    [
        (b"not binary at all, no header", "is not binary COPY data (no PGCOPY signature)", 1),
        (BINARY_SIGNATURE + struct.pack("!ii", 0, -5), "has a malformed binary COPY header", 1),
        (binary(tuple_(b"a", b"b"), trailer=False) + struct.pack("!h", -7),
         "has a malformed binary COPY tuple", 2),
        (binary(trailer=False) + struct.pack("!hi", 1, -3), "has a malformed binary COPY field", 1),
    ],
)
def test_binary_that_is_not_binary_copy_data(data: bytes, problem: str, number: int) -> None:
    rows = read(BINARY, 1, data)
    assert rows[-1] == (number, None, problem)


def test_binary_a_tuple_cut_short_is_no_row() -> None:
    data = binary(trailer=False) + struct.pack("!hi", 2, 10) + b"abc"
    assert read(BINARY, 1, data) == []


# --- values and formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "binary_", "shop"),
    [
        (b"7", False, 7), (b" 12 ", False, 12), (b"-3", False, -3), (b"+4", False, 4), (b"0x1f", False, 31),
        (b"007", False, 7), (b"1_000", False, 1000), (b"1.0", False, None), (b"", False, None),
        (b"abc", False, None), ("é".encode(), False, None),
        (struct.pack("!h", -2), True, -2), (struct.pack("!i", 70000), True, 70000),
        (struct.pack("!q", 2**40), True, 2**40), (b"\x00\x01\x02", True, None),
    ],
)
def test_shop_of(value: bytes, binary_: bool, shop: int | None) -> None:
    assert shop_of(value, binary_) == shop


def test_formats_have_postgresql_defaults() -> None:
    assert TEXT == CopyFormat("text", b"\t", b"\\N")
    assert CSV == CopyFormat("csv", b",", b"", b'"', b'"')
    assert CopyFormat.of("csv", quote="'").escape == b"'"
    assert BINARY.binary and not CSV.binary


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "json"}, {"kind": "text", "delimiter": "ab"}, {"kind": "text", "delimiter": "\n"},
        {"kind": "text", "delimiter": "\\"}, {"kind": "text", "quote": "'"}, {"kind": "csv", "quote": ","},
        {"kind": "csv", "null": "é"}, {"kind": "binary", "header": True},
        {"kind": "binary", "delimiter": ","}, {"kind": "csv", "escape": "ab"},
    ],
)
def test_formats_the_readers_cannot_follow(kwargs: dict[str, object]) -> None:
    kind = str(kwargs.pop("kind"))
    with pytest.raises(ValueError):
        CopyFormat.of(kind, **kwargs)  # type: ignore[arg-type]


def test_a_reader_for_a_negative_column_is_refused() -> None:
    with pytest.raises(ValueError):
        row_reader(TEXT, -1)
