"""Classes and annotations: which images carry the requested classes, and the
selected images' annotation rows.

Annotation files are big (the V6 train boxes: 14.6M rows, 2.26 GB), so they
are streamed line by line and only the few columns the selection needs are
split out; a record is parsed as CSV only when it holds a quote (so it may
span lines). Plain Python over files; no Scrapy import.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openimages_crawler.dataset.catalogue import (
    ANNOTATION_CONFIDENCE_COLUMN,
    ANNOTATION_ID_COLUMN,
    ANNOTATION_LABEL_COLUMN,
)
from openimages_crawler.dataset.rows import MetadataError, open_text
from openimages_crawler.dataset.selection import SelectionError

logger = logging.getLogger(__name__)

_SUGGESTIONS = 5
_MAX_RECORD_LINES = 1000  # a quoted field left open longer than this is a broken file
_STOP_CHECK_EVERY = 1 << 16  # rows between checks of a stop request while copying


def parse_class_list(text: str) -> list[str]:
    """``-a classes``: comma-separated names; quote a name that holds a comma
    (``'"Ducks, geese and swans",Person'``)."""
    try:
        names = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as exc:
        raise SelectionError(f"-a classes={text!r}: {exc}") from None
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise SelectionError("-a classes is empty: give display names like Football,Person")
    return names


class ClassNames:
    """Display names of label ids (MIDs), from a class-descriptions file."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # MID -> display name
        self.by_key: dict[str, list[str]] = {}  # case-folded display name -> MIDs
        for mid, name in names.items():
            self.by_key.setdefault(name.casefold(), []).append(mid)

    @classmethod
    def load(cls, path: Path) -> ClassNames:
        """``LabelName,DisplayName`` rows; a header row (V7) is recognised by
        not starting with a label id, any line ending is accepted."""
        names: dict[str, str] = {}
        try:
            with open_text(path) as handle:
                for number, row in enumerate(csv.reader(handle), 1):
                    if not row or (number == 1 and not row[0].startswith("/")):
                        continue
                    if len(row) < 2:
                        raise MetadataError(f"{path}:{number}: expected LabelName,DisplayName")
                    names[row[0].strip()] = row[1].strip()
        except (OSError, csv.Error) as exc:
            raise MetadataError(f"cannot read the class descriptions {path}: {exc}") from exc
        if not names:
            raise MetadataError(f"{path} lists no classes")
        return cls(names)

    def resolve(self, requested: Iterable[str]) -> dict[str, frozenset[str]]:
        """Each requested name (case-insensitive, or a label id such as /m/0284d)
        with its MIDs. Unknown names are one error that suggests close names."""
        resolved: dict[str, frozenset[str]] = {}
        unknown: list[str] = []
        for name in requested:
            if name in self.names:
                resolved[name] = frozenset([name])
            elif mids := self.by_key.get(name.casefold()):
                resolved[name] = frozenset(mids)
            else:
                unknown.append(name)
        if unknown:
            raise SelectionError("; ".join(self._unknown_message(name) for name in unknown))
        return resolved

    def suggestions(self, name: str) -> list[str]:
        """Display names close to ``name``: similar spellings, then the shortest
        names containing it (``Footbal`` -> ``Footbag``, ``General football``)."""
        key = name.casefold()
        close = difflib.get_close_matches(key, self.by_key, n=_SUGGESTIONS, cutoff=0.6)[:3]
        containing = sorted((k for k in self.by_key if key in k and k not in close), key=len)
        return [self.names[self.by_key[k][0]] for k in (close + containing)[:_SUGGESTIONS]]

    def _unknown_message(self, name: str) -> str:
        found = self.suggestions(name)
        hint = f"; did you mean {', '.join(repr(s) for s in found)}?" if found else ""
        return f"unknown class {name!r}{hint}"


