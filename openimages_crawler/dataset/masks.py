"""The official instance-mask PNGs of selected images, out of V5's mask zips.

The masks of a split come in 16 zips by the ImageID's first hex digit (the
train ones are gigabytes each), so only the zips whose digit holds a wanted
mask are fetched, through the metadata fetcher (resumed, cached). A member is
looked up by the ``MaskPath`` of a mask row, never extracted by its own name:
the name is checked first (a plain file name starting with its ImageID), the
member's size is bounded, read with a bound whatever its header says, and
must be a PNG. Plain Python; no Scrapy import.
"""

from __future__ import annotations

import logging
import posixpath
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from openimages_crawler.dataset.catalogue import RemoteFile
from openimages_crawler.dataset.fetch import FetchStopped, MetadataFetcher
from openimages_crawler.dataset.rows import MetadataError

logger = logging.getLogger(__name__)

# A mask PNG is tens of KB; a member past this is not a mask.
MAX_MASK_BYTES = 1 << 24
_PNG = b"\x89PNG\r\n\x1a\n"
# {ImageID}_{LabelName without "/"}_{BoxID}.png
_MASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.png")


def mask_name_ok(mask_path: str, image_id: str) -> bool:
    """A MaskPath usable as a file name: plain, a PNG, starting with its ImageID."""
    return bool(_MASK_NAME.fullmatch(mask_path)) and mask_path.startswith(f"{image_id}_") and ".." not in mask_path


@dataclass
class MaskCounts:
    """What one pass over the zips found."""

    found: int = 0
    missing: list[str] = field(default_factory=list)  # no such member (or a bad one): the MaskPaths
    archives: list[str] = field(default_factory=list)  # the zips opened


class MaskArchives:
    """A version's mask zips per split and first hex digit, fetched when needed."""

    def __init__(self, fetcher: MetadataFetcher, archives: dict[str, dict[str, RemoteFile]]) -> None:
        self.fetcher = fetcher
        self.archives = archives

    def masks(self, split: str, wanted: Iterable[tuple[str, str]], counts: MaskCounts,
              stop: threading.Event | None = None) -> Iterator[tuple[str, str, bytes]]:
        """``(ImageID, MaskPath, PNG bytes)`` of each wanted ``(ImageID, MaskPath)``,
        zip by zip; ones that are not in their zip, or not a bounded PNG, go to
        ``counts.missing``. A stop between members raises ``FetchStopped``."""
        by_digit: dict[str, list[tuple[str, str]]] = {}
        for image_id, mask_path in wanted:
            if not mask_name_ok(mask_path, image_id):
                counts.missing.append(mask_path)
                continue
            by_digit.setdefault(image_id[0].lower(), []).append((image_id, mask_path))
        for digit in sorted(by_digit):
            remote = self.archives.get(split, {}).get(digit)
            if remote is None:
                counts.missing.extend(mask_path for _, mask_path in by_digit[digit])
                continue
            path = self.fetcher.fetch(remote)
            counts.archives.append(remote.path)
            try:
                with zipfile.ZipFile(path) as archive:
                    members = {posixpath.basename(info.filename): info for info in archive.infolist()
                               if not info.is_dir()}
                    for image_id, mask_path in by_digit[digit]:
                        if stop is not None and stop.is_set():
                            raise FetchStopped(f"stopped while extracting masks from {path}")
                        data = _member(archive, members.get(mask_path))
                        if data is None:
                            counts.missing.append(mask_path)
                            continue
                        counts.found += 1
                        yield image_id, mask_path, data
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                path.unlink(missing_ok=True)  # fetched again by the next run
                raise MetadataError(f"{path}: not a readable zip of masks: {exc}") from exc
            if not self.fetcher.keep_archives:  # as the tarballs (OPENIMAGES_SAVE_TARBALLS)
                path.unlink(missing_ok=True)


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> bytes | None:
    """The member's bytes if it is a PNG within the bound (its header's size is not trusted)."""
    if info is None or info.file_size > MAX_MASK_BYTES:
        return None
    with archive.open(info) as source:
        data = source.read(MAX_MASK_BYTES + 1)
    if len(data) > MAX_MASK_BYTES or not data.startswith(_PNG):
        return None
    return data
