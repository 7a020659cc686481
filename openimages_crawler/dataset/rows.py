"""Streaming the metadata CSV and validating each row before it becomes work.

Metadata comes from the internet: an ImageID becomes a path, a URL becomes a
request, so both are checked here. A bad row becomes an ``InvalidRow`` with a
reason, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from openimages_crawler.dataset.catalogue import REQUIRED_COLUMNS, UNKNOWN_SUBSET
from openimages_crawler.store.layout import is_subset_name

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
ALLOWED_SCHEMES = ("http", "https")

# Rows may hold long titles; the csv module's 128 KiB default is too small
# for hostile input but a row over 16 MiB is not metadata.
csv.field_size_limit(16 * 1024 * 1024)


class MetadataError(Exception):
    """The metadata file as a whole cannot be used (missing, no header, ...)."""


@dataclass(slots=True)
class ImageRow:
    """A validated row: the input fields plus the parsed values the crawl needs."""

    fields: dict[str, str]
    image_id: str
    url: str
    size: int
    md5: bytes
    subset: str
    rotation: int = 0  # V4+ Rotation, applied only to files without an EXIF orientation
    thumbnail_url: str = ""  # Thumbnail300KURL when it is an http(s) URL


@dataclass(slots=True)
class InvalidRow:
    """A row that cannot become work; recorded as ``invalid_row``."""

    fields: dict[str, str]
    subset: str
    details: str


def open_bytes(path: Path) -> IO[bytes]:
    """Open a metadata file, plain or gzip (told by its first bytes)."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def open_text(path: Path) -> IO[str]:
    """Open a metadata file (plain or gzip) as text, BOM-tolerant."""
    return io.TextIOWrapper(open_bytes(path), encoding="utf-8-sig", errors="replace", newline="")


def count_lines(path: Path) -> int:
    """Data rows of a metadata file, counted cheaply as line breaks after the
    header (a quoted title holding a line break makes it an overestimate)."""
    lines = 0
    with open_bytes(path) as raw:
        last = b""
        while chunk := raw.read(1 << 22):
            lines += chunk.count(b"\n")
            last = chunk
    if last and not last.endswith(b"\n"):
        lines += 1  # a last row without a line break
    return max(lines - 1, 0)


def read_header(path: Path) -> list[str]:
    """The metadata file's columns, checked for the ones the crawl needs."""
    with open_text(path) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise MetadataError(f"{path}: empty file, expected an images.csv header")
    header = [name.strip() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise MetadataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}"
        )
    if len(set(header)) != len(header):
        raise MetadataError(f"{path}: duplicate column names in {', '.join(header)}")
    return header


def iter_rows(
    path: Path, header: list[str], max_row_bytes: int
) -> Iterator[tuple[dict[str, str], str | None]]:
    """Yield ``(fields, problem)`` per data row, streaming in bounded memory;
    ``problem`` names a malformed row (wrong number of fields, over
    ``max_row_bytes``, a quote that never closes), else ``None``. A file that
    ends early (a truncated ``.gz``) raises ``MetadataError`` after the rows
    before the damage."""
    width = len(header)
    csv.field_size_limit(max(csv.field_size_limit(), max_row_bytes))
    records = iter(RecordReader(path, max_row_bytes))
    next(records, None)  # the header
    for record, problem in records:
        values = next(csv.reader(io.StringIO(record, newline="")), [])
        if problem is None and not values:
            continue  # a blank line
        if problem is None and len(values) == width:
            yield dict(zip(header, values, strict=True)), None
            continue
        fields = dict(zip(header, values, strict=False))
        for name in header[len(values) :]:
            fields[name] = ""
        yield fields, problem or f"row has {len(values)} fields, the header has {width}"