class AnnotationReader:
    """Records of an annotation CSV: each as its raw text and the values of ``columns``."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        self.handle: IO[str] = open_text(path)
        self.header_line = self.handle.readline()
        header = [name.strip() for name in next(csv.reader([self.header_line]), [])]
        missing = [name for name in columns if name not in header]
        if missing:
            self.handle.close()
            raise MetadataError(f"{path}: no column {', '.join(missing)} (columns: {','.join(header)})")
        self.indexes = [header.index(name) for name in columns]
        self.malformed = 0

    def __enter__(self) -> AnnotationReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        if self.malformed:
            logger.warning("%s: %d malformed annotation rows ignored", self.path, self.malformed)

    def __iter__(self) -> Iterator[tuple[str, list[str]]]:
        indexes = self.indexes
        cut = max(indexes) + 1
        for line in self.handle:
            if '"' in line:  # the rare quoted record: parse it properly
                line, fields = self._quoted_record(line)
            else:
                fields = line.rstrip("\r\n").split(",", cut)
            if len(fields) < cut:
                if line.strip():
                    self.malformed += 1
                continue
            yield line, [fields[i] for i in indexes]

    def _quoted_record(self, first: str) -> tuple[str, list[str]]:
        """A record holding a quote, parsed as CSV. It runs onto the next lines
        only while a field that opened with a quote is still open (a stray quote
        inside a field is just a character), for at most _MAX_RECORD_LINES."""
        lines = [first]

        def following() -> Iterator[str]:
            for line in self.handle:
                lines.append(line)
                if len(lines) > _MAX_RECORD_LINES:
                    raise MetadataError(
                        f"{self.path}: a quoted field is still open after {_MAX_RECORD_LINES} "
                        f"lines; the file is broken near {first[:80]!r}"
                    )
                yield line

        try:
            fields = next(csv.reader(itertools.chain([first], following())), [])
        except csv.Error:
            fields = []
        return "".join(lines), fields


def _is_confirmed(confidence: str) -> bool:
    """Confidence 1 (written ``1`` or ``1.0``): a human verified the label as present."""
    if confidence == "1":
        return True
    try:
        return float(confidence) == 1.0
    except ValueError:
        return False


@dataclass(frozen=True)
class ClassFilter:
    """Images carrying any (or all) of the requested classes in an annotation file."""

    classes: dict[str, frozenset[str]]  # requested name -> its MIDs
    match_all: bool = False
    confirmed_only: bool = False  # image labels: only Confidence 1 counts

    @property
    def label_names(self) -> frozenset[str]:
        return frozenset().union(*self.classes.values())

    def images(self, path: Path) -> list[str]:
        """ImageIDs in ``path`` that pass the filter."""
        bits: dict[str, int] = {}
        for bit, mids in enumerate(self.classes.values()):
            for mid in mids:
                bits[mid] = bits.get(mid, 0) | 1 << bit
        columns = (ANNOTATION_ID_COLUMN, ANNOTATION_LABEL_COLUMN)
        if self.confirmed_only:
            columns += (ANNOTATION_CONFIDENCE_COLUMN,)
        found: dict[str, int] = {}
        with AnnotationReader(path, columns) as reader:
            for _, values in reader:
                bit = bits.get(values[1])
                if bit is None or (self.confirmed_only and not _is_confirmed(values[2])):
                    continue
                found[values[0]] = found.get(values[0], 0) | bit
        if not self.match_all:
            return list(found)
        every = (1 << len(self.classes)) - 1
        return [image_id for image_id, mask in found.items() if mask == every]


class CopyStopped(Exception):
    """The crawl is stopping: the annotation file is left for the next run."""


def merge_selected_rows(
    source: Path,
    existing: Path | None,
    out: IO[str],
    image_ids: set[str],
    label_names: frozenset[str] | None,
    stop: threading.Event | None = None,
) -> int:
    """Write to ``out`` the rows of ``existing`` (an earlier run's file with the
    same columns), then the rows of ``source`` for ``image_ids`` (and of
    ``label_names`` only, if given) that are not there yet, as they are. So
    several selections into one store (shards, other classes) add up, and a
    rerun adds nothing. Returns the number of rows added."""
    with AnnotationReader(source, (ANNOTATION_ID_COLUMN, ANNOTATION_LABEL_COLUMN)) as reader:
        out.write(_line(reader.header_line))
        present = _copy_existing(existing, reader.header_line, out, image_ids) if existing else set()
        added = 0
        for number, (raw, (image_id, label)) in enumerate(reader):
            if number % _STOP_CHECK_EVERY == 0 and stop is not None and stop.is_set():
                raise CopyStopped(str(source))
            if image_id in image_ids and (label_names is None or label in label_names):
                if raw.rstrip("\r\n") not in present:
                    out.write(_line(raw))
                    added += 1
    return added


def _copy_existing(existing: Path, header_line: str, out: IO[str], image_ids: set[str]) -> set[str]:
    """Copy an earlier file's rows to ``out``; the rows of ``image_ids`` among them."""
    present: set[str] = set()
    if not existing.is_file():
        return present
    try:
        with AnnotationReader(existing, (ANNOTATION_ID_COLUMN, ANNOTATION_LABEL_COLUMN)) as old:
            if old.header_line.rstrip("\r\n") != header_line.rstrip("\r\n"):
                logger.warning("Replacing %s: its columns are not those of this version's file", existing)
                return present
            for raw, (image_id, _) in old:
                out.write(_line(raw))
                if image_id in image_ids:
                    present.add(raw.rstrip("\r\n"))
    except MetadataError as exc:
        logger.warning("Replacing %s: %s", existing, exc)
    return present


def header_only(source: Path, out: IO[str]) -> None:
    """The columns of ``source`` and no rows: a split where nothing was selected."""
    with AnnotationReader(source, (ANNOTATION_ID_COLUMN,)) as reader:
        out.write(_line(reader.header_line))


def _line(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
