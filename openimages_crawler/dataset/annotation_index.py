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
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openimages_crawler.dataset.annotations import (
    ClassNames,
    CopyStopped,
    open_records,
    valid_json_line,
)
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS, AnnotationKind
from openimages_crawler.dataset.masks import MaskPngs
from openimages_crawler.dataset.rows import MetadataError

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".byimage.sqlite"
_BATCH = 50_000  # records inserted per statement batch
_FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
_COORDINATES = ("XMin", "XMax", "YMin", "YMax")
_MASK_BOX = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
_PAIR = ("XMin1", "XMax1", "YMin1", "YMax1", "XMin2", "XMax2", "YMin2", "YMax2")
_INT32_MAX, _INT64_MAX = 2**31 - 1, 2**63 - 1  # what the packs' typed columns hold
# Masks a sample carries at most, and their PNGs' bytes: an image has tens of masks of tens of
# KB; beyond is a broken or hostile file (memory per image stays bounded).
MAX_MASKS_PER_IMAGE = 1000
MAX_MASK_BYTES_PER_IMAGE = 64 << 20


class AnnotationIndex:
    """One annotation file's records by ImageID (read-only once built): CSV
    rows, or JSON lines (narratives)."""

    def __init__(self, path: Path, kind: AnnotationKind = ANNOTATION_KINDS["boxes"]) -> None:
        self.path = path
        self.kind = kind
        self.local = threading.local()  # a connection per thread (sqlite3's rule)
        header = self._connection().execute("SELECT value FROM meta WHERE key = 'header'").fetchone()[0]
        self.header = next(csv.reader([header]), [])

    @classmethod
    def of(cls, source: Path | list[Path], stop: threading.Event | None = None, path: Path | None = None,
           kind: AnnotationKind = ANNOTATION_KINDS["boxes"]) -> AnnotationIndex:
        """The index of ``source``, a file of ``kind`` or the parts of one (at
        ``path``, by default next to the first), built first if it is missing
        or stale (call it under a lock of that folder)."""
        sources = source if isinstance(source, list) else [source]
        path = path or sources[0].with_name(sources[0].name + INDEX_SUFFIX)
        path.parent.mkdir(parents=True, exist_ok=True)
        if _stamp(sources) != _read_stamp(path):
            logger.info("Indexing %s by image (once per file)", ", ".join(map(str, sources)))
            _build(kind, sources, path, stop)
        return cls(path, kind)

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
            if self.kind.json_lines:
                yield json.loads(record)  # checked when the index was built
                continue
            fields = next(csv.reader([record]), [])
            yield dict(zip(self.header, fields, strict=False))


def _stamp(sources: list[Path]) -> str:
    return " ".join(f"{status.st_size}:{status.st_mtime_ns}" for status in (source.stat() for source in sources))


def _read_stamp(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None  # a broken index is built again


def _build(kind: AnnotationKind, sources: list[Path], path: Path, stop: threading.Event | None) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    try:
        connection = sqlite3.connect(staging)
        try:
            connection.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
                "CREATE TABLE records (image_id TEXT NOT NULL, n INTEGER NOT NULL, record TEXT NOT NULL,"
                " PRIMARY KEY (image_id, n)) WITHOUT ROWID;")
            n = 0
            for number, source in enumerate(sources):
                with open_records(kind, source) as reader:
                    if number == 0:
                        connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                            ("header", reader.header_line.rstrip("\r\n")), ("source", _stamp(sources))])
                    batch: list[tuple[str, int, str]] = []
                    for raw, (image_id,) in reader:
                        if kind.json_lines and not valid_json_line(raw, image_id):
                            continue
                        batch.append((image_id, n, raw.rstrip("\r\n")))
                        n += 1
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
        raise MetadataError(f"cannot index {', '.join(map(str, sources))}: {exc}") from exc
    finally:
        staging.unlink(missing_ok=True)