class RecordReader:
    """The records of a CSV file as text, each at most ``limit`` bytes.

    A record is a line, or several while a quoted field is open (RFC 4180:
    quote parity tells). A line over the limit is skipped to its end and
    reported with its beginning (so the row keeps its ImageID); a quote still
    open after ``limit`` bytes is reported for the row where it opened, and
    reading resumes at that row's next line, so one stray quote costs one row.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self.raw = open_bytes(path)
        self.pushed: list[bytes] = []  # lines read ahead, to read again (last first)
        self.line = 0  # lines read so far, for messages

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        try:
            while first := self.read_line():
                if self.line == 1:
                    first = first.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
                yield self.record(first)
        finally:
            self.raw.close()

    def read_line(self, *, same_line: bool = False) -> bytes:
        """The next line (at most ``limit + 1`` bytes of it); ``same_line``
        reads on in a line already counted."""
        if self.pushed:
            line = self.pushed.pop()
        else:
            try:
                line = self.raw.readline(self.limit + 1)
            except (EOFError, OSError, zlib.error) as exc:  # a truncated or corrupt .gz
                raise MetadataError(f"{self.path}: cannot be read after line {self.line}: {exc}") from exc
        self.line += bool(line) and not same_line
        return line

    def record(self, first: bytes) -> tuple[str, str | None]:
        if len(first) > self.limit:  # one line over the limit: skip to its end
            rest = first
            while rest and not rest.endswith(b"\n"):
                rest = self.read_line(same_line=True)
            # Whole unquoted fields from its beginning, so the failure row names the image.
            head = first[:4096].split(b'"', 1)[0].rsplit(b",", 1)[0]
            return self.text(head), f"row longer than {self.limit} bytes"
        lines, size, open_quote = [first], len(first), first.count(b'"') % 2
        while open_quote:
            line = self.read_line()
            if not line:  # the file ends inside quotes
                return self.unclosed(lines, "a quoted field never closes")
            lines.append(line)
            size += len(line)
            open_quote ^= line.count(b'"') % 2
            if size > self.limit:
                return self.unclosed(lines, f"a quoted field is still open after {self.limit} bytes")
        return self.text(b"".join(lines)), None

    def unclosed(self, lines: list[bytes], problem: str) -> tuple[str, str]:
        """The row where a quote opened, as an invalid row; the lines after its
        first one are read again, as rows."""
        self.pushed.extend(reversed(lines[1:]))
        self.line -= len(lines) - 1
        return self.text(lines[0].split(b'"', 1)[0].rsplit(b",", 1)[0]), problem

    @staticmethod
    def text(data: bytes) -> str:
        return data.decode("utf-8", "replace")


def subset_folder(fields: dict[str, str], default: str | None) -> str:
    """The folder a row's outputs go to: its Subset, else the default, else unknown."""
    value = fields.get("Subset", "") or default or UNKNOWN_SUBSET
    return value if is_subset_name(value) else (default or UNKNOWN_SUBSET)


def validate_row(
    fields: dict[str, str], problem: str | None, default_subset: str | None
) -> ImageRow | InvalidRow:
    """Check one row; every check failure names the field and the value."""
    subset = subset_folder(fields, default_subset)

    def invalid(details: str) -> InvalidRow:
        return InvalidRow(fields, subset, details)

    if problem:
        return invalid(problem)
    raw_subset = fields.get("Subset", "")
    if raw_subset and subset != raw_subset:
        return invalid(f"Subset {raw_subset[:80]!r} is not a safe folder name (or is one of the store's own)")
    image_id = fields["ImageID"]
    if not SAFE_ID.fullmatch(image_id):
        return invalid(f"ImageID {image_id[:80]!r} is not a safe id (letters, digits, _ and -)")
    url = fields["OriginalURL"].strip()
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return invalid(f"OriginalURL {url[:200]!r} does not parse: {exc}")
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        return invalid(f"OriginalURL {url[:200]!r} is not an http or https URL")
    size_text = fields["OriginalSize"].strip()
    if not size_text.isascii() or not size_text.isdigit():
        return invalid(f"OriginalSize {size_text[:40]!r} is not an integer")
    md5_text = fields["OriginalMD5"].strip()
    try:
        md5 = base64.b64decode(md5_text, validate=True)
    except (binascii.Error, ValueError):
        md5 = b""
    if len(md5) != 16:
        return invalid(f"OriginalMD5 {md5_text[:40]!r} is not a base64 16-byte MD5")
    rotation_text = fields.get("Rotation", "").strip()
    rotation = parse_rotation(rotation_text)
    if rotation is None and rotation_text.lower() not in ("", "nan"):
        return invalid(f"Rotation {rotation_text[:40]!r} is not 0, 90, 180 or 270")
    thumbnail = fields.get("Thumbnail300KURL", "").strip()
    if thumbnail and not _is_http_url(thumbnail):
        thumbnail = ""  # no usable thumbnail: the original is used
    return ImageRow(fields, image_id, url, int(size_text), md5, subset, rotation or 0, thumbnail)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ALLOWED_SCHEMES and bool(parts.hostname)


def parse_rotation(text: str) -> int | None:
    """V4+ Rotation ("90", "90.0"): degrees counter-clockwise; None if not a right angle."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value in (0.0, 90.0, 180.0, 270.0) else None
