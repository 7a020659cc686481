"""Which metadata rows a crawl takes: subset, id lists, exclusions, shard,
offset and limit. Pure functions over rows; no Scrapy import."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openimages_crawler.dataset.idset import IdSet, read_id_column
from openimages_crawler.dataset.rows import open_text

# One id per line, optionally with its split: the official downloader.py format.
ID_LINE = re.compile(r"(?:(?P<split>[A-Za-z0-9_.-]+)/)?(?P<id>[A-Za-z0-9][A-Za-z0-9_-]*)")


# A metadata row: its fields, a parse problem (or None) and the split of the
# file it came from ("" when the file holds several splits or is the user's own).
MetadataRecord = tuple[dict[str, str], str | None, str]


class SelectionError(Exception):
    """A selection argument or file that cannot be used; stops the crawl before it starts."""


@dataclass
class IdList:
    """ImageIDs, each either for any split or for one split only."""

    anywhere: IdSet = field(default_factory=IdSet)
    by_split: dict[str, IdSet] = field(default_factory=dict)

    def holds(self, image_id: str, subset: str) -> bool:
        if image_id in self.anywhere:
            return True
        in_split = self.by_split.get(subset)
        return in_split is not None and image_id in in_split

    def __len__(self) -> int:
        return len(self.anywhere) + sum(len(ids) for ids in self.by_split.values())


def read_id_list(path: Path) -> IdList:
    """``ImageID`` or ``split/ImageID`` per line; blank lines and ``#`` comments skipped."""
    anywhere: list[str] = []
    by_split: dict[str, list[str]] = {}
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                match = ID_LINE.fullmatch(text)
                if match is None:
                    raise SelectionError(f"{path}:{number}: {text[:80]!r} is not an ImageID or split/ImageID")
                if match["split"]:
                    by_split.setdefault(match["split"], []).append(match["id"])
                else:
                    anywhere.append(match["id"])
    except OSError as exc:
        raise SelectionError(f"cannot read {path}: {exc}") from exc
    return IdList(IdSet(anywhere), {split: IdSet(ids) for split, ids in by_split.items()})


def read_exclusions(path: Path) -> IdList:
    """An id list, or any CSV with an ImageID column (e.g. an annotations file)."""
    try:
        with open_text(path) as handle:
            first = next(csv.reader(handle), [])
        if "ImageID" in [name.strip() for name in first]:
            return IdList(read_id_column(path))
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise SelectionError(f"cannot read {path}: {exc}") from exc
    return read_id_list(path)


# Creative Commons short names -a licenses takes, and how a License URL names them
# (creativecommons.org/licenses/{name}/{version}/, .../publicdomain/zero|mark/...).
LICENSE_NAMES = ("by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd", "cc0", "pdm")
_LICENSE_URL = re.compile(r"(?i)^https?://(?:www\.)?creativecommons\.org/(licenses|publicdomain)/([a-z-]+)(?:/|$)")
_PUBLIC_DOMAIN = {"zero": "cc0", "mark": "pdm"}


def license_name(url: str) -> str:
    """The Creative Commons short name of a License URL, whatever its version
    (``https://creativecommons.org/licenses/by-sa/2.0/`` is ``by-sa``); ``""``
    for anything else."""
    match = _LICENSE_URL.match(url.strip())
    if match is None:
        return ""
    kind, name = match[1].lower(), match[2].lower()
    if kind == "publicdomain":
        return _PUBLIC_DOMAIN.get(name, "")
    return name if name in LICENSE_NAMES else ""


def parse_licenses(text: str) -> frozenset[str]:
    """``-a licenses=by,by-sa``: Creative Commons short names, checked."""
    names = frozenset(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = sorted(names - set(LICENSE_NAMES))
    if unknown or not names:
        raise SelectionError(f"-a licenses={text!r}: give Creative Commons short names among "
                             f"{', '.join(LICENSE_NAMES)} (comma-separated)")
    return names


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``, by a hash of the ImageID: the
    shards of one N cover every row exactly once, whatever the file order."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if match is None:
            raise SelectionError(f"-a shard={text!r} is not K/N (for example 1/4)")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise SelectionError(f"-a shard={text!r}: K must be between 1 and N")
        return cls(index, count)

    def holds(self, image_id: str) -> bool:
        digest = hashlib.md5(image_id.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


@dataclass
class Selection:
    """The filters, applied in this order: subset, classes, licenses, ids,
    exclude, shard, offset, limit; ``share`` is a process's share of the rows a
    multi-process run selects (a finer hash than ``shard``, ``in_share``). ``classes``
    holds the images that carry the requested classes, by split."""

    subset: str | None = None
    classes: IdList | None = None
    licenses: frozenset[str] | None = None  # Creative Commons short names (license_name)
    ids: IdList | None = None
    exclude: IdList | None = None
    shard: Shard | None = None
    offset: int = 0
    limit: int | None = None
    share: Shard | None = None

    def estimate(self, rows: int) -> int:
        """How many of ``rows`` metadata rows the selection will take, roughly
        (for progress: exclusions and other splits in a shared file are not
        counted out)."""
        for chosen in (self.classes, self.ids):
            if chosen is not None:
                rows = min(rows, len(chosen))
        if self.shard is not None:
            rows = math.ceil(rows / self.shard.count)
        rows = max(rows - self.offset, 0)
        rows = rows if self.limit is None else min(rows, self.limit)
        if self.share is not None:
            rows = math.ceil(rows * (self.shard.count if self.shard else 1) / self.share.count)
        return rows

    def takes(self, fields: dict[str, str], file_subset: str = "") -> bool:
        """Whether a row passes the subset, class, license, id, exclusion and
        shard filters; ``file_subset`` is the split of the file it came from, if any."""
        row_subset = fields.get("Subset", "")
        if self.subset and row_subset and row_subset != self.subset:
            return False
        image_id = fields.get("ImageID", "")
        subset = row_subset or self.subset or file_subset
        if self.classes is not None and not self.classes.holds(image_id, subset):
            return False
        if self.licenses is not None and license_name(fields.get("License", "")) not in self.licenses:
            return False
        if self.ids is not None and not self.ids.holds(image_id, subset):
            return False
        if self.exclude is not None and self.exclude.holds(image_id, subset):
            return False
        return self.shard is None or self.shard.holds(image_id)

    def rows(self, records: Iterable[MetadataRecord]) -> Iterator[MetadataRecord]:
        """The records (fields, parse problem, file's split) that pass, in order."""
        skipped = kept = 0
        for record in records:
            if not self.takes(record[0], record[2]):
                continue
            if skipped < self.offset:
                skipped += 1
                continue
            if self.limit is not None and kept >= self.limit:
                return
            kept += 1
            yield record

    def in_share(self, image_id: str) -> bool:
        """Whether a selected row is this process's to crawl (``share``)."""
        return self.share is None or self.share.holds(image_id)
