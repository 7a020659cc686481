"""The images an output of a store holds, each with its size and how it was
made: files in the layout, or samples in WebDataset, Parquet or TFRecord packs."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from openimages_crawler.imaging.pillow import Geometry, ResizeSpec, read_provenance
from openimages_crawler.outputs.containers import is_container, join, read_manifest
from openimages_crawler.outputs.formats import pack_format_of
from openimages_crawler.outputs.packs import IMAGE_EXTENSIONS
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore


@dataclass(frozen=True, slots=True)
class StoredImage:
    """One stored image of an output."""

    image_id: str
    path: str  # relative to the subset's folder: {dir}/{prefix}/{ImageID}.{ext}, or {dir}/{pack}#{ImageID}.{ext}
    width: int
    height: int
    geometry: Geometry | None  # None: stored as downloaded (an original), its boxes as the files give them
    spec: ResizeSpec | None
    pack: str = ""  # the pack holding it, for a container output

    @property
    def in_pack(self) -> bool:
        return bool(self.pack)


def stored_images(store: LocalStore, layout: StoreLayout, subset: str, folder: str,
                  wanted: Iterable[str]) -> Iterator[StoredImage]:
    """The stored images of ``wanted`` (ImageIDs recorded as successes), in
    that order for files, in pack order for a container; ones not found or
    not readable are left out (the caller counts them)."""
    if is_container(store, subset, folder):
        keep = set(wanted)
        for image in _packed_images(store, subset, folder):
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


def _described(image_id: str, source: Path | bytes, relative: str, pack: str = "") -> StoredImage | None:
    """The image's size and provenance from its header (no pixel is decoded)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            provenance = read_provenance(image)
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    geometry, spec = provenance if provenance is not None else (None, None)
    return StoredImage(image_id, relative, width, height, geometry, spec, pack)


def _packed_images(store: LocalStore, subset: str, folder: str) -> Iterator[StoredImage]:
    base = join(subset, folder)
    for row in read_manifest(store, base):
        name = row["shard"]
        path = store.path(join(base, name))
        for image_id, ext, data in pack_format_of(name).reader(path):
            found = _described(image_id, data, f"{folder}/{name}#{image_id}.{ext}", name)
            if found is not None:
                yield found
