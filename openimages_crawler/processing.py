"""The CPU stage for one downloaded image: verify, decode, resize, store.

Runs in a worker thread (Pillow and hashlib release the GIL), never on the
event loop. No Scrapy import: the function takes bytes and paths and returns
an outcome.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from .imaging import REDUCING_GAP, ImageRejected, ResizeSpec, decode, resized_set
from .storage import AtomicWriter


@dataclass(frozen=True, slots=True)
class Expected:
    """What the metadata promises about the bytes; ``None`` means not checked."""

    size: int | None = None
    md5: bytes | None = None  # the 16-byte binary digest


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """Which files to write for one image; ``None`` means not wanted."""

    original: Path | None = None
    resized: tuple[tuple[Path, ResizeSpec], ...] = ()  # every output still to write
    # Reduced JPEG decode and pre-reduction before the final filter
    # (imaging.REDUCING_GAP); False is a full decode and a plain resize.
    fast: bool = True
    rotation: int = 0  # V4+ Rotation for files without an EXIF orientation
    record_md5: bool = False  # the results need the MD5 even when nothing checks it

    @property
    def specs(self) -> tuple[ResizeSpec, ...]:
        return tuple(spec for _, spec in self.resized)


@dataclass(slots=True)
class Outcome:
    """Result of processing: ``reason`` is ``None`` on success."""

    reason: str | None = None
    details: str = ""
    bytes_written: int = 0
    md5: bytes | None = None  # of the bytes processed, on success
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is None


def b64_md5(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def verify_bytes(body: bytes, expected: Expected, actual: bytes | None) -> Outcome | None:
    """Size then MD5 (``actual`` is the body's, given whenever ``expected.md5`` is);
    a failure outcome, or ``None``."""
    if expected.size is not None and len(body) != expected.size:
        return Outcome(
            "size_mismatch", f"expected {expected.size} bytes, got {len(body)} bytes"
        )
    if expected.md5 is not None:
        if actual != expected.md5:
            return Outcome(
                "md5_mismatch",
                f"expected MD5 {b64_md5(expected.md5)}, got {b64_md5(actual)}",
            )
    return None


def process_image(
    body: bytes,
    expected: Expected,
    plan: OutputPlan,
    writer: AtomicWriter,
    max_pixels: int,
) -> Outcome:
    """Verify ``body`` against ``expected``, decode all of it once, write
    ``plan``: the original and every resized output.

    The original is written before the resized files, so an interrupted image
    can later be resized from its stored original without a download.
    """
    # No MD5 when nothing needs it (OPENIMAGES_CHECK_MD5_IF_EXISTS=False on stored files).
    wants_md5 = expected.md5 is not None or plan.record_md5
    digest = hashlib.md5(body).digest() if wants_md5 else None
    failure = verify_bytes(body, expected, digest)
    if failure is not None:
        return failure
    try:
        image = decode(
            body,
            max_pixels,
            reduce_for=plan.specs if plan.fast else (),
            check_only=plan.fast and not plan.resized,
        )
    except ImageRejected as exc:
        return Outcome(exc.reason, exc.details)
    outcome = Outcome(md5=digest, size=len(body))
    try:
        resized = (
            resized_set(
                image,
                plan.specs,
                reducing_gap=REDUCING_GAP if plan.fast else None,
                rotation=plan.rotation,
            )
            if plan.resized
            else []
        )
    except (OSError, ValueError) as exc:
        return Outcome("corrupt", f"{image.format} could not be converted: {exc}")
    finally:
        image.close()
    try:
        if plan.original is not None:
            writer.write(plan.original, body)
            outcome.bytes_written += len(body)
        for (path, _), data in zip(plan.resized, resized, strict=True):
            writer.write(path, data)
            outcome.bytes_written += len(data)
    except OSError as exc:
        return Outcome("io_error", f"cannot write to the store: {exc}")
    return outcome

