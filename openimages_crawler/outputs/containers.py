"""Container outputs: images in packs, the files of a packed container that
training jobs read.

An output (or the originals) whose ``container`` is ``webdataset``, ``parquet``
or ``tfrecord`` goes into ``{Subset}/{dir}/{NNNNNN}.tar|.parquet|.tfrecord``
instead of one file per image. Each process fills packs of its own in a
local staging folder; a pack is published whole when it holds
OPENIMAGES_SHARD_SIZE images or the crawl ends, and only then are its rows
recorded as successes (``PackSink.released``), so a kill -9 loses at most
the open pack of each process, whose rows are fetched again on resume.

Publishing, under the store's ``shards-{subset}-{folder}`` lock (a flock, or
a lease in a bucket, so processes, machines and runs take numbers one after
another):

1. the next number is the manifest's row count (gap-free: packs 0..n-1);
2. ``.index/{NNNNNN}.ids`` (the pack's ImageIDs) is written, then the pack;
3. ``shards.csv`` (the manifest) gets the pack's row.

A kill between steps is mended by the next publication: a pack present but
missing from the manifest is added to it (from its index); an index without
its pack is overwritten. ``holds`` (resume) answers from the indexes of the
published packs, read when the sink opens. No Scrapy import.

The names stores already hold keep the word packs had before: the manifest
``shards.csv`` and its ``shard`` column, the ``shards-…`` lock, the ``shards``
staging folder and OPENIMAGES_SHARD_SIZE.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from openimages_crawler.dataset.idset import IdSet
from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.outputs.formats import PACK_FORMATS, pack_format
from openimages_crawler.outputs.packs import Annotations, PackWriter, Sample
from openimages_crawler.store.base import Store
from openimages_crawler.store.local import LocalStore, remove_dead_staging, staging_folder

logger = logging.getLogger(__name__)

MANIFEST = "shards.csv"
MANIFEST_COLUMNS = ("shard", "count", "bytes", "first_image_id", "last_image_id", "sha256")
INDEX_DIR = ".index"
NUMBER_DIGITS = 6
INDEX_READERS = 16  # pack indexes read at once when an output is first met


def pack_name(number: int, suffix: str) -> str:
    return f"{number:0{NUMBER_DIGITS}d}{suffix}"


@dataclass
class OpenPack:
    """A pack being filled: its staging file, writer and ImageIDs so far."""

    path: Path
    writer: PackWriter
    ids: list[str] = field(default_factory=list)


LockFactory = Callable[[str], AbstractContextManager[None]]


class PackSink:
    """An output written as packs of ``container`` under ``{Subset}/{folder}/``."""

    def __init__(self, store: Store, scratch: Path, folder: str, container: str, pack_size: int,
                 lock: LockFactory) -> None:
        self.store = store
        self.scratch = scratch  # a local folder of the records, for the open packs
        self.folder = folder
        self.format = pack_format(container)
        self.pack_size = pack_size
        self.lock = lock  # the store's lock of a name, held around a publication
        self.open_packs: dict[str, OpenPack] = {}  # by subset
        self.held: dict[str, IdSet] = {}  # by subset, the ImageIDs of published packs
        self.published: list[str] = []  # tickets of the packs published since the last ``released``
        self.mutex = threading.Lock()
        self.serial = 0

    # --- resume ---------------------------------------------------------------

    def base(self, subset: str) -> str:
        """The folder of a subset's packs (the store's root for ``scrapy pack``)."""
        return join(subset, self.folder)

    def holds(self, row: ImageRow, ext: str) -> bool:
        held = self.held.get(row.subset)
        if held is None:
            held = self.held[row.subset] = self._read_held(row.subset)
        return row.image_id in held

    def _read_held(self, subset: str) -> IdSet:
        """The ImageIDs of the packs published so far (their indexes, read
        INDEX_READERS at a time: a bucket answers each in a round trip)."""
        base = self.base(subset)
        names = [row["shard"] for row in read_manifest(self.store, base)]
        with ThreadPoolExecutor(max_workers=INDEX_READERS, thread_name_prefix="openimages-index") as pool:
            found = list(pool.map(lambda name: IdSet(read_index(self.store, base, name)), names))
        return IdSet.union(found)

    # --- writing ----------------------------------------------------------------

    def write(self, row: ImageRow, ext: str, data: bytes, size: tuple[int, int] = (0, 0),
              annotations: Annotations | None = None) -> str:
        """Add the row's image (and its labels and boxes, if annotations are
        written) to its subset's open pack; the pack's key to wait for
        (``released`` names it once it is published)."""
        with self.mutex:
            sample = Sample(row.image_id, data, ext, size[0], size[1], dict(row.fields), annotations)
            pack = self.open_packs.get(row.subset)
            if pack is None:
                pack = self.open_packs[row.subset] = self._open_pack(sample)
            pack.writer.add(sample)
            pack.ids.append(row.image_id)
            ticket = f"{self.base(row.subset)}#{pack.path.name}"
            full = self.open_packs.pop(row.subset) if len(pack.ids) >= self.pack_size else None
        if full is not None:  # outside the mutex: the other workers go on filling the next one
            self._publish(row.subset, full)
        return ticket

    def _open_pack(self, first: Sample) -> OpenPack:
        """A new pack in staging; ``first`` sets its columns (a Parquet schema's)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.serial += 1
        path = self.scratch / f"{self.folder}-{self.serial}{self.format.suffix}"
        return OpenPack(path, self.format.writer(path, first))

    def _publish(self, subset: str, pack: OpenPack) -> None:
        pack.writer.close()
        base = self.base(subset)
        ids = tuple(pack.ids)
        digest, size = file_digest(pack.path)
        with self.lock(f"shards-{subset}-{self.folder}"):
            manifest = read_manifest(self.store, base)
            name = pack_name(len(manifest), self.format.suffix)
            write_index(self.store, base, name, ids)
            self.store.publish(pack.path, join(base, name))
            manifest.append({"shard": name, "count": str(len(ids)), "bytes": str(size),
                             "first_image_id": ids[0], "last_image_id": ids[-1], "sha256": digest})
            write_manifest(self.store, base, manifest)
        logger.info("%s/%s: %d images", base, name, len(ids))
        with self.mutex:
            if subset in self.held:
                self.held[subset] = IdSet.union([self.held[subset], IdSet(ids)])
            self.published.append(f"{base}#{pack.path.name}")

    def released(self) -> list[str]:
        """The tickets of the packs published since the last call."""
        with self.mutex:
            done, self.published = self.published, []
        return done

    def close(self) -> None:
        """Publish every open pack (a stop's last packs are smaller)."""
        with self.mutex:
            packs, self.open_packs = self.open_packs, {}
        for subset, pack in packs.items():
            self._publish(subset, pack)
        try:
            self.scratch.rmdir()  # only when empty
        except OSError:
            pass


def read_manifest(store: Store, base: str) -> list[dict[str, str]]:
    """``{base}/shards.csv``'s rows, with a pack that a kill left out of it
    (published, its row not yet added) added back from its index."""
    try:
        text = store.read(join(base, MANIFEST)).decode("utf-8")
    except OSError:
        text = ""
    rows = list(csv.DictReader(io.StringIO(text, newline=""))) if text else []
    while True:
        suffix = Path(rows[0]["shard"]).suffix if rows else None
        suffixes = [suffix] if suffix else [one.suffix for one in PACK_FORMATS]
        candidates = [pack_name(len(rows), one) for one in suffixes]
        found = next((name for name in candidates if store.exists(join(base, name))), None)
        if found is None:
            return rows
        ids = read_index(store, base, found)
        digest, size = object_digest(store, join(base, found))
        rows.append({"shard": found, "count": str(len(ids)), "bytes": str(size),
                     "first_image_id": ids[0] if ids else "", "last_image_id": ids[-1] if ids else "",
                     "sha256": digest})


def is_container(store: LocalStore, subset: str, folder: str) -> bool:
    """Whether a subset's output is stored in packs (its manifest is there), not as files."""
    return store.path(join(subset, folder, MANIFEST)).is_file()


def write_manifest(store: Store, base: str, rows: list[dict[str, str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    store.write(join(base, MANIFEST), out.getvalue().encode("utf-8"))


def join(*parts: str) -> str:
    """A key from its non-empty parts."""
    return "/".join(part for part in parts if part)


def index_key(base: str, name: str) -> str:
    return join(base, INDEX_DIR, f"{Path(name).stem}.ids")


def write_index(store: Store, base: str, name: str, ids: tuple[str, ...]) -> None:
    store.write(index_key(base, name), ("\n".join(ids) + "\n").encode("utf-8"))


def read_index(store: Store, base: str, name: str) -> list[str]:
    try:
        return store.read(index_key(base, name)).decode("utf-8").splitlines()
    except OSError:
        return []


def file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), path.stat().st_size


def object_digest(store: Store, key: str) -> tuple[str, int]:
    data = store.read(key)
    return hashlib.sha256(data).hexdigest(), len(data)


def scratch_folder(records: Path) -> Path:
    """This process's folder for open packs, in the records (a dead process's is removed)."""
    remove_dead_staging(records)
    return staging_folder(records, "shards")
