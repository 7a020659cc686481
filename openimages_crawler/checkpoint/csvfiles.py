"""Results CSV files on disk: their header, and repair after a crash.

A kill -9 can leave a torn last record; it is cut off before anything reads
or appends to the file.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


def repair_tail(path: Path) -> int:
    """Cut a torn last record off a CSV file; returns the bytes removed.

    A record ends at a newline outside quotes (RFC 4180 quoting: quotes inside
    a field are doubled, so quote parity tells inside from outside).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        handle.seek(0)
        offset = 0
        good_end = 0
        inside_quotes = False
        for line in handle:
            offset += len(line)
            if line.count(b'"') % 2:
                inside_quotes = not inside_quotes
            if not inside_quotes and line.endswith(b"\n"):
                good_end = offset
    with open(path, "r+b") as handle:
        handle.truncate(good_end)
    logger.warning("Removed a torn last record (%d bytes) from %s", size - good_end, path)
    return size - good_end


def iter_records(handle: IO[bytes]) -> Iterator[bytes]:
    """The raw records of a CSV file, header first, each with its line end
    (a quoted field may hold line breaks: quote parity tells, as above)."""
    record = b""
    for line in handle:
        record += line
        if record.count(b'"') % 2 == 0:
            yield record
            record = b""
    if record:
        yield record


def record_fields(record: bytes) -> list[str]:
    return next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")), [])


def read_csv_header(path: Path) -> list[str] | None:
    """The header of an existing non-empty CSV file, else ``None``."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None)
    except FileNotFoundError:
        return None
