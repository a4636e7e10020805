"""A retired shop's legacy rows on disk: one binary COPY file per table, plus a manifest.

Layout: ``<[migration] archive_dir>/shop_<N>/<schema.table>.copy`` and
``manifest.json`` (shop, time, source database without credentials, and per
table: file, format, columns, rows, bytes, sha256), written last, through a
temporary file and a rename, so a manifest on disk always describes complete
files. Each file holds ``COPY (SELECT <stored columns> FROM t WHERE shop = N)
TO STDOUT (FORMAT binary)`` (generated columns are left out: the database
computes them again on load). The caller runs every table's COPY in one
REPEATABLE READ transaction, so the files are one consistent snapshot.

Invariants:

* A file is never trusted without its checksum: :func:`check_files` re-reads
  every file and compares size and sha256 with the manifest (and the caller
  compares the manifest with ``pgtenantproxy.retirement_archives``), before
  retirement deletes anything and before a restore loads anything.
* Loading (:func:`load_table`) names the archived columns explicitly and
  compares the rows loaded with the rows archived.
* Binary COPY of an array or composite of a user-defined type carries that
  type's OID: an archive loads back into the database it came from (or a
  restored copy of it), which is what ``restore`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from pgtenantproxy.dualwrite.sqlgen import TableInfo
from pgtenantproxy.lifecycle.errors import MigrationError
from pgtenantproxy.sqltext import ident, literal

MANIFEST = "manifest.json"
FORMAT = "binary"
READ_CHUNK = 1 << 20
MANIFEST_VERSION = 1


class ArchiveError(MigrationError):
    """An archive is missing, incomplete or does not match its checksums."""


@dataclass(frozen=True)
class ArchivedTable:
    """One table's file in a shop's archive."""

    table: str  # the capture label, "schema.table"
    file: str  # file name inside the shop's directory
    format: str
    columns: tuple[str, ...]
    rows: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "file": self.file, "format": self.format, "columns": list(self.columns),
                "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchivedTable:
        return cls(str(data["table"]), str(data["file"]), str(data["format"]),
                   tuple(str(c) for c in data["columns"]), int(data["rows"]), int(data["bytes"]),
                   str(data["sha256"]))


@dataclass(frozen=True)
class Manifest:
    """A shop's archive: its tables in load order (referenced tables first)."""

    shop_id: int
    created_at: str
    source: dict[str, Any]  # host, port, database: never a password
    tables: tuple[ArchivedTable, ...]

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "shop_id": self.shop_id, "created_at": self.created_at,
                "source": self.source, "rows": self.rows, "bytes": self.bytes,
                "tables": [t.as_dict() for t in self.tables]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(int(data["shop_id"]), str(data["created_at"]), dict(data["source"]),
                   tuple(ArchivedTable.from_dict(t) for t in data["tables"]))


def shop_dir(archive_dir: str | os.PathLike[str], shop_id: int) -> Path:
    return Path(archive_dir) / f"shop_{shop_id}"


def shop_condition(table: TableInfo, shop_id: int) -> str:
    """``shop_id = '7'::text::<the column's type>`` (a literal: COPY takes no parameters)."""
    column = next((c for c in table.columns if c.name == table.tenant_column), None)
    cast = f"::{column.type_sql}" if column is not None else ""
    return f"{ident(table.tenant_column)} = {literal(str(shop_id))}::text{cast}"


def file_name(table: TableInfo) -> str:
    return f"{table.label}.copy"


async def archive_table(
    conn: asyncpg.Connection, table: TableInfo, shop_id: int, directory: Path
) -> ArchivedTable:
    """COPY the shop's rows of ``table`` into ``directory`` (in the caller's transaction); the entry."""
    columns = tuple(c.name for c in table.stored_columns)
    query = (f"SELECT {', '.join(ident(c) for c in columns)} FROM {table.name.sql}"
             f" WHERE {shop_condition(table, shop_id)}")
    path = directory / file_name(table)
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as fh:
        async def sink(data: bytes) -> None:
            nonlocal size
            fh.write(data)
            digest.update(data)
            size += len(data)

        status = await conn.copy_from_query(query, output=sink, format=FORMAT)
        fh.flush()
        os.fsync(fh.fileno())
    return ArchivedTable(table.label, path.name, FORMAT, columns, copy_rows(status), size, digest.hexdigest())


def copy_rows(status: str) -> int:
    """Rows of a ``COPY n`` command status."""
    return int(status.split()[-1])


def file_digest(path: Path) -> tuple[int, str]:
    """``(bytes, sha256 hex)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_files(directory: Path, manifest: Manifest) -> None:
    """Re-read every file of the archive; raise :class:`ArchiveError` listing every mismatch."""
    problems: list[str] = []
    for entry in manifest.tables:
        path = directory / entry.file
        if not path.is_file():
            problems.append(f"{entry.file} is missing")
            continue
        size, sha = file_digest(path)
        if size != entry.bytes:
            problems.append(f"{entry.file} has {size} bytes, the manifest says {entry.bytes}")
        elif sha != entry.sha256:
            problems.append(f"{entry.file} has sha256 {sha[:16]}..., "
                            f"the manifest says {entry.sha256[:16]}...")
    if problems:
        raise ArchiveError(f"the archive of shop {manifest.shop_id} in {directory} is damaged: "
                           + "; ".join(problems) + "; nothing was changed")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (temporary file, fsync, rename)."""
    path = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(manifest.as_dict(), fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def read_manifest(directory: Path, shop_id: int) -> Manifest:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest.from_dict(data)
    except FileNotFoundError:
        raise ArchiveError(f"shop {shop_id} has no archive: {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path}: not a readable archive manifest ({exc})") from None
    if manifest.shop_id != shop_id:
        raise ArchiveError(f"{path} describes shop {manifest.shop_id}, not shop {shop_id}")
    return manifest


async def load_table(
    conn: asyncpg.Connection, directory: Path, entry: ArchivedTable, table: TableInfo
) -> int:
    """COPY one archived file into ``table`` (in the caller's transaction); the rows loaded."""
    stored = {c.name for c in table.stored_columns}
    missing = [c for c in entry.columns if c not in stored]
    if missing:
        raise ArchiveError(f"{table.label} no longer has the archived columns {', '.join(missing)}: "
                           "the archive cannot be loaded as it is")
    status = await conn.copy_to_table(
        table.name.name, schema_name=table.name.schema, source=directory / entry.file,
        columns=list(entry.columns), format=entry.format,
    )
    loaded = copy_rows(status)
    if loaded != entry.rows:
        raise ArchiveError(f"{entry.file}: loaded {loaded} rows, the manifest says {entry.rows}")
    return loaded


def by_table(entries: Sequence[ArchivedTable]) -> dict[str, ArchivedTable]:
    return {e.table: e for e in entries}
