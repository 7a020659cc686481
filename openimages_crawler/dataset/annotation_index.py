"""Each image's labels and boxes, looked up while the crawl writes its packs.

A pack sample carries its image's annotations, but the annotation files are
big (V6 train boxes: 14.6M rows) and a crawl meets its images in metadata
order. So each annotation CSV the crawl uses is indexed once, by ImageID,
into an SQLite file next to it in the metadata cache (built in staging and
renamed, rebuilt when the CSV changes), and read with one query per image
from any thread or process. Plain Python and the standard library's sqlite3;
no Scrapy import.
"""

from __future__ import annotations

import csv
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openimages_crawler.dataset.annotations import (
    AnnotationReader,
    ClassNames,
    CopyStopped,
)
from openimages_crawler.dataset.catalogue import ANNOTATION_ID_COLUMN
from openimages_crawler.dataset.rows import MetadataError

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".byimage.sqlite"
_BATCH = 50_000  # records inserted per statement batch
_FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
_COORDINATES = ("XMin", "XMax", "YMin", "YMax")


class AnnotationIndex:
    """One annotation CSV's records by ImageID (read-only once built)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.local = threading.local()  # a connection per thread (sqlite3's rule)
        self.header = next(csv.reader([self._connection().execute(
            "SELECT value FROM meta WHERE key = 'header'").fetchone()[0]]))

    @classmethod
    def of(cls, source: Path, stop: threading.Event | None = None, path: Path | None = None) -> AnnotationIndex:
        """The index of ``source`` (at ``path``, by default next to it), built
        first if it is missing or stale (call it under a lock of that folder)."""
        path = path or source.with_name(source.name + INDEX_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _stamp(source) != _read_stamp(path):
            logger.info("Indexing %s by image (once per file)", source)
            _build(source, path, stop)
        return cls(path)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = sqlite3.connect(
                f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return connection

    def records(self, image_id: str) -> Iterator[dict[str, str]]:
        """The image's records, in file order, as column -> value; ``OSError`` when
        the index cannot be read (the image then stays pending, never written without them)."""
        try:
            rows = self._connection().execute(
                "SELECT record FROM records WHERE image_id = ? ORDER BY n", (image_id,)).fetchall()
        except sqlite3.Error as exc:
            raise OSError(f"cannot read the annotation index {self.path}: {exc}") from exc
        for (record,) in rows:
            fields = next(csv.reader([record]), [])
            yield dict(zip(self.header, fields, strict=False))


def _stamp(source: Path) -> str:
    status = source.stat()
    return f"{status.st_size}:{status.st_mtime_ns}"


def _read_stamp(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None  # a broken index is built again


def _build(source: Path, path: Path, stop: threading.Event | None) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    try:
        with AnnotationReader(source, (ANNOTATION_ID_COLUMN,)) as reader:
            connection = sqlite3.connect(staging)
            try:
                connection.executescript(
                    "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                    "CREATE TABLE records (image_id TEXT NOT NULL, n INTEGER NOT NULL, record TEXT NOT NULL,"
                    " PRIMARY KEY (image_id, n)) WITHOUT ROWID;")
                connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("header", reader.header_line.rstrip("\r\n")), ("source", _stamp(source))])
                batch: list[tuple[str, int, str]] = []
                for n, (raw, (image_id,)) in enumerate(reader):
                    batch.append((image_id, n, raw.rstrip("\r\n")))
                    if len(batch) >= _BATCH:
                        if stop is not None and stop.is_set():
                            raise CopyStopped(str(source))
                        connection.executemany("INSERT INTO records VALUES (?, ?, ?)", batch)
                        batch = []
                connection.executemany("INSERT INTO records VALUES (?, ?, ?)", batch)
                connection.commit()
            finally:
                connection.close()
        os.replace(staging, path)
    except sqlite3.Error as exc:
        raise MetadataError(f"cannot index {source}: {exc}") from exc
    finally:
        staging.unlink(missing_ok=True)


@dataclass
class SampleAnnotations:
    """The labels and boxes a pack sample carries, from the annotation files of
    its split, restricted to ``label_names`` (the requested classes) if given.

    Each label: LabelName, DisplayName, ClassIndex (1-based, in the version's
    class descriptions: TFRecord's ``image/object/class/label``), Source,
    Confidence. Each box adds XMin, XMax, YMin, YMax (fractions of the image
    as its file stores the pixels; ``boxes.stored_box`` moves them into an
    output) and the flags IsOccluded, IsTruncated, IsGroupOf, IsDepiction,
    IsInside (-1 where the file has no such column).
    """

    boxes: dict[str, AnnotationIndex]  # split -> its box file's index
    labels: dict[str, AnnotationIndex]  # split -> its image-label file's index
    classes: ClassNames
    label_names: frozenset[str] | None = None

    def __post_init__(self) -> None:
        self.class_index = {mid: number for number, mid in enumerate(self.classes.names, 1)}

    def of(self, split: str, image_id: str) -> dict[str, list[dict[str, Any]]]:
        """``{"labels": [...], "boxes": [...]}`` of one image."""
        labels = [self._label(record) for record in self._records(self.labels, split, image_id)]
        boxes = [self._box(record) for record in self._records(self.boxes, split, image_id)]
        return {"labels": [label for label in labels if label is not None],
                "boxes": [box for box in boxes if box is not None]}

    def _records(self, indexes: dict[str, AnnotationIndex], split: str, image_id: str) -> Iterator[dict[str, str]]:
        index = indexes.get(split)
        if index is None:
            return iter(())
        return (record for record in index.records(image_id)
                if self.label_names is None or record.get("LabelName") in self.label_names)

    def _label(self, record: dict[str, str]) -> dict[str, Any] | None:
        mid = record.get("LabelName", "")
        try:
            confidence = float(record.get("Confidence") or 1)
        except ValueError:
            return None  # a malformed row, as the annotation files count and skip them
        return {"LabelName": mid, "DisplayName": self.classes.names.get(mid, ""),
                "ClassIndex": self.class_index.get(mid, 0), "Source": record.get("Source", ""),
                "Confidence": confidence}

    def _box(self, record: dict[str, str]) -> dict[str, Any] | None:
        label = self._label(record)
        if label is None:
            return None
        try:
            coordinates = {name: float(record[name]) for name in _COORDINATES}
        except (KeyError, ValueError):
            return None
        flags = {name: _flag(record.get(name)) for name in _FLAGS}
        return {**label, **coordinates, **flags}


def _flag(value: str | None) -> int:
    try:
        return int(value) if value not in (None, "") else -1
    except ValueError:
        return -1
