"""Pillow functions: decode with bounds, make upright RGB, resize, encode.

Pure functions with no Scrapy import, so they can be tested and reused
(the standalone resizer, the benchmark) without a crawler.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from PIL import ExifTags, Image, ImageColor, ImageMode, ImageOps, UnidentifiedImageError

from openimages_crawler.reasons import CORRUPT, NOT_IMAGE, TOO_LARGE

RESIZE_MODES: Final = ("ShrinkToFit", "FillCrop", "FillDistort", "FitPad", "ShortSide")

# FitPad's padding unless a spec says otherwise (OPENIMAGES_PAD_COLOR's default).
DEFAULT_PAD_COLOR: Final = (0, 0, 0)

# No ShortSide output side is longer (JPEG's limit; WebP's is 16,383): enlarging a very
# long, thin image would otherwise make a huge output (``resize`` refuses it).
MAX_OUTPUT_SIDE: Final = 65_500
MAX_WEBP_SIDE: Final = 16_383
# Nor has more pixels (an enlarged output is held whole in a worker: 40 MP is 120 MB of RGB).
MAX_OUTPUT_PIXELS: Final = 40_000_000

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

# The fast path keeps at least this factor between the decoded size and the
# output before the final filter: JPEGs are decoded at a reduced DCT scale
# (as ImageMagick's ``-define jpeg:size=2Nx2N`` does) and other formats are
# box-reduced first (Pillow's ``reducing_gap``). Mean absolute difference
# from a full-decode Lanczos resize: see README "Speed".
REDUCING_GAP: Final = 2.0

# Where a reduced decode records the full-resolution size in ``Image.info``.
FULL_SIZE: Final = "openimages_full_size"

# Where ``upright_rgb`` records the transpose it applied (boxes follow it).
TURN: Final = "openimages_turn"

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_EXIF_TURNS: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# V4+ Rotation (degrees counter-clockwise) -> the transpose that applies it.
_ROTATIONS: Final = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}

# Where a resized output records how it was made (EXIF UserComment, ASCII charset).
_EXIF_IFD: Final = 0x8769
_USER_COMMENT: Final = 0x9286
PROVENANCE_PREFIX: Final = b"ASCII\0\0\0openimages-crawler "

# Transposes that swap width and height.
_SWAPPING_TURNS: Final = frozenset({Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270,
                                    Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE})

# Pillow's own bomb limit applies on top of ours; disable its warning-only band
# so the explicit pixel check below is the single rule.
Image.MAX_IMAGE_PIXELS = None

# Bytes a pixel that ``_rgb`` can hold besides the decoded image and its turned
# copy, for any mode but plain RGB: flattening alpha holds RGBA, the white RGB and
# the alpha channel (9); 16-bit grey its two 32-bit copies (8); others less.
_TO_RGB_BYTES_PER_PIXEL: Final = 9


class ImageRejected(Exception):
    """The bytes are not a usable image; ``reason`` is a FailureReason code."""

    def __init__(self, reason: str, details: str) -> None:
        super().__init__(details)
        self.reason = reason
        self.details = details


@dataclass(frozen=True, slots=True)
class ResizeSpec:
    """One resized output: mode, box size, resample filter, format, quality,
    and FitPad's padding colour (RGB; other modes ignore it)."""

    mode: str = "ShrinkToFit"
    size: int = 224
    resample: str = "lanczos"
    format: str = "jpg"
    quality: int = 90
    pad_color: tuple[int, int, int] = DEFAULT_PAD_COLOR

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
        if (not isinstance(self.pad_color, tuple) or len(self.pad_color) != 3
                or not all(type(value) is int and 0 <= value <= 255 for value in self.pad_color)):
            raise ValueError(f"pad colour must be three 0-255 values (R, G, B), not {self.pad_color!r}")


