"""Container outputs: images packed into shards that training jobs read.

An output (or the originals) whose ``container`` is ``webdataset``, ``parquet``
or ``tfrecord`` goes into ``{Subset}/{dir}/{NNNNNN}.tar|.parquet|.tfrecord``
instead of one file per image. Each process fills shards of its own in a
local staging folder; a shard is published whole when it holds
OPENIMAGES_SHARD_SIZE images or the crawl ends, and only then are its rows
recorded as successes (``ShardSink.released``), so a kill -9 loses at most
the open shard of each process, whose rows are fetched again on resume.

Publishing, under the store's ``shards`` lock (a flock, or a lease in a
bucket, so processes, machines and runs take numbers one after another):

1. the next number is the manifest's row count (gap-free: shards 0..n-1);
2. ``.index/{NNNNNN}.ids`` (the shard's ImageIDs) is written, then the shard;
3. ``shards.csv`` (the manifest) gets the shard's row.

A kill between steps is mended by the next publication: a shard present but
missing from the manifest is added to it (from its index); an index without
its shard is overwritten. ``holds`` (resume) answers from the indexes of the
published shards, read when the sink opens. No Scrapy import.
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
from openimages_crawler.store.base import Store
from openimages_crawler.store.local import LocalStore, remove_dead_staging, staging_folder
from openimages_crawler.outputs.formats import SHARD_FORMATS, shard_format
from openimages_crawler.outputs.shard_files import Annotations, Sample, ShardWriter

logger = logging.getLogger(__name__)

MANIFEST = "shards.csv"
MANIFEST_COLUMNS = ("shard", "count", "bytes", "first_image_id", "last_image_id", "sha256")
INDEX_DIR = ".index"
NUMBER_DIGITS = 6
INDEX_READERS = 16  # shard indexes read at once when an output is first met


def shard_name(number: int, suffix: str) -> str:
    return f"{number:0{NUMBER_DIGITS}d}{suffix}"


@dataclass
class OpenShard:
    """A shard being filled: its staging file, writer and ImageIDs so far."""

    path: Path
    writer: ShardWriter
    ids: list[str] = field(default_factory=list)


LockFactory = Callable[[str], AbstractContextManager[None]]


class ShardSink:
    """An output written as shards of ``container`` under ``{Subset}/{folder}/``."""

    def __init__(self, store: Store, scratch: Path, folder: str, container: str, shard_size: int,
                 lock: LockFactory) -> None:
        self.store = store
        self.scratch = scratch  # a local folder of the records, for the open shards
        self.folder = folder
        self.format = shard_format(container)
        self.shard_size = shard_size
        self.lock = lock  # the store's lock of a name, held around a publication
        self.open_shards: dict[str, OpenShard] = {}  # by subset
        self.held: dict[str, IdSet] = {}  # by subset, the ImageIDs of published shards
        self.published: list[str] = []  # tickets of the shards published since the last ``released``
        self.mutex = threading.Lock()
        self.serial = 0

    # --- resume ---------------------------------------------------------------

    def base(self, subset: str) -> str:
        """The folder of a subset's shards (the store's root for ``scrapy pack``)."""
        return join(subset, self.folder)

    def holds(self, row: ImageRow, ext: str) -> bool:
        held = self.held.get(row.subset)
        if held is None:
            held = self.held[row.subset] = self._read_held(row.subset)
        return row.image_id in held

    def _read_held(self, subset: str) -> IdSet:
        """The ImageIDs of the shards published so far (their indexes, read
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
        written) to its subset's open shard; the shard's key to wait for
        (``released`` names it once it is published)."""
        with self.mutex:
            sample = Sample(row.image_id, data, ext, size[0], size[1], dict(row.fields), annotations)
            shard = self.open_shards.get(row.subset)
            if shard is None:
                shard = self.open_shards[row.subset] = self._open_shard(sample)
            shard.writer.add(sample)
            shard.ids.append(row.image_id)
            ticket = f"{self.base(row.subset)}#{shard.path.name}"
            full = self.open_shards.pop(row.subset) if len(shard.ids) >= self.shard_size else None
        if full is not None:  # outside the mutex: the other workers go on filling the next one
            self._publish(row.subset, full)
        return ticket

    def _open_shard(self, first: Sample) -> OpenShard:
        """A new shard in staging; ``first`` sets its columns (a Parquet schema's)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.serial += 1
        path = self.scratch / f"{self.folder}-{self.serial}{self.format.suffix}"
        return OpenShard(path, self.format.writer(path, first))

    def _publish(self, subset: str, shard: OpenShard) -> None:
        shard.writer.close()
        base = self.base(subset)
        ids = tuple(shard.ids)
        digest, size = file_digest(shard.path)
        with self.lock(f"shards-{subset}-{self.folder}"):
            manifest = read_manifest(self.store, base)
            name = shard_name(len(manifest), self.format.suffix)
            write_index(self.store, base, name, ids)
            self.store.publish(shard.path, join(base, name))
            manifest.append({"shard": name, "count": str(len(ids)), "bytes": str(size),
                             "first_image_id": ids[0], "last_image_id": ids[-1], "sha256": digest})
            write_manifest(self.store, base, manifest)
        logger.info("%s/%s: %d images", base, name, len(ids))
        with self.mutex:
            if subset in self.held:
                self.held[subset] = IdSet.union([self.held[subset], IdSet(ids)])
            self.published.append(f"{base}#{shard.path.name}")

    def released(self) -> list[str]:
        """The tickets of the shards published since the last call."""
        with self.mutex:
            done, self.published = self.published, []
        return done

    def close(self) -> None:
        """Publish every open shard (a stop's last shards are smaller)."""
        with self.mutex:
            shards, self.open_shards = self.open_shards, {}
        for subset, shard in shards.items():
            self._publish(subset, shard)
        try:
            self.scratch.rmdir()  # only when empty
        except OSError:
            pass


def read_manifest(store: Store, base: str) -> list[dict[str, str]]:
    """``{base}/shards.csv``'s rows, with a shard that a kill left out of it
    (published, its row not yet added) added back from its index."""
    try:
        text = store.read(join(base, MANIFEST)).decode("utf-8")
    except OSError:
        text = ""
    rows = list(csv.DictReader(io.StringIO(text, newline=""))) if text else []
    while True:
        suffix = Path(rows[0]["shard"]).suffix if rows else None
        suffixes = [suffix] if suffix else [shards.suffix for shards in SHARD_FORMATS]
        candidates = [shard_name(len(rows), one) for one in suffixes]
        found = next((name for name in candidates if store.exists(join(base, name))), None)
        if found is None:
            return rows
        ids = read_index(store, base, found)
        digest, size = object_digest(store, join(base, found))
        rows.append({"shard": found, "count": str(len(ids)), "bytes": str(size),
                     "first_image_id": ids[0] if ids else "", "last_image_id": ids[-1] if ids else "",
                     "sha256": digest})


def is_container(store: LocalStore, subset: str, folder: str) -> bool:
    """Whether a subset's output is stored in shards (its manifest is there), not as files."""
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
    """This process's folder for open shards, in the records (a dead process's is removed)."""
    remove_dead_staging(records)
    return staging_folder(records, "shards")
