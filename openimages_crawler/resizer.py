"""Resizing a tree of images (``scrapy resize``): the same Pillow functions as
the crawl, over files instead of downloads. No Scrapy import.

The output tree mirrors the input tree; an output is ``{stem}.{ext}``, or
``{name}.{ext}`` when two inputs of one folder share a stem (``a.jpg`` and
``a.png``). Existing outputs are skipped, new ones are written through a
staging folder and renamed, unreadable inputs are reported, not fatal.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .imaging import REDUCING_GAP, ImageRejected, ResizeSpec, decode, resized_bytes
from .storage import AtomicWriter, nonempty

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


def find_jobs(in_dir: Path, out_dir: Path, ext: str) -> Iterator[ResizeJob | Path]:
    """Every image under ``in_dir`` with its output path, in a stable order;
    a file that is not an image is yielded as a bare ``Path``. Hidden folders
    and the output tree (if inside the input) are not entered; links to
    folders are not followed."""
    out_resolved = out_dir.resolve()
    for folder, subfolders, files in os.walk(in_dir):
        here = Path(folder)
        subfolders[:] = sorted(
            name for name in subfolders
            if not name.startswith(".") and (here / name).resolve() != out_resolved
        )
        images = sorted(name for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        for name in sorted(set(files) - set(images)):
            yield here / name
        stems = Counter(Path(name).stem for name in images)
        target_folder = out_dir / here.relative_to(in_dir)
        for name in images:
            stem = Path(name).stem
            target = target_folder / f"{stem if stems[stem] == 1 else name}.{ext}"
            yield ResizeJob(here / name, target)


def count_images(in_dir: Path, out_dir: Path) -> int:
    """How many images ``find_jobs`` will yield (for the progress total)."""
    return sum(isinstance(job, ResizeJob) for job in find_jobs(in_dir, out_dir, "x"))


class Resizer:
    """One worker's state: the output spec and an atomic writer in ``out_dir``."""

    def __init__(self, out_dir: Path, spec: ResizeSpec, max_pixels: int) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.writer = AtomicWriter(out_dir)
        self.writer.staging.mkdir(parents=True, exist_ok=True)

    def run(self, job: ResizeJob) -> JobResult:
        source = str(job.source)
        if nonempty(job.target):
            return JobResult(source, "skipped")
        try:
            data = job.source.read_bytes()
        except OSError as exc:
            return JobResult(source, "io_error", f"cannot read: {exc}")
        try:
            image = decode(data, self.max_pixels, reduce_for=(self.spec,))
        except ImageRejected as exc:
            return JobResult(source, exc.reason, exc.details, bytes_in=len(data))
        try:
            output = resized_bytes(image, self.spec, reducing_gap=REDUCING_GAP)
        except (OSError, ValueError) as exc:
            return JobResult(source, "corrupt", f"{image.format} could not be converted: {exc}", len(data))
        finally:
            image.close()
        try:
            self.writer.write(job.target, output)
        except OSError as exc:
            return JobResult(source, "io_error", f"cannot write {job.target}: {exc}", len(data))
        return JobResult(source, "ok", bytes_in=len(data), bytes_out=len(output))


# The worker process's Resizer (ProcessPoolExecutor initializer state).
_worker: Resizer | None = None


def init_worker(out_dir: Path, spec: ResizeSpec, max_pixels: int) -> None:
    global _worker
    _worker = Resizer(out_dir, spec, max_pixels)


def run_in_worker(job: ResizeJob) -> JobResult:
    assert _worker is not None, "init_worker first"
    return _worker.run(job)