def parse_color(value: object) -> tuple[int, int, int]:
    """A colour as Pillow's ImageColor names it (``black``, ``#808080``, ``#fff``,
    ``rgb(124,116,104)``, ``hsl(0,0%,50%)``) or three 0-255 numbers, as RGB; a
    ValueError says what is wrong. An alpha part is refused: outputs are RGB."""
    if isinstance(value, list | tuple):
        if len(value) != 3 or not all(type(part) is int and 0 <= part <= 255 for part in value):
            raise ValueError(f"{list(value)!r} is not three 0-255 values (R, G, B)")
        return (value[0], value[1], value[2])
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a colour")  # noqa: TRY004 - a bad setting, as a bad name
    if re.fullmatch(r"\s*\d{1,3}\s*,\s*\d{1,3}\s*,\s*\d{1,3}\s*", value):  # -s OPENIMAGES_PAD_COLOR=124,116,104
        return parse_color([int(part) for part in value.split(",")])
    try:
        rgb = ImageColor.getrgb(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a colour Pillow knows (a name such as black, #rrggbb, "
                         "rgb(r,g,b) or three 0-255 numbers)") from None
    if len(rgb) == 4 and rgb[3] != 255:
        raise ValueError(f"{value!r} is transparent: the padding is opaque RGB")
    return (rgb[0], rgb[1], rgb[2])


def decode(
    data: bytes,
    max_pixels: int,
    *,
    max_decode_bytes: int | None = None,
    reduce_for: Sequence[ResizeSpec] = (),
    check_only: bool = False,
) -> Image.Image:
    """Decode ``data`` completely, refusing non-images, bombs and truncation.

    The pixel count, and the memory the decode and the conversion to upright
    RGB would hold (``peak_decode_bytes``, against ``max_decode_bytes``;
    ``None``: no bound), are checked from the header before any pixel is
    decoded, so a small file that claims a huge canvas costs nothing. A JPEG may be
    decoded at a reduced DCT scale: just large enough for every output of ``reduce_for``, or
    the smallest scale when the pixels are only ``check_only``. Every
    entropy-coded block is still read, so truncation and corrupt data are
    found as in a full decode.
    """
    image = _open_header(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(CORRUPT, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            TOO_LARGE,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
        )
    if image.format == "JPEG" and (reduce_for or check_only):
        _draft_reduced(image, reduce_for)
    if max_decode_bytes is not None and (needed := peak_decode_bytes(image)) > max_decode_bytes:
        raise ImageRejected(
            TOO_LARGE,
            f"{image.width}x{image.height} {image.mode}: {needed / 2**20:,.0f} MiB to decode and make "
            f"upright RGB, over OPENIMAGES_MAX_DECODE_BYTES ({max_decode_bytes / 2**20:,.0f} MiB)",
        )
    _load_pixels(image, len(data))
    return image


def _open_header(data: bytes) -> Image.Image:
    """Open ``data`` reading the header only; a failure is rejected with its reason."""
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected(NOT_IMAGE, "the bytes are not a known image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageRejected(TOO_LARGE, str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(CORRUPT, f"unreadable image header: {exc}") from exc


def _draft_reduced(image: Image.Image, reduce_for: Sequence[ResizeSpec]) -> None:
    """Set an opened JPEG to decode at the smallest DCT scale still large
    enough for every output of ``reduce_for`` (the smallest of all when there
    are none), recording the full-resolution size when the scale is reduced."""
    width, height = image.size
    request = (1, 1)
    for spec in reduce_for:  # large enough for every output, in both directions
        wanted = draft_request(width, height, spec)
        request = (max(request[0], wanted[0]), max(request[1], wanted[1]))
    if request[0] < width and request[1] < height:
        image.draft(None, request)
        if image.size != (width, height):
            image.info[FULL_SIZE] = (width, height)


def _load_pixels(image: Image.Image, data_size: int) -> None:
    """Decode every pixel; a bomb or a truncated or corrupt file is rejected."""
    # Hand the decoder all the bytes at once: one GIL release for the whole
    # decode instead of one per 64 KiB block (which stalls worker threads
    # behind the event loop).
    image.decodermaxblock = max(data_size, image.decodermaxblock)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(TOO_LARGE, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageRejected(CORRUPT, f"{image.format} does not decode: {exc}") from exc


def peak_decode_bytes(image: Image.Image) -> int:
    """The most memory decoding ``image`` (opened, not loaded: its mode and
    decoded size are known) and ``upright_rgb`` hold at once: the decoded pixels
    twice (a turn copies them) and, unless already RGB, ``_rgb``'s images.

    Pillow keeps one band in its own size (1 byte for 1/L/P, 2 for 16-bit grey,
    4 for I/F) and 2 to 4 bands of 8 bits in 4 bytes. A 16-bit grey PNG of a few
    hundred KB can claim gigabytes: the pixel count alone does not bound memory.
    """
    layout = ImageMode.getmode(image.mode)
    stored = 4 if len(layout.bands) > 1 else int(layout.typestr[-1])
    converted = 0 if image.mode == "RGB" and not _has_alpha(image) else _TO_RGB_BYTES_PER_PIXEL
    return image.width * image.height * (2 * stored + converted)


def full_size(image: Image.Image) -> tuple[int, int]:
    """The image's size at full resolution, also after a reduced decode."""
    return image.info.get(FULL_SIZE, image.size)


def upright_rgb(image: Image.Image, rotation: int = 0) -> Image.Image:
    """Turn the image upright and convert any mode to 8-bit RGB.

    Upright means: the file's EXIF orientation when it has one; otherwise
    ``rotation`` (V4+ metadata, degrees counter-clockwise, which Open Images
    derived from the originals' EXIF, for copies that lost it). Never both,
    so an image is never turned twice. Transparency is flattened on white;
    16-bit and float grey are scaled, not clipped; CMYK (including Adobe's
    inverted JPEGs, which Pillow handles) becomes RGB. The full-resolution
    size is carried along (and turned with the image), so outputs do not
    depend on a reduced decode.
    """
    width, height = full_size(image)
    orientation = _orientation(image)
    turn = None
    if orientation is not None:
        try:
            ImageOps.exif_transpose(image, in_place=True)
            turn = _EXIF_TURNS.get(orientation)
        except Exception:  # as above
            pass
    elif rotation in _ROTATIONS:
        turn = _ROTATIONS[rotation]
        image = image.transpose(turn)
    if turn in _SWAPPING_TURNS:
        width, height = height, width
    image = _rgb(image)
    image.info[FULL_SIZE] = (width, height)
    image.info[TURN] = turn
    return image


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose a good image
        return None


def upright_size(image: Image.Image, rotation: int = 0) -> tuple[int, int]:
    """The full-resolution size of the image once upright (as ``upright_rgb``
    turns it: its EXIF orientation, else ``rotation``), without turning it."""
    width, height = full_size(image)
    orientation = _orientation(image)
    turn = _EXIF_TURNS.get(orientation) if orientation is not None else _ROTATIONS.get(rotation)
    return (height, width) if turn in _SWAPPING_TURNS else (width, height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )


def _rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    has_alpha = _has_alpha(image)
    if mode == "RGB" and not has_alpha:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        extrema = image.getextrema()
        top = max(extrema[1] if isinstance(extrema, tuple) else 255, 1)
        scale = 255.0 / 65535.0 if top > 255 else 1.0
        image = image.convert("I").point(lambda value: value * scale).convert("L")
        return image.convert("RGB")
    if mode == "F":  # Pillow maps F images by linear functions only: one scale for the image
        scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        return image.point(lambda value: value * scale).convert("L").convert("RGB")
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
    if spec.mode == "ShortSide":  # the shorter side becomes ``size``, enlarged or not
        if width <= height:
            return box, max(1, round(height * box / width))
        return max(1, round(width * box / height)), box
    return box, box


def content_box(width: int, height: int, spec: ResizeSpec) -> tuple[int, int, int, int]:
    """Where the upright image's pixels are in its output: (left, top, right,
    bottom) in output pixels. FitPad centres ShrinkToFit's image in the
    square at whole-pixel offsets (``(size - w) // 2``, as ``resize`` pastes
    it); every other mode fills its whole output."""
    if spec.mode != "FitPad":
        return (0, 0, *target_size(width, height, spec))
    inner_w, inner_h = target_size(width, height, replace(spec, mode="ShrinkToFit"))
    left, top = (spec.size - inner_w) // 2, (spec.size - inner_h) // 2
    return left, top, left + inner_w, top + inner_h


def scaled_size(width: int, height: int, spec: ResizeSpec) -> tuple[float, float]:
    """Size the whole image is scaled to before any crop (FitPad: before the padding)."""
    if spec.mode in ("ShrinkToFit", "ShortSide"):
        return target_size(width, height, spec)
    if spec.mode == "FitPad":
        left, top, right, bottom = content_box(width, height, spec)
        return right - left, bottom - top
    if spec.mode == "FillCrop":
        scale = max(spec.size / width, spec.size / height)
        return width * scale, height * scale
    return spec.size, spec.size


def draft_request(width: int, height: int, spec: ResizeSpec) -> tuple[int, int]:
    """The smallest decode size that keeps ``REDUCING_GAP`` above the output.

    Holds for either EXIF orientation: every mode is symmetric in width and
    height. FitPad's image part is ShrinkToFit's (the padding needs no
    pixels); ShortSide's is its whole output.
    """
    scaled_w, scaled_h = scaled_size(width, height, spec)
    return math.ceil(scaled_w * REDUCING_GAP), math.ceil(scaled_h * REDUCING_GAP)


def resize(image: Image.Image, spec: ResizeSpec, *, reducing_gap: float | None = None) -> Image.Image:
    """Resize an upright RGB image according to ``spec.mode`` (see README).

    Sizes and the crop are computed on the full-resolution size, so a reduced
    decode gives the same output size as a full one. ``reducing_gap`` lets
    Pillow box-reduce by an integer factor first while keeping that factor
    above the output; ``None`` is a plain resize. FitPad pastes ShrinkToFit's
    image into a ``size`` square of ``spec.pad_color`` at ``content_box``;
    ShortSide enlarges an image whose shorter side is under ``size``
    (``too_large`` when the output would pass ``MAX_OUTPUT_SIDE``, WebP's
    side or ``MAX_OUTPUT_PIXELS``).
    """
    resample = RESAMPLE_FILTERS[spec.resample]
    width, height = full_size(image)
    if spec.mode == "FitPad":  # ShrinkToFit's image, centred on the pad colour
        left, top, _, _ = content_box(width, height, spec)
        inner = resize(image, replace(spec, mode="ShrinkToFit"), reducing_gap=reducing_gap)
        padded = Image.new("RGB", (spec.size, spec.size), spec.pad_color)
        padded.paste(inner, (left, top))
        return padded
    if spec.mode in ("ShrinkToFit", "ShortSide"):
        size = target_size(width, height, spec)
        longest = MAX_WEBP_SIDE if spec.format == "webp" else MAX_OUTPUT_SIDE
        if spec.mode == "ShortSide" and (max(size) > longest or size[0] * size[1] > MAX_OUTPUT_PIXELS):
            raise ImageRejected(TOO_LARGE, f"{spec.mode} {spec.size} of a {width}x{height} image would be "
                                f"{size[0]}x{size[1]}, over the largest output ({longest} px a side, "
                                f"{MAX_OUTPUT_PIXELS:,} pixels)")
        if size == image.size:
            return image
        return image.resize(size, resample, reducing_gap=reducing_gap)
    box = None
    if spec.mode == "FillCrop":
        # The centred square, as ImageOps.fit, in the decoded image's pixels.
        side = min(width, height)
        x_scale, y_scale = image.width / width, image.height / height
        left, top = (width - side) / 2, (height - side) / 2
        box = (left * x_scale, top * y_scale, (left + side) * x_scale, (top + side) * y_scale)
    return image.resize((spec.size, spec.size), resample, box=box, reducing_gap=reducing_gap)


def encode(image: Image.Image, spec: ResizeSpec, exif: bytes = b"") -> bytes:
    """Encode an RGB image in the spec's format (with an EXIF block, if given)."""
    out = io.BytesIO()
    fmt = OUTPUT_FORMATS[spec.format]
    extra = {"exif": exif} if exif else {}
    if fmt == "PNG":
        image.save(out, fmt, optimize=False, compress_level=6, **extra)
    else:
        image.save(out, fmt, quality=spec.quality, **extra)
    return out.getvalue()


def resized_bytes(
    image: Image.Image, spec: ResizeSpec, *, reducing_gap: float | None = None, rotation: int = 0
) -> bytes:
    """Upright RGB, resized and encoded: the whole resize stage for one output."""
    return resized_set(image, (spec,), reducing_gap=reducing_gap, rotation=rotation)[0]


def resized_set(
    image: Image.Image,
    specs: Sequence[ResizeSpec],
    *,
    reducing_gap: float | None = None,
    rotation: int = 0,
) -> list[bytes]:
    """Every output of one decoded image: turned upright and converted once,
    then resized and encoded per spec."""
    outputs, _ = resized_images(image, specs, reducing_gap=reducing_gap, rotation=rotation)
    return [data for data, _ in outputs]


@dataclass(frozen=True, slots=True)
class Geometry:
    """How a decoded image became upright: the transpose applied (``None``: as
    stored) and the upright full-resolution size every output is made from
    (``boxes.stored_box`` moves boxes the same way)."""

    turn: Image.Transpose | None
    upright_size: tuple[int, int]


def provenance_exif(geometry: Geometry, spec: ResizeSpec) -> bytes:
    """The EXIF block every resized output carries: its geometry and resize in
    the UserComment, so labels can be moved into it later from the file alone
    (``read_provenance``; about 120 bytes, no Orientation tag)."""
    exif = Image.Exif()
    made = {"turn": geometry.turn.name if geometry.turn is not None else None,
            "upright": list(geometry.upright_size), "mode": spec.mode, "size": spec.size}
    if spec.mode == "FitPad":  # the padding's colour, for the record: boxes need only the mode
        made["pad"] = "#{:02x}{:02x}{:02x}".format(*spec.pad_color)
    text = json.dumps(made, separators=(",", ":"))
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = PROVENANCE_PREFIX + text.encode()
    return exif.tobytes()


def read_provenance(image: Image.Image) -> tuple[Geometry, ResizeSpec] | None:
    """The geometry and resize an output of this crawler records (``provenance_exif``);
    ``None`` for any other image (an original, a foreign file)."""
    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no provenance
        return None
    if not isinstance(comment, bytes) or not comment.startswith(PROVENANCE_PREFIX):
        return None
    try:
        found = json.loads(comment[len(PROVENANCE_PREFIX):])
        turn = Image.Transpose[found["turn"]] if found["turn"] else None
        width, height = (int(value) for value in found["upright"])
        pad = parse_color(found["pad"]) if "pad" in found else DEFAULT_PAD_COLOR
        return Geometry(turn, (width, height)), ResizeSpec(mode=found["mode"], size=int(found["size"]),
                                                           pad_color=pad)
    except (ValueError, KeyError, TypeError):
        return None


def resized_images(
    image: Image.Image,
    specs: Sequence[ResizeSpec],
    *,
    reducing_gap: float | None = None,
    rotation: int = 0,
) -> tuple[list[tuple[bytes, tuple[int, int]]], Geometry]:
    """``resized_set`` with each output's size (width, height), which containers
    record, and the geometry their boxes follow."""
    upright = upright_rgb(image, rotation)
    try:
        geometry = Geometry(upright.info[TURN], full_size(upright))
        outputs = []
        for spec in specs:
            resized = resize(upright, spec, reducing_gap=reducing_gap)
            outputs.append((encode(resized, spec, provenance_exif(geometry, spec)), resized.size))
        return outputs, geometry
    finally:
        if upright is not image:
            upright.close()
