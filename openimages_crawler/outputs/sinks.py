"""Output sinks: where one output's encoded images go.

What img2dataset's writer classes are: the crawl hands each sink the bytes of
a row's image and asks it, on a rerun, whether it already holds a row. Files
in the store's layout are here; container formats (WebDataset, Parquet,
TFRecord packs) are ``outputs.containers.PackSink``. Whatever the sink, the
results ledger stays the crawl's checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.store.base import Store
from openimages_crawler.store.layout import StoreLayout

if TYPE_CHECKING:
    from openimages_crawler.outputs.containers import Annotations


class OutputSink(Protocol):
    """One resized output of every image (or the originals in a container;
    original files are written byte-exact by the pipeline itself)."""

    def holds(self, row: ImageRow, ext: str) -> bool:
        """Whether the row's image is already stored complete (resume)."""

    def write(self, row: ImageRow, ext: str, data: bytes, size: tuple[int, int] = (0, 0),
              annotations: Annotations | None = None) -> str | None:
        """Store the row's encoded image (``size``: its width and height;
        ``annotations``: its labels and boxes in that image, which containers
        carry); the open pack it waits in, if any; ``OSError`` when the store cannot."""

    def close(self) -> None:
        """After the last write of the crawl."""


class FilesSink:
    """One file per image: ``{Subset}/{folder}/{prefix}/{ImageID}.{ext}`` in the store."""

    def __init__(self, store: Store, layout: StoreLayout, folder: str) -> None:
        self.store = store
        self.layout = layout
        self.folder = folder

    def key(self, row: ImageRow, ext: str) -> str:
        return self.layout.image_key(row.subset, self.folder, row.image_id, ext)

    def holds(self, row: ImageRow, ext: str) -> bool:
        return bool(self.store.stat(self.key(row, ext)))  # an empty file is not an image

    def write(self, row: ImageRow, ext: str, data: bytes, size: tuple[int, int] = (0, 0),
              annotations: Annotations | None = None) -> None:
        self.store.write(self.key(row, ext), data)

    def close(self) -> None:
        """Every file is complete when written."""
