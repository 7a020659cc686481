"""Pillow functions: decode with bounds, make upright RGB, resize, encode.

Pure functions with no Scrapy import, so they can be tested and reused
(the standalone resizer, the benchmark) without a crawler.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_MODES: Final = ("ShrinkToFit", "FillCrop", "FillDistort")

RESAMPLE_FILTERS: Final[dict[str, Image.Resampling]] = {
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

# Output extension -> Pillow format name.
OUTPUT_FORMATS: Final[dict[str, str]] = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}

# Pillow's own bomb limit applies on top of ours; disable its warning-only band
# so the explicit pixel check below is the single rule.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(Exception):
    """The bytes are not a usable image; ``reason`` is a FailureReason code."""

    def __init__(self, reason: str, details: str) -> None:
        super().__init__(details)
        self.reason = reason
        self.details = details


@dataclass(frozen=True, slots=True)
class ResizeSpec:
    """One resized output: mode, box size, resample filter, format, quality."""

    mode: str = "ShrinkToFit"
    size: int = 224
    resample: str = "lanczos"
    format: str = "jpg"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(
                f"resample {self.resample!r} is not one of {', '.join(RESAMPLE_FILTERS)}"
            )
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        if self.size < 1:
            raise ValueError(f"resize size must be a positive number of pixels, not {self.size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be between 1 and 100, not {self.quality}")


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` completely, refusing non-images, bombs and truncation.

    The pixel count is checked from the header before any pixel is decoded,
    so a small file that claims a huge canvas costs nothing.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_image", "the bytes are not a known image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("corrupt", f"unreadable image header: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected("corrupt", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            "too_large",
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageRejected("corrupt", f"{image.format} does not decode: {exc}") from exc
    return image


def upright_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB.

    Transparency is flattened on white; 16-bit and float grey are scaled, not
    clipped; CMYK (including Adobe's inverted JPEGs, which Pillow handles)
    becomes RGB.
    """
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not lose a good image
        pass
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        extrema = image.getextrema()
        top = max(extrema[1] if isinstance(extrema, tuple) else 255, 1)
        scale = 255.0 / 65535.0 if top > 255 else 1.0
        image = image.convert("I").point(lambda value: value * scale).convert("L")
        return image.convert("RGB")
    if mode == "F":
        image = image.point(lambda value: value * 255.0 if value <= 1.0 else value)
        return image.convert("L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def target_size(width: int, height: int, spec: ResizeSpec) -> tuple[int, int]:
    """Size of the output for an input of ``width`` x ``height``."""
    box = spec.size
    if spec.mode == "ShrinkToFit":
        longest = max(width, height)
        if longest <= box:
            return width, height
        scale = box / longest
        return max(1, round(width * scale)), max(1, round(height * scale))
    return box, box


def resize(image: Image.Image, spec: ResizeSpec) -> Image.Image:
    """Resize an RGB image according to ``spec.mode`` (see README)."""
    resample = RESAMPLE_FILTERS[spec.resample]
    width, height = image.size
    if spec.mode == "ShrinkToFit":
        size = target_size(width, height, spec)
        return image if size == image.size else image.resize(size, resample)
    if spec.mode == "FillCrop":
        return ImageOps.fit(image, (spec.size, spec.size), method=resample)
    return image.resize((spec.size, spec.size), resample)


def encode(image: Image.Image, spec: ResizeSpec) -> bytes:
    """Encode an RGB image in the spec's format."""
    out = io.BytesIO()
    fmt = OUTPUT_FORMATS[spec.format]
    if fmt == "PNG":
        image.save(out, fmt, optimize=False, compress_level=6)
    else:
        image.save(out, fmt, quality=spec.quality)
    return out.getvalue()


def resized_bytes(image: Image.Image, spec: ResizeSpec) -> bytes:
    """Upright RGB, resized and encoded: the whole resize stage for one output."""
    return encode(resize(upright_rgb(image), spec), spec)
