"""Packing a tree of images into packs (``scrapy pack``): a store's output, or
any folder of images (an extracted CVDF tarball), as WebDataset, Parquet or
TFRecord packs with the crawl's manifest, numbering and resume
(``outputs.containers``). No network, no Scrapy import.

The sample key is the file's stem (an ImageID in a store's output). Every
file is read and decoded whole before it is packed (a truncated file or a
pixel bomb is refused, as in a crawl); a name that cannot be a key (two
files with one stem, characters a WebDataset reader would split on) is
refused too. Images already in a published pack are skipped, so a rerun
after a kill packs only what is missing.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.imaging.pillow import ImageRejected, decode, full_size
from openimages_crawler.imaging.tree import ResizeJob, find_jobs
from openimages_crawler.reasons import IO_ERROR, TOO_LARGE

# What a key may be: a WebDataset reader splits a name at its first dot, and
# the packs' indexes hold one key a line.
KEY = re.compile(r"[A-Za-z0-9_\-]+")
BAD_NAME = "bad_name"  # pack's own failure (the FailureReasons are a crawl's)
FORMAT_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True, slots=True)
class PackOptions:
    max_pixels: int  # OPENIMAGES_MAX_PIXELS
    max_decode_bytes: int  # OPENIMAGES_MAX_DECODE_BYTES
    max_bytes: int  # DOWNLOAD_MAXSIZE: larger files are not read


@dataclass(frozen=True, slots=True)
class Checked:
    """One file, read and decoded: ready to pack, or why not."""

    path: Path
    key: str
    status: str  # "ok" or a FailureReason (or BAD_NAME)
    details: str = ""
    data: bytes = b""
    ext: str = ""
    size: tuple[int, int] = (0, 0)


def find_images(in_dir: Path, out_dir: Path) -> Iterator[Path]:
    """The images under ``in_dir`` in a stable order (``scrapy resize``'s walk:
    no hidden folders, not the output folder, no links to folders)."""
    for job in find_jobs(in_dir, out_dir, "x"):
        if isinstance(job, ResizeJob):
            yield job.source


def check_image(path: Path, key: str, options: PackOptions) -> Checked:
    """Read and decode ``path`` whole (in a worker thread); never raises."""
    if not KEY.fullmatch(key):
        return Checked(path, key, BAD_NAME, f"{key!r} is not a sample key (letters, digits, _ and - only)")
    try:
        size = path.stat().st_size
        if size > options.max_bytes:
            return Checked(path, key, TOO_LARGE, f"{size} bytes, over DOWNLOAD_MAXSIZE ({options.max_bytes})")
        data = path.read_bytes()
    except OSError as exc:
        return Checked(path, key, IO_ERROR, f"cannot read: {exc}")
    try:
        image = decode(data, options.max_pixels, max_decode_bytes=options.max_decode_bytes)
    except ImageRejected as exc:
        return Checked(path, key, exc.reason, exc.details)
    try:
        ext = FORMAT_EXTS.get(str(image.format), path.suffix.lower().lstrip("."))
        return Checked(path, key, "ok", data=data, ext=ext, size=full_size(image))
    finally:
        image.close()


def read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """A CSV's rows by ImageID (a store's images-success.csv, say): each sample's metadata."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["ImageID"]: row for row in csv.DictReader(handle) if row.get("ImageID")}


def sample_row(checked: Checked, in_dir: Path, metadata: dict[str, dict[str, str]] | None) -> ImageRow:
    """The row a pack stores for a file: its metadata row if given, else its key and path."""
    fields = (metadata or {}).get(checked.key) or {
        "ImageID": checked.key, "Path": checked.path.relative_to(in_dir).as_posix()}
    return ImageRow(fields=dict(fields), image_id=checked.key, url="", size=0, md5=b"", subset="")


def checked_in_order(paths: Iterator[Path], options: PackOptions, workers: int) -> Iterator[Checked]:
    """``check_image`` of each path on ``workers`` threads (Pillow decodes
    without the GIL), yielded in the input's order, a few ahead at most."""
    ahead: list[Future[Checked]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openimages-pack") as pool:
        for path in paths:
            ahead.append(pool.submit(check_image, path, path.stem, options))
            while len(ahead) >= workers * 4:
                yield ahead.pop(0).result()
        for future in ahead:
            yield future.result()
