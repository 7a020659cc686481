"""Resizing a tree of images (``scrapy resize``): the crawl's own CPU stage
(``imaging.process.process_image``), over files instead of downloads. No Scrapy import.

The output tree mirrors the input tree; an output is ``{stem}.{ext}``, or
``{name}.{ext}`` when two inputs of one folder share a stem (``a.jpg`` and
``a.png``). Existing outputs are skipped, new ones are written through a
staging folder and renamed, unreadable inputs are reported, not fatal.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from openimages_crawler.imaging.pillow import ResizeSpec
from openimages_crawler.imaging.process import Expected, process_image
from openimages_crawler.reasons import CORRUPT, IO_ERROR, TOO_LARGE
from openimages_crawler.store.local import LocalStore

# Files taken as images (case-insensitive); others are counted and left alone.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True, slots=True)
class ResizeJob:
    source: Path
    target: Path


@dataclass(frozen=True, slots=True)
class JobResult:
    source: str
    status: str  # "ok", "skipped" (output there) or a FailureReason
    details: str = ""
    bytes_in: int = 0
    bytes_out: int = 0


def find_jobs(
    in_dir: Path, out_dir: Path, ext: str, onerror: Callable[[OSError], None] | None = None
) -> Iterator[ResizeJob | Path]:
    """Every image under ``in_dir`` with its output path, in a stable order;
    anything else (other extensions, FIFOs, devices, broken links) is yielded
    as a bare ``Path``. Hidden folders and the output tree (if inside the
    input) are not entered; links to folders are not followed; a folder that
    cannot be listed goes to ``onerror``."""
    out_resolved = out_dir.resolve()
    for folder, subfolders, files in os.walk(in_dir, onerror=onerror):
        here = Path(folder)
        subfolders[:] = sorted(
            name for name in subfolders
            if not name.startswith(".") and (here / name).resolve() != out_resolved
        )
        images = sorted(
            name for name in files
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and _regular_file(here / name)
        )
        for name in sorted(set(files) - set(images)):
            yield here / name
        target_folder = out_dir / here.relative_to(in_dir)
        for name, output in output_names(images, ext).items():
            yield ResizeJob(here / name, target_folder / output)


def output_names(names: list[str], ext: str) -> dict[str, str]:
    """Output file names for the images of one folder: ``{stem}.{ext}``, or
    ``{name}.{ext}`` for every name whose output would clash with another's."""
    chosen = {name: f"{Path(name).stem}.{ext}" for name in names}
    while True:
        uses = Counter(chosen.values())
        clashing = [name for name, output in chosen.items() if uses[output] > 1]
        if not clashing:
            return chosen
        for name in clashing:  # full names are unique in a folder, so this ends
            chosen[name] = f"{name}.{ext}"


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a broken link
        return False


def count_images(in_dir: Path, out_dir: Path) -> int:
    """How many images ``find_jobs`` will yield (for the progress total)."""
    return sum(isinstance(job, ResizeJob) for job in find_jobs(in_dir, out_dir, "x"))


@dataclass(frozen=True, slots=True)
class ResizeOptions:
    spec: ResizeSpec
    max_pixels: int  # OPENIMAGES_MAX_PIXELS
    max_decode_bytes: int  # OPENIMAGES_MAX_DECODE_BYTES
    max_bytes: int  # DOWNLOAD_MAXSIZE: larger files are not read
    fast: bool = True  # OPENIMAGES_FAST_RESIZE


class Resizer:
    """One worker's state: the options and the output folder as a store."""

    def __init__(self, out_dir: Path, options: ResizeOptions) -> None:
        self.options = options
        self.out_dir = out_dir
        self.store = LocalStore(str(out_dir))
        self.store.staging.mkdir(parents=True, exist_ok=True)

    def run(self, job: ResizeJob) -> JobResult:
        """Resize one file; any error becomes a failure result, never an exception."""
        try:
            return self._run(job)
        except MemoryError:
            return JobResult(str(job.source), TOO_LARGE, "out of memory while resizing")
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the tree
            return JobResult(str(job.source), CORRUPT, f"{type(exc).__name__}: {exc}")

    def _run(self, job: ResizeJob) -> JobResult:
        source, options = str(job.source), self.options
        key = job.target.relative_to(self.out_dir).as_posix()
        if self.store.stat(key):  # an output there, not empty
            return JobResult(source, "skipped")
        try:
            size = job.source.stat().st_size
            if size > options.max_bytes:
                return JobResult(source, TOO_LARGE, f"{size} bytes, over DOWNLOAD_MAXSIZE ({options.max_bytes})")
            data = job.source.read_bytes()
        except OSError as exc:
            return JobResult(source, IO_ERROR, f"cannot read: {exc}")
        # The crawl's own CPU stage: no size or MD5 to check, one output.
        outcome = process_image(data, Expected(), (options.spec,), max_pixels=options.max_pixels,
                                max_decode_bytes=options.max_decode_bytes, fast=options.fast)
        if not outcome.ok:
            assert outcome.reason is not None
            return JobResult(source, outcome.reason, outcome.details, bytes_in=len(data))
        (encoded,) = outcome.encoded
        try:
            self.store.write(key, encoded)
        except OSError as exc:
            return JobResult(source, IO_ERROR, f"cannot write to the store: {exc}", bytes_in=len(data))
        return JobResult(source, "ok", bytes_in=len(data), bytes_out=len(encoded))


# The worker process's Resizer (ProcessPoolExecutor initializer state).
_worker: Resizer | None = None


def init_worker(out_dir: Path, options: ResizeOptions) -> None:
    global _worker
    _worker = Resizer(out_dir, options)


def run_in_worker(job: ResizeJob) -> JobResult:
    assert _worker is not None, "init_worker first"
    return _worker.run(job)
