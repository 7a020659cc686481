"""Boxes follow the pixels: Open Images boxes into a stored image's coordinates.

Open Images boxes are fractions (XMin, XMax, YMin, YMax in 0..1) of the
image as its file stores the pixels; its Rotation (or the file's EXIF
orientation) says how "the image and boxes should be rotated". A stored
output was turned upright (``pillow.upright_rgb``) and then resized: scaled
(ShrinkToFit, FillDistort, ShortSide), scaled and cropped to the centred square
(FillCrop) or scaled and padded to the square (FitPad: the image is a centred
rectangle of the output). ``stored_box`` applies the same steps to a box; a box cut by the
crop is clipped, one left with no area is dropped. ``stored_point`` and
``stored_mask`` move V7 points, narrative traces and V5 instance masks (which
cover the whole image, in the file's orientation, at any size) the same way.
Pure functions, no Scrapy.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from openimages_crawler.imaging.pillow import Geometry, ResizeSpec, content_box

Transpose = Image.Transpose

# Transposes that swap width and height.
_SWAPPING = frozenset({Transpose.ROTATE_90, Transpose.ROTATE_270, Transpose.TRANSPOSE, Transpose.TRANSVERSE})

# How far outside the crop a point still counts as on its edge: the float noise of
# turning it (1 - x), far below a pixel.
_EDGE = 1e-9


@dataclass(frozen=True, slots=True)
class NormBox:
    """A box as fractions of its image's width (x) and height (y)."""

    xmin: float
    xmax: float
    ymin: float
    ymax: float

    def pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``[x, y, w, h]`` in pixels of a ``width`` x ``height`` image (COCO's bbox)."""
        return (self.xmin * width, self.ymin * height,
                (self.xmax - self.xmin) * width, (self.ymax - self.ymin) * height)


def _turned_point(x: float, y: float, turn: Transpose | None) -> tuple[float, float]:
    """Where a point (fractions, y down) lands after Pillow's ``transpose(turn)``."""
    match turn:
        case None:
            return x, y
        case Transpose.FLIP_LEFT_RIGHT:
            return 1 - x, y
        case Transpose.FLIP_TOP_BOTTOM:
            return x, 1 - y
        case Transpose.ROTATE_90:  # counter-clockwise
            return y, 1 - x
        case Transpose.ROTATE_180:
            return 1 - x, 1 - y
        case Transpose.ROTATE_270:  # clockwise
            return 1 - y, x
        case Transpose.TRANSPOSE:  # the main diagonal
            return y, x
        case Transpose.TRANSVERSE:  # the other diagonal
            return 1 - y, 1 - x
    raise ValueError(f"unknown transpose {turn!r}")


def turned_box(box: NormBox, turn: Transpose | None) -> NormBox:
    """The box after the image was transposed by ``turn``."""
    x1, y1 = _turned_point(box.xmin, box.ymin, turn)
    x2, y2 = _turned_point(box.xmax, box.ymax, turn)
    return NormBox(min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2))


WHOLE = NormBox(0.0, 1.0, 0.0, 1.0)


def crop_window(geometry: Geometry, spec: ResizeSpec) -> NormBox:
    """The part of the upright image an output of ``spec`` holds, as fractions
    of the upright image: FillCrop's centred square, cut as ``pillow.resize``
    cuts it; FitPad's whole square, which reaches past the image (below 0 or
    above 1) where it is padding, at ``pillow.content_box``'s whole-pixel
    offsets; the whole image otherwise."""
    if spec.mode == "FitPad":
        left, top, right, bottom = content_box(*geometry.upright_size, spec)
        inner_w, inner_h = right - left, bottom - top
        return NormBox(-left / inner_w, (spec.size - left) / inner_w, -top / inner_h, (spec.size - top) / inner_h)
    if spec.mode != "FillCrop":
        return WHOLE
    width, height = geometry.upright_size
    side = min(width, height)
    return NormBox((width - side) / 2 / width, (width + side) / 2 / width,
                   (height - side) / 2 / height, (height + side) / 2 / height)


def _into(value: float, low: float, high: float) -> float:
    """``value`` as a fraction of the window ``low``..``high`` along one axis,
    clipped to it (a window past 0..1 is padding: the image's fractions map into it)."""
    return min(max((value - low) / (high - low), 0.0), 1.0)


def _uncut(low: float, high: float) -> bool:
    """The window holds the whole image along this axis (all of it, maybe padded)."""
    return low <= 0.0 and high >= 1.0