@dataclass
class SampleAnnotations:
    """The annotations a sample carries, from the annotation files of its
    split, restricted to ``label_names`` (the requested classes) if given: a
    list per kind indexed (``labels`` and ``boxes`` always, when written).

    Each label: LabelName, DisplayName, ClassIndex (1-based, in the version's
    class descriptions: TFRecord's ``image/object/class/label``), Source,
    Confidence. Each box adds XMin, XMax, YMin, YMax (fractions of the image
    as its file stores the pixels; ``boxes.placed_annotations`` moves them
    into an output) and the flags IsOccluded, IsTruncated, IsGroupOf,
    IsDepiction, IsInside (-1 where the file has no such column). A mask:
    LabelName, DisplayName, ClassIndex, MaskPath, BoxID, BoxXMin … BoxYMax,
    PredictedIoU, Clicks (``{X, Y, Inside}``) and ``png``, the official PNG's
    bytes (``None`` when it cannot be had). A point: LabelName (the file's
    Label), DisplayName, ClassIndex, X, Y, EstimatedYesNo, Source, YesVotes,
    NoVotes, UnsureVotes, TextLabel. A relationship: LabelName1, DisplayName1,
    LabelName2, DisplayName2 (an attribute's name where it is one),
    RelationshipLabel and the two boxes XMin1 … YMax2. A narrative: caption,
    annotator_id, timed_caption (``{utterance, start_time, end_time}``) and
    traces (lists of ``{x, y, t}``), each value checked for its type.
    """

    indexes: dict[str, dict[str, AnnotationIndex]]  # kind -> split -> its file's index
    classes: ClassNames
    label_names: frozenset[str] | None = None
    masks: MaskPngs | None = None  # where the mask rows' PNGs come from
    attributes: dict[str, str] = field(default_factory=dict)  # attribute MID -> name (relationships)

    def __post_init__(self) -> None:
        self.class_index = {mid: number for number, mid in enumerate(self.classes.names, 1)}
        self.parsers = {"labels": self._label, "boxes": self._box, "masks": self._mask, "points": self._point,
                        "relationships": self._relationship, "narratives": self._narrative}

    def of(self, split: str, image_id: str) -> dict[str, list[dict[str, Any]]]:
        """``{"labels": [...], "boxes": [...], ...}`` of one image: a list per kind."""
        found: dict[str, list[dict[str, Any]]] = {}
        for kind, by_split in self.indexes.items():
            index = by_split.get(split)
            parse = self.parsers[kind]
            records = [record for record in (index.records(image_id) if index else ()) if self._keeps(index, record)]
            if kind == "masks":
                records = records[:MAX_MASKS_PER_IMAGE]
            items = [item for item in map(lambda record: parse(split, record), records) if item is not None]
            found[kind] = _bounded(items) if kind == "masks" else items
        return found

    def _keeps(self, index: AnnotationIndex | None, record: dict[str, Any]) -> bool:
        columns = index.kind.label_columns if index is not None else ()
        return self.label_names is None or not columns or any(
            record.get(column) in self.label_names for column in columns)

    def _class(self, mid: str, suffix: str = "") -> dict[str, Any]:
        name = self.classes.names.get(mid) or self.attributes.get(mid, "")
        return {f"LabelName{suffix}": mid, f"DisplayName{suffix}": name}

    def _label(self, split: str, record: dict[str, str]) -> dict[str, Any] | None:
        mid = record.get("LabelName", "")
        try:
            confidence = float(record.get("Confidence") or 1)
        except ValueError:
            return None  # a malformed row, as the annotation files count and skip them
        return {**self._class(mid), "ClassIndex": self.class_index.get(mid, 0), "Source": record.get("Source", ""),
                "Confidence": confidence}

    def _box(self, split: str, record: dict[str, str]) -> dict[str, Any] | None:
        label = self._label(split, record)
        coordinates = _numbers(record, _COORDINATES)
        if label is None or coordinates is None:
            return None
        flags = {name: _flag(record.get(name)) for name in _FLAGS}
        return {**label, **coordinates, **flags}

    def _mask(self, split: str, record: dict[str, str]) -> dict[str, Any] | None:
        mid, image_id = record.get("LabelName", ""), record.get("ImageID", "")
        box = _numbers(record, _MASK_BOX)
        if box is None:
            return None
        mask_path = record.get("MaskPath", "")
        png = self.masks.png(split, image_id, mask_path) if self.masks is not None else None
        return {**self._class(mid), "ClassIndex": self.class_index.get(mid, 0), "MaskPath": mask_path,
                "BoxID": record.get("BoxID", ""), **box, "PredictedIoU": _number(record.get("PredictedIoU")),
                "Clicks": _clicks(record.get("Clicks", "")), "png": png}

    def _point(self, split: str, record: dict[str, str]) -> dict[str, Any] | None:
        mid = record.get("Label", "")
        place = _numbers(record, ("X", "Y"))
        if place is None:
            return None
        votes = {name: _whole(record.get(name), 0, _INT32_MAX) for name in ("YesVotes", "NoVotes", "UnsureVotes")}
        if None in votes.values():
            return None  # a malformed row, as the annotation files count and skip them
        return {**self._class(mid), "ClassIndex": self.class_index.get(mid, 0), **place,
                "EstimatedYesNo": record.get("EstimatedYesNo", ""), "Source": record.get("Source", ""), **votes,
                "TextLabel": record.get("TextLabel", "")}

    def _relationship(self, split: str, record: dict[str, str]) -> dict[str, Any] | None:
        boxes = _numbers(record, _PAIR)
        if boxes is None:
            return None
        return {**self._class(record.get("LabelName1", ""), "1"), **self._class(record.get("LabelName2", ""), "2"),
                "RelationshipLabel": record.get("RelationshipLabel", ""), **boxes}

    def _narrative(self, split: str, record: dict[str, Any]) -> dict[str, Any] | None:
        caption = record.get("caption")
        if not isinstance(caption, str):
            return None
        timed = [{"utterance": str(each.get("utterance", "")), "start_time": _number(each.get("start_time")) or 0.0,
                  "end_time": _number(each.get("end_time")) or 0.0}
                 for each in _list(record.get("timed_caption")) if isinstance(each, dict)]
        traces = [[{"x": x, "y": y, "t": _number(step.get("t")) or 0.0}
                   for step in _list(trace) if isinstance(step, dict)
                   for x, y in [(_number(step.get("x")), _number(step.get("y")))] if x is not None and y is not None]
                  for trace in _list(record.get("traces"))]
        annotator = _whole(record.get("annotator_id"), 0, _INT64_MAX)
        return {"caption": caption, "annotator_id": -1 if annotator is None else annotator,
                "timed_caption": timed, "traces": traces}


