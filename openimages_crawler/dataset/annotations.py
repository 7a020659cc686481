"""Classes and annotations: which images carry the requested classes, and the
selected images' annotation rows.

Annotation files are big (the V6 train boxes: 14.6M rows, 2.26 GB; the V7
train points 66M), so they are streamed line by line and only the few
columns the selection needs are split out; a record is parsed as CSV only
when it holds a quote (so it may span lines). Localized narratives are JSON
lines: the ImageID is found in each line's text and only selected lines are
parsed. Plain Python over files; no Scrapy import.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

from openimages_crawler.dataset.catalogue import AnnotationKind
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


class RecordFile:
    """An annotation file read record by record; the malformed ones are counted and said once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: IO[str] = open_text(path)
        self.malformed = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        if self.malformed:
            logger.warning("%s: %d malformed annotation records ignored", self.path, self.malformed)


class AnnotationReader(RecordFile):
    """Records of an annotation CSV: each as its raw text and the values of ``columns``."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        super().__init__(path)
        self.header_line = self.handle.readline()
        header = [name.strip() for name in next(csv.reader([self.header_line]), [])]
        missing = [name for name in columns if name not in header]
        if missing:
            self.handle.close()
            raise MetadataError(f"{path}: no column {', '.join(missing)} (columns: {','.join(header)})")
        self.indexes = [header.index(name) for name in columns]

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


# The image_id member of a narrative line: a key cannot hold an unescaped quote,
# so the text of a caption cannot imitate it.
_JSON_IMAGE_ID = re.compile(r'"image_id"\s*:\s*"([^"\\]*)"')


class JsonLinesReader(RecordFile):
    """Records of a JSON-lines file (localized narratives): each line as its
    raw text and its ``image_id``; ``header_line`` is empty (no header)."""

    header_line = ""

    def __init__(self, path: Path, max_line_bytes: int = 1 << 24) -> None:
        super().__init__(path)
        self.max_line_bytes = max_line_bytes  # characters: a narrative is a few KB; longer lines are broken

    def __iter__(self) -> Iterator[tuple[str, list[str]]]:
        while line := self.handle.readline(self.max_line_bytes + 1):
            if len(line) > self.max_line_bytes and not line.endswith("\n"):
                while (rest := self.handle.readline(self.max_line_bytes)) and not rest.endswith("\n"):
                    pass  # the rest of a line too long to be a narrative, read in bounded pieces
                self.malformed += 1
                continue
            match = _JSON_IMAGE_ID.search(line)
            if match is None:
                if line.strip():
                    self.malformed += 1
                continue
            yield line, [match[1]]


def open_records(kind: AnnotationKind, path: Path, columns: tuple[str, ...] = ()) -> AnnotationReader | JsonLinesReader:
    """A reader of ``path``, a file of ``kind``, giving the ImageID then ``columns``."""
    if kind.json_lines:
        if columns:
            raise MetadataError(f"{path}: {kind.name} have no column {', '.join(columns)}")
        return JsonLinesReader(path)
    return AnnotationReader(path, (kind.id_column, *columns))


def valid_json_line(raw: str, image_id: str) -> bool:
    """A narrative line is parsed before it is written or indexed: one JSON
    object whose own ``image_id`` is the one its text was filed under (a key
    nested deeper that came first files it under no image)."""
    try:
        found = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(found, dict) and found.get("image_id") == image_id


def _says_present(value: str, wanted: str) -> bool:
    """Confidence 1 (written ``1`` or ``1.0``: a human verified the label as
    present), or EstimatedYesNo ``yes``."""
    value = value.strip()
    if value == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except ValueError:
        return False


@dataclass(frozen=True)
class ClassFilter:
    """Images carrying any (or all) of the requested classes in annotation files."""

    classes: dict[str, frozenset[str]]  # requested name -> its MIDs
    match_all: bool = False

    @property
    def label_names(self) -> frozenset[str]:
        return frozenset().union(*self.classes.values())

    def found(self, kind: AnnotationKind, path: Path, into: dict[str, int] | None = None) -> dict[str, int]:
        """Per ImageID of ``path`` (a file of ``kind``), a bit per requested class
        it carries, added to ``into``: a relationship carries both its classes,
        image labels and points count only where they say the class is there."""
        bits: dict[str, int] = {}
        for bit, mids in enumerate(self.classes.values()):
            for mid in mids:
                bits[mid] = bits.get(mid, 0) | 1 << bit
        present = kind.present
        columns = kind.label_columns + ((present[0],) if present else ())
        labels = len(kind.label_columns)
        found = {} if into is None else into
        with open_records(kind, path, columns) as reader:
            for _, values in reader:
                carried = 0
                for value in values[1:labels + 1]:
                    carried |= bits.get(value, 0)
                if not carried or (present and not _says_present(values[-1], present[1])):
                    continue
                image_id = values[0]
                found[image_id] = found.get(image_id, 0) | carried
        return found

    def images(self, found: dict[str, int]) -> list[str]:
        """The ImageIDs of ``found`` that pass: any class, or every class with ``match_all``."""
        if not self.match_all:
            return list(found)
        every = (1 << len(self.classes)) - 1
        return [image_id for image_id, mask in found.items() if mask == every]

    def balanced(self, found: dict[str, int], per_class: int, seed: int = 0) -> list[str]:
        """At most ``per_class`` images of ``found`` per requested class (``-a per_class``),
        the same for a given ``seed`` whatever the order ``found`` was filled in.

        The candidates (those ``images`` keeps) are ordered: the images carrying
        every requested class first, then the others, each group by a keyed hash
        of (seed, ImageID) (the ImageID breaks a tie). Walking that order, an
        image is taken when every requested class it carries has fewer than
        ``per_class`` images so far, and then counts for each of them: no class
        ever goes above ``per_class``, and a class may end below it when its
        images are scarce or also carry classes already full. An image with every
        class comes when no class is full yet, so they are all taken, up to
        ``per_class``, before any other. One pass and a sort."""
        if per_class < 1:
            raise ValueError(f"per_class={per_class} must be 1 or more")
        every = (1 << len(self.classes)) - 1
        key = _seed_key(seed)

        def order(image_id: str) -> bytes:
            digest = hashlib.blake2b(image_id.encode(), digest_size=8, key=key).digest()
            return (b"\0" if found[image_id] == every else b"\1") + digest + image_id.encode()

        candidates = self.images(found)
        candidates.sort(key=order)
        counts = [0] * len(self.classes)
        full = 0  # a bit per class that has its per_class images
        taken: list[str] = []
        for image_id in candidates:
            mask = found[image_id]
            if mask & full:
                continue
            taken.append(image_id)
            for bit in range(len(counts)):
                if mask >> bit & 1:
                    counts[bit] += 1
                    if counts[bit] == per_class:
                        full |= 1 << bit
            if full == every:
                break
        return taken

    def counts(self, found: dict[str, int], image_ids: Iterable[str]) -> dict[str, int]:
        """Per requested class, how many of ``image_ids`` (images of ``found``) carry it."""
        counts = dict.fromkeys(self.classes, 0)
        for image_id in image_ids:
            mask = found[image_id]
            for bit, name in enumerate(self.classes):
                if mask >> bit & 1:
                    counts[name] += 1
        return counts


def _seed_key(seed: int) -> bytes:
    """The blake2b key of ``-a seed`` (a whole number 0 to 2**64 - 1)."""
    return seed.to_bytes(8, "big")


class CopyStopped(Exception):
    """The crawl is stopping: the annotation file is left for the next run."""


def merge_selected_rows(
    kind: AnnotationKind,
    sources: Sequence[Path],
    existing: Path | None,
    out: IO[str],
    image_ids: set[str],
    label_names: frozenset[str] | None,
    stop: threading.Event | None = None,
) -> int:
    """Write to ``out`` the rows of ``existing`` (an earlier run's file with the
    same columns), then the rows of ``sources`` (one file, or a file in parts)
    for ``image_ids`` (carrying one of ``label_names`` only, if given and the
    kind has classes) that are not there yet, as they are. So several
    selections into one store (shards, other classes) add up, and a rerun adds
    nothing. Returns the number of rows added."""
    added = 0
    present: set[str] | None = None
    for source in sources:
        with open_records(kind, source, kind.label_columns) as reader:
            if present is None:  # the first part's header is the file's
                _write_header(out, reader.header_line)
                present = _copy_existing(kind, existing, reader.header_line, out, image_ids) if existing else set()
            for number, (raw, values) in enumerate(reader):
                if number % _STOP_CHECK_EVERY == 0 and stop is not None and stop.is_set():
                    raise CopyStopped(str(source))
                if values[0] not in image_ids or not _carries(values[1:], label_names):
                    continue
                if raw.rstrip("\r\n") in present or (kind.json_lines and not valid_json_line(raw, values[0])):
                    continue
                out.write(_line(raw))
                added += 1
    return added


def _carries(labels: list[str], label_names: frozenset[str] | None) -> bool:
    """A row with no classes (a narrative) is always the image's."""
    return label_names is None or not labels or any(label in label_names for label in labels)


def _copy_existing(kind: AnnotationKind, existing: Path, header_line: str, out: IO[str],
                   image_ids: set[str]) -> set[str]:
    """Copy an earlier file's rows to ``out``; the rows of ``image_ids`` among them."""
    present: set[str] = set()
    if not existing.is_file():
        return present
    try:
        with open_records(kind, existing) as old:
            if old.header_line.rstrip("\r\n") != header_line.rstrip("\r\n"):
                logger.warning("Replacing %s: its columns are not those of this version's file", existing)
                return present
            for raw, (image_id,) in old:
                out.write(_line(raw))
                if image_id in image_ids:
                    present.add(raw.rstrip("\r\n"))
    except MetadataError as exc:
        logger.warning("Replacing %s: %s", existing, exc)
    return present


def header_only(kind: AnnotationKind, source: Path, out: IO[str]) -> None:
    """The columns of ``source`` and no rows: a split where nothing was selected."""
    with open_records(kind, source) as reader:
        _write_header(out, reader.header_line)


def _write_header(out: IO[str], header_line: str) -> None:
    if header_line:  # JSON lines have none
        out.write(_line(header_line))


def _line(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