def stored_box(box: NormBox, geometry: Geometry | None, spec: ResizeSpec | None) -> NormBox | None:
    """``box`` in the output of ``spec`` (``None``: the original, stored as
    downloaded, so the box is unchanged); ``None`` when a crop leaves it no area."""
    if spec is None:
        return box
    assert geometry is not None, "an output's geometry comes with its encoding"
    upright = turned_box(box, geometry.turn)
    window = crop_window(geometry, spec)
    if window == WHOLE:  # scaling keeps fractions
        return upright
    xmin, xmax = _into(upright.xmin, window.xmin, window.xmax), _into(upright.xmax, window.xmin, window.xmax)
    ymin, ymax = _into(upright.ymin, window.ymin, window.ymax), _into(upright.ymax, window.ymin, window.ymax)
    if xmax <= xmin or ymax <= ymin:
        return None
    return NormBox(xmin, xmax, ymin, ymax)


def _cropped(value: float, low: float, high: float) -> float | None:
    """``value`` along one axis of the crop window ``low``..``high``; ``None`` when
    the crop cut it away (its edge is kept). An axis the crop does not cut keeps
    every value: narrative traces stray a little outside the image (FitPad's
    padded axis moves them into the square, unclipped)."""
    if (low, high) == (0.0, 1.0):
        return value
    if _uncut(low, high):
        return (value - low) / (high - low)
    if not low - _EDGE <= value <= high + _EDGE:
        return None
    return _into(value, low, high)


def stored_point(x: float, y: float, geometry: Geometry | None,
                 spec: ResizeSpec | None) -> tuple[float, float] | None:
    """The point ``x``, ``y`` (fractions of the file's pixels: a V7 point label,
    a narrative trace's step) in the output of ``spec`` (``None``: the original,
    unchanged); ``None`` when FillCrop cut it away."""
    if spec is None:
        return x, y
    assert geometry is not None, "an output's geometry comes with its encoding"
    upright_x, upright_y = _turned_point(x, y, geometry.turn)
    window = crop_window(geometry, spec)
    moved_x = _cropped(upright_x, window.xmin, window.xmax)
    moved_y = _cropped(upright_y, window.ymin, window.ymax)
    if moved_x is None or moved_y is None:
        return None
    return moved_x, moved_y


def _binary(mask: Image.Image) -> Image.Image:
    """0/255: Open Images masks are 0/255, but any value over 127 is inside."""
    return mask.point(lambda value: 255 if value > 127 else 0)


def stored_mask(mask: Image.Image, geometry: Geometry | None, spec: ResizeSpec | None,
                size: tuple[int, int]) -> Image.Image:
    """An instance mask (covering the whole image in the file's orientation, at
    any pixel size) as mode "L" 0/255 of the stored image of ``size``: turned,
    scaled and cropped as the image was (``spec`` ``None``: the original, only scaled);
    FitPad's padding is 0 (outside), the mask is pasted at the image's offset.

    Nearest-neighbour sampling only picks source values, so it commutes with the
    threshold and the turn: the full mask is read once, by one resample of the
    crop window (centred, so in the file's orientation it only swaps axes with
    the turn), and only the small result is thresholded and turned.
    """
    source = mask if mask.mode == "L" else mask.convert("L")
    if spec is None:
        return _binary(source.resize(size, Image.Resampling.NEAREST))
    assert geometry is not None, "an output's geometry comes with its encoding"
    turn = geometry.turn
    window, unturned_size = crop_window(geometry, spec), size
    offset = None
    if _uncut(window.xmin, window.xmax) and _uncut(window.ymin, window.ymax) and window != WHOLE:
        # Padding (FitPad): the whole mask into the image's part, 0 around it.
        left, top, right, bottom = content_box(*geometry.upright_size, spec)
        window, unturned_size, offset = WHOLE, (right - left, bottom - top), (left, top)
    if turn in _SWAPPING:  # both in the file's orientation
        window = NormBox(window.ymin, window.ymax, window.xmin, window.xmax)
        unturned_size = (unturned_size[1], unturned_size[0])
    width, height = source.size
    sampled = source.resize(unturned_size, Image.Resampling.NEAREST,
                            box=(window.xmin * width, window.ymin * height,
                                 window.xmax * width, window.ymax * height))
    moved = _binary(sampled)
    moved = moved if turn is None else moved.transpose(turn)
    if offset is None:
        return moved
    padded = Image.new("L", size, 0)
    padded.paste(moved, offset)
    return padded
