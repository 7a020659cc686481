"""The images an output of a store holds, each with its size and how it was
made: files in the layout, or samples in WebDataset, Parquet or TFRecord shards."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from openimages_crawler.imaging.pillow import Geometry, ResizeSpec, read_provenance
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore
from openimages_crawler.outputs.containers import MANIFEST, SUFFIXES, join, read_manifest

IMAGE_EXTENSIONS = ("jpg", "png", "webp")


@dataclass(frozen=True, slots=True)
class StoredImage:
    """One stored image of an output."""

    image_id: str
    path: str  # relative to the subset's folder: {dir}/{prefix}/{ImageID}.{ext}, or {dir}/{shard}#{ImageID}.{ext}
    width: int
    height: int
    geometry: Geometry | None  # None: stored as downloaded (an original), its boxes as the files give them
    spec: ResizeSpec | None
    shard: str = ""  # the shard holding it, for a container output

    @property
    def in_shard(self) -> bool:
        return bool(self.shard)


def is_container(store: LocalStore, subset: str, folder: str) -> bool:
    return store.path(join(subset, folder, MANIFEST)).is_file()


def stored_images(store: LocalStore, layout: StoreLayout, subset: str, folder: str,
                  wanted: Iterable[str]) -> Iterator[StoredImage]:
    """The stored images of ``wanted`` (ImageIDs recorded as successes), in
    that order for files, in shard order for a container; ones not found or
    not readable are left out (the caller counts them)."""
    if is_container(store, subset, folder):
        keep = set(wanted)
        for image in _shard_images(store, subset, folder):
            if image.image_id in keep:
                yield image
        return
    for image_id in wanted:
        for ext in IMAGE_EXTENSIONS:
            key = layout.image_key(subset, folder, image_id, ext)
            path = store.path(key)
            if path.is_file():
                found = _described(image_id, path, key.split("/", 1)[1])
                if found is not None:
                    yield found
                break


def _described(image_id: str, source: Path | bytes, relative: str, shard: str = "") -> StoredImage | None:
    """The image's size and provenance from its header (no pixel is decoded)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            provenance = read_provenance(image)
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    geometry, spec = provenance if provenance is not None else (None, None)
    return StoredImage(image_id, relative, width, height, geometry, spec, shard)


def _shard_images(store: LocalStore, subset: str, folder: str) -> Iterator[StoredImage]:
    base = join(subset, folder)
    for row in read_manifest(store, base):
        name = row["shard"]
        path = store.path(join(base, name))
        for image_id, ext, data in _samples(path):
            found = _described(image_id, data, f"{folder}/{name}#{image_id}.{ext}", name)
            if found is not None:
                yield found


def _samples(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """(ImageID, extension, image bytes) of each sample of a shard."""
    if path.suffix == SUFFIXES["webdataset"]:
        with tarfile.open(path) as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if member.isfile() and ext in IMAGE_EXTENSIONS:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield stem, ext, handle.read()
    elif path.suffix == SUFFIXES["parquet"]:
        import pyarrow.parquet as pq  # noqa: PLC0415 (only parquet outputs need it)

        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["ImageID", "format", "image"]):
            yield from zip(*(batch.column(name).to_pylist() for name in ("ImageID", "format", "image")), strict=True)
    else:
        from tfrecord import example_pb2  # noqa: PLC0415 (only tfrecord outputs need it)
        from tfrecord.reader import tfrecord_iterator  # noqa: PLC0415

        for raw in tfrecord_iterator(str(path)):
            example = example_pb2.Example()
            example.ParseFromString(raw)
            feature = example.features.feature
            yield (feature["image/source_id"].bytes_list.value[0].decode(),
                   feature["image/format"].bytes_list.value[0].decode(),
                   feature["image/encoded"].bytes_list.value[0])
