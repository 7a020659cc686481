"""The CPU stage for one downloaded image: verify, decode, resize, encode.

Runs in a worker thread (Pillow and hashlib release the GIL), never on the
event loop. Takes bytes, returns an outcome with the encoded outputs; storing
them is the store's job.
"""

from __future__ import annotations

import base64
import hashlib
from fractions import Fraction
from collections.abc import Sequence
from dataclasses import dataclass, field

from openimages_crawler.imaging.pillow import (
    REDUCING_GAP,
    Geometry,
    ImageRejected,
    ResizeSpec,
    decode,
    full_size,
    resized_images,
    upright_size,
)
from openimages_crawler.reasons import CORRUPT, FILTERED, MD5_MISMATCH, SIZE_MISMATCH


@dataclass(frozen=True, slots=True)
class Expected:
    """What the metadata promises about the bytes; ``None`` means not checked."""

    size: int | None = None
    md5: bytes | None = None  # the 16-byte binary digest


@dataclass(frozen=True, slots=True)
class SizeFilter:
    """Which decoded images a dataset keeps (OPENIMAGES_MIN_IMAGE_SIDE,
    _MAX_IMAGE_AREA, _MAX_ASPECT_RATIO; 0 = off): exactly at a limit is kept.
    The sides are the image's, whichever way up: none of them depends on it."""

    min_side: int = 0
    max_area: int = 0
    max_aspect_ratio: float = 0.0

    def refusal(self, width: int, height: int) -> str | None:
        """Why a ``width`` x ``height`` image is left out, or ``None``."""
        short, long = min(width, height), max(width, height)
        if self.min_side and short < self.min_side:
            return f"{width}x{height}: shorter side {short} under OPENIMAGES_MIN_IMAGE_SIDE ({self.min_side})"
        if self.max_area and width * height > self.max_area:
            return f"{width}x{height}: {width * height} pixels over OPENIMAGES_MAX_IMAGE_AREA ({self.max_area})"
        if self.max_aspect_ratio and Fraction(long, short) > Fraction(str(self.max_aspect_ratio)):
            return (f"{width}x{height}: aspect ratio {long / short:.3g} over OPENIMAGES_MAX_ASPECT_RATIO "
                    f"({self.max_aspect_ratio:g})")
        return None


@dataclass(slots=True)
class Outcome:
    """Result of processing: ``reason`` is ``None`` on success."""

    reason: str | None = None
    details: str = ""
    bytes_written: int = 0  # by whoever stores ``encoded`` (and the original)
    md5: bytes | None = None  # of the bytes processed, on success
    size: int = 0
    encoded: list[bytes] = field(default_factory=list)  # one per ResizeSpec, on success
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each encoded output's width, height
    original_size: tuple[int, int] = (0, 0)  # the decoded image's, as stored (before any turn)
    upright: tuple[int, int] = (0, 0)  # the original's pixel size once upright
    hashes: dict[str, str] = field(default_factory=dict)  # hash name -> hex digest of the bytes
    geometry: Geometry | None = None  # how the outputs were made from it (their boxes follow)
    tickets: list[str] = field(default_factory=list)  # the open packs that hold the outputs (outputs.containers)

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
            SIZE_MISMATCH, f"expected {expected.size} bytes, got {len(body)} bytes"
        )
    if expected.md5 is not None:
        if actual != expected.md5:
            return Outcome(
                MD5_MISMATCH,
                f"expected MD5 {b64_md5(expected.md5)}, got {b64_md5(actual)}",
            )
    return None


def process_image(
    body: bytes,
    expected: Expected,
    specs: Sequence[ResizeSpec],
    *,
    max_pixels: int,
    max_decode_bytes: int | None = None,
    fast: bool = True,
    rotation: int = 0,
    want_md5: bool = False,
    keep: SizeFilter = SizeFilter(),
    hashes: Sequence[str] = (),
) -> Outcome:
    """Verify ``body`` against ``expected``, decode all of it once, and encode
    every output of ``specs`` (``Outcome.encoded``, in order).

    ``max_pixels``, ``max_decode_bytes``: ``decode``'s bounds (OPENIMAGES_MAX_PIXELS,
    OPENIMAGES_MAX_DECODE_BYTES).
    ``fast``: reduced JPEG decode and pre-reduction before the final filter
    (``REDUCING_GAP``); False is a full decode and a plain resize.
    ``rotation``: V4+ Rotation for files without an EXIF orientation.
    ``want_md5``: the results need the MD5 even when nothing checks it.
    ``keep``: the image filters; an image outside them is ``filtered``, after it
    decoded (a broken file is ``corrupt``, whatever its size).
    ``hashes``: hashlib names whose digests of the bytes the results record.
    """
    # No MD5 when nothing needs it (OPENIMAGES_CHECK_MD5_IF_EXISTS=False on stored files).
    digest = hashlib.md5(body).digest() if expected.md5 is not None or want_md5 else None
    failure = verify_bytes(body, expected, digest)
    if failure is not None:
        return failure
    try:
        image = decode(body, max_pixels, max_decode_bytes=max_decode_bytes, reduce_for=specs if fast else (),
                       check_only=fast and not specs)
    except ImageRejected as exc:
        return Outcome(exc.reason, exc.details)
    original_size = full_size(image)
    upright = upright_size(image, rotation)
    refusal = keep.refusal(*original_size)
    if refusal is not None:
        image.close()
        return Outcome(FILTERED, refusal)
    outputs: list[tuple[bytes, tuple[int, int]]] = []
    geometry = None
    try:
        if specs:
            outputs, geometry = resized_images(image, specs, reducing_gap=REDUCING_GAP if fast else None,
                                               rotation=rotation)
    except ImageRejected as exc:  # an output too large to make
        return Outcome(exc.reason, exc.details)
    except (OSError, ValueError) as exc:
        return Outcome(CORRUPT, f"{image.format} could not be converted: {exc}")
    finally:
        image.close()
    return Outcome(md5=digest, size=len(body), encoded=[data for data, _ in outputs],
                   sizes=[size for _, size in outputs], original_size=original_size, upright=upright,
                   geometry=geometry, hashes={name: hashlib.new(name, body).hexdigest() for name in hashes})