def _number(value: object) -> float | None:
    """A finite number from a file (text or JSON), else ``None``."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _bounded(masks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An image's masks with at most MAX_MASK_BYTES_PER_IMAGE of PNGs in all
    (the rest keep their rows, without pixels)."""
    total = 0
    for mask in masks:
        if mask["png"] is not None:
            total += len(mask["png"])
            if total > MAX_MASK_BYTES_PER_IMAGE:
                mask["png"] = None
    return masks


def _whole(value: object, low: int, high: int) -> int | None:
    """A whole number within ``low``..``high`` (what its typed column holds), else ``None``."""
    number = _number(value)
    if number is None or not number.is_integer() or not low <= number <= high:
        return None
    return int(number)


def _numbers(record: dict[str, str], names: tuple[str, ...]) -> dict[str, float] | None:
    found = {name: _number(record.get(name)) for name in names}
    return None if any(value is None for value in found.values()) else found  # type: ignore[return-value]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _clicks(text: str) -> list[dict[str, float | int]]:
    """``x y 0|1;…``: where the annotator clicked, and whether inside the object."""
    clicks = []
    for click in text.split(";"):
        parts = click.split()
        if len(parts) == 3 and (x := _number(parts[0])) is not None and (y := _number(parts[1])) is not None:
            clicks.append({"X": x, "Y": y, "Inside": 1 if parts[2] == "1" else 0})
    return clicks


def _flag(value: str | None) -> int:
    """1, 0, or -1 for unknown (anything else a file says)."""
    found = _whole(value, -1, 1)
    return -1 if found is None else found
