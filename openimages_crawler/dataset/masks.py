"""The official instance-mask PNGs of selected images, out of V5's mask zips.

The masks of a split come in 16 zips by the ImageID's first hex digit (the
train ones are gigabytes each), so only the zips whose digit holds a wanted
mask are fetched, when one is first asked for, through the metadata fetcher
(resumed, cached). A member is
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
from typing import Protocol

from openimages_crawler.dataset.catalogue import RemoteFile
from openimages_crawler.dataset.fetch import FetchStopped, MetadataFetcher
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


def mask_name_ok(mask_path: str, image_id: str) -> bool:
    """A MaskPath usable as a file name: plain, a PNG, starting with its ImageID."""
    return bool(_MASK_NAME.fullmatch(mask_path)) and mask_path.startswith(f"{image_id}_") and ".." not in mask_path


class MaskPngs(Protocol):
    """Where the official PNG of a mask row is found."""

    def png(self, split: str, image_id: str, mask_path: str) -> bytes | None: ...


class MaskArchives:
    """A version's mask zips per split and first hex digit, each fetched the
    first time one of its masks is asked for (by any thread), and deleted at
    ``close`` unless the archives are kept (``OPENIMAGES_SAVE_TARBALLS``)."""

    def __init__(self, fetcher: MetadataFetcher, archives: dict[str, dict[str, RemoteFile]]) -> None:
        self.fetcher = fetcher
        self.archives = archives
        self.lock = threading.Lock()  # the process's threads; the cache's lock keeps other processes out
        self.opened: dict[RemoteFile, tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo], threading.Lock]] = {}
        self.fetched: list[str] = []  # the zips opened, for the log

    def png(self, split: str, image_id: str, mask_path: str) -> bytes | None:
        """The mask's PNG, or ``None`` when its name is not a plain mask name,
        its zip has no such member, or the member is not a bounded PNG. A zip
        that cannot be fetched or read is a ``MetadataError``."""
        if not mask_name_ok(mask_path, image_id):
            return None
        remote = self.archives.get(split, {}).get(image_id[0].lower())
        if remote is None:
            return None
        archive, members, lock = self._open(remote)
        with lock:  # one member read at a time per zip
            return _member(archive, members.get(mask_path))

    def _open(self, remote: RemoteFile) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo], threading.Lock]:
        with self.lock:  # one fetch per zip: other threads wait for it
            if remote not in self.opened:
                if not self.fetcher.download and not (self.fetcher.root / remote.path).is_file():
                    raise MetadataError(f"{remote.path} is not in the metadata cache and -a download_metadata=false")
                try:
                    with exclusive(self.fetcher.root.parent, METADATA_DIR, self.fetcher.stop):
                        path = self.fetcher.fetch(remote)
                except StoreLocked as exc:
                    raise FetchStopped(str(exc)) from None
                try:
                    archive = zipfile.ZipFile(path)
                    members = {posixpath.basename(info.filename): info for info in archive.infolist()
                               if not info.is_dir()}
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
                    path.unlink(missing_ok=True)  # fetched again next time
                    raise MetadataError(f"{path}: not a readable zip of masks: {exc}") from exc
                self.opened[remote] = (archive, members, threading.Lock())
                self.fetched.append(remote.path)
            return self.opened[remote]

    def close(self) -> None:
        """Close the zips; delete them unless they are kept, as the tarballs are."""
        with self.lock:
            for remote, (archive, _, _) in self.opened.items():
                archive.close()
                if not self.fetcher.keep_archives:
                    (self.fetcher.root / remote.path).unlink(missing_ok=True)
            self.opened.clear()


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo | None) -> bytes | None:
    """The member's bytes if it is a PNG within the bound (its header's size is not trusted)."""
    if info is None or info.file_size > MAX_MASK_BYTES:
        return None
    try:
        with archive.open(info) as source:
            data = source.read(MAX_MASK_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError):  # a bad CRC, an unknown method
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
