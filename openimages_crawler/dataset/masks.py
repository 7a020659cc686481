"""The official instance-mask PNGs of selected images, out of V5's mask zips.

The masks of a split come in 16 zips by the ImageID's first hex digit (the
train ones are gigabytes each), so only the zips whose digit holds a wanted
mask are fetched, when one is first asked for, through the metadata fetcher
(resumed, cached). A member is looked up by the ``MaskPath`` of a mask row,
never extracted by its own name: the name is checked first (a plain file
name starting with its ImageID), only members at the zip's top or in one
plain folder count, the member's size is bounded, read with a bound whatever
its header says, and must be a PNG. A zip that cannot be had or read costs
its masks (named in the log and in ``errors``), never the crawl. Plain
Python; no Scrapy import.
"""

from __future__ import annotations

import logging
import re
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Protocol

from openimages_crawler.dataset.catalogue import RemoteFile
from openimages_crawler.dataset.fetch import MetadataFetcher
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.store.base import Store
from openimages_crawler.store.layout import METADATA_DIR, StoreLayout
from openimages_crawler.store.lock import StoreLocked, exclusive

logger = logging.getLogger(__name__)

# A mask PNG is tens of KB; a member past this is not a mask.
MAX_MASK_BYTES = 1 << 24
_PNG = b"\x89PNG\r\n\x1a\n"
# {ImageID}_{LabelName without "/"}_{BoxID}.png
_MASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.png")
# The one folder a zip may hold its masks in (``train-masks-0``).
_MEMBER_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def mask_name_ok(mask_path: str, image_id: str) -> bool:
    """A MaskPath usable as a file name: plain, a PNG, starting with its ImageID."""
    return bool(_MASK_NAME.fullmatch(mask_path)) and mask_path.startswith(f"{image_id}_") and ".." not in mask_path


class MaskPngs(Protocol):
    """Where the official PNG of a mask row is found."""

    def png(self, split: str, image_id: str, mask_path: str) -> bytes | None: ...


@dataclass
class _Zip:
    """One zip of masks, once opened (or found unusable: ``error``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)  # its fetch and its reads, one at a time
    archive: zipfile.ZipFile | None = None
    members: dict[str, zipfile.ZipInfo | None] = field(default_factory=dict)  # None: a name given twice
    error: str = ""


class MaskArchives:
    """A version's mask zips per split and first hex digit, each fetched the
    first time one of its masks is asked for (by any thread; other processes
    wait on the metadata cache's lock and find it there). They stay in the
    cache, as the CSVs do: another process of the run, or a later run, takes
    its masks from them without a download."""

    def __init__(self, fetcher: MetadataFetcher, archives: dict[str, dict[str, RemoteFile]]) -> None:
        self.fetcher = fetcher
        self.archives = archives
        self.lock = threading.Lock()  # guards ``zips`` only, never held during a fetch
        self.zips: dict[RemoteFile, _Zip] = {}
        self.closed = False

    @property
    def errors(self) -> list[str]:
        """Why zips could not be used (each said once in the log when it happened)."""
        return [each.error for each in self.zips.values() if each.error]

    def png(self, split: str, image_id: str, mask_path: str) -> bytes | None:
        """The mask's PNG, or ``None`` when its name is not a plain mask name,
        its zip cannot be had (``errors``) or has no such member, or the
        member is not a bounded PNG."""
        if not mask_name_ok(mask_path, image_id):
            return None
        remote = self.archives.get(split, {}).get(image_id[0].lower())
        if remote is None:
            return None
        with self.lock:
            if self.closed:
                return None
            entry = self.zips.setdefault(remote, _Zip())
        with entry.lock:
            if entry.archive is None and not entry.error:
                self._open(remote, entry)
            if entry.archive is None:
                return None
            return _member(entry.archive, entry.members.get(mask_path))

    def _open(self, remote: RemoteFile, entry: _Zip) -> None:
        """Fetch and open ``remote`` (under its entry's lock), or record why not."""
        path = self.fetcher.root / remote.path
        try:
            if not self.fetcher.download and not path.is_file():
                raise MetadataError(f"{remote.path} is not in the metadata cache and -a download_metadata=false")
            with exclusive(self.fetcher.root.parent, METADATA_DIR, self.fetcher.stop):
                path = self.fetcher.fetch(remote)
            entry.archive = zipfile.ZipFile(path)
            entry.members = _members(entry.archive)
        except (MetadataError, StoreLocked) as exc:
            entry.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure of a hostile zip: named, and fetched again next time
            if entry.archive is not None:
                entry.archive.close()
                entry.archive = None
            path.unlink(missing_ok=True)
            entry.error = f"{path}: not a readable zip of masks: {exc!r}"
        if entry.error:
            logger.error("Masks of %s left out: %s", remote.path, entry.error)
        else:
            logger.info("Taking masks from %s", path)

    def close(self) -> None:
        """Close the zips (each once its reader is done); later lookups find nothing."""
        with self.lock:
            self.closed = True
        for entry in self.zips.values():
            with entry.lock:
                if entry.archive is not None:
                    entry.archive.close()
                    entry.archive = None


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo | None]:
    """The zip's files by name: at its top or in one plain folder (as
    ``train-masks-0/…``); a name given twice is ambiguous (``None``), one
    anywhere else (absolute, ``..``, deeper) is not a member at all."""
    members: dict[str, zipfile.ZipInfo | None] = {}
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.is_dir() or len(parts) > 2 or (len(parts) == 2 and not _MEMBER_FOLDER.fullmatch(parts[0])):
            continue
        members[parts[-1]] = None if parts[-1] in members else info
    return members


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> bytes | None:
    """The member's bytes if it is a PNG within the bound (its header's size is not trusted)."""
    if info is None or info.file_size > MAX_MASK_BYTES:
        return None
    try:
        with archive.open(info) as source:
            data = source.read(MAX_MASK_BYTES + 1)
    except Exception:  # noqa: BLE001 - a bad CRC, a corrupt stream, encryption, an unknown method: no mask
        return None
    if len(data) > MAX_MASK_BYTES or not data.startswith(_PNG):
        return None
    return data


class StoredMasks:
    """The official masks a store holds already (``{split}/masks/{originals
    folder}/…``, written by an earlier run or this one), else ``fallback``'s."""

    def __init__(self, store: Store, layout: StoreLayout, fallback: MaskPngs | None = None) -> None:
        self.store = store
        self.layout = layout
        self.fallback = fallback

    def png(self, split: str, image_id: str, mask_path: str) -> bytes | None:
        if not mask_name_ok(mask_path, image_id):
            return None
        try:
            data = self.store.read(self.layout.mask_key(split, self.layout.originals_dir, image_id, mask_path),
                                   most=MAX_MASK_BYTES)
        except OSError:  # not there (or too large): from the zips
            data = b""
        if data.startswith(_PNG):
            return data
        return self.fallback.png(split, image_id, mask_path) if self.fallback is not None else None
