"""Boxes follow the pixels: Open Images boxes into a stored image's coordinates.

Open Images boxes are fractions (XMin, XMax, YMin, YMax in 0..1) of the
image as its file stores the pixels; its Rotation (or the file's EXIF
orientation) says how "the image and boxes should be rotated". A stored
output was turned upright (``pillow.upright_rgb``) and then resized: scaled
(ShrinkToFit, FillDistort) or scaled and cropped to the centred square
(FillCrop). ``stored_box`` applies the same steps to a box; a box cut by the
crop is clipped, one left with no area is dropped. Pure functions, no Scrapy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from openimages_crawler.imaging.pillow import Geometry, ResizeSpec

Transpose = Image.Transpose


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


def stored_box(box: NormBox, geometry: Geometry | None, spec: ResizeSpec | None) -> NormBox | None:
    """``box`` in the output of ``spec`` (``None``: the original, stored as
    downloaded, so the box is unchanged); ``None`` when a crop leaves it no area."""
    if spec is None:
        return box
    assert geometry is not None, "an output's geometry comes with its encoding"
    upright = turned_box(box, geometry.turn)
    if spec.mode != "FillCrop":  # scaling keeps fractions
        return upright
    width, height = geometry.upright_size
    side = min(width, height)
    left, top = (width - side) / 2 / width, (height - side) / 2 / height
    x_span, y_span = side / width, side / height

    def crop(low: float, high: float, start: float, span: float) -> tuple[float, float]:
        return (min(max((low - start) / span, 0.0), 1.0), min(max((high - start) / span, 0.0), 1.0))

    xmin, xmax = crop(upright.xmin, upright.xmax, left, x_span)
    ymin, ymax = crop(upright.ymin, upright.ymax, top, y_span)
    if xmax <= xmin or ymax <= ymin:
        return None
    return NormBox(xmin, xmax, ymin, ymax)


def placed_annotations(annotations: dict[str, list[dict[str, Any]]], geometry: Geometry | None,
                       spec: ResizeSpec | None) -> dict[str, list[dict[str, Any]]]:
    """An image's labels and boxes (``dataset.annotation_index.SampleAnnotations``)
    with each box's XMin, XMax, YMin, YMax moved into the output of ``spec``
    (fractions of the stored image, to 6 decimals as in the official files);
    boxes a crop leaves without area are dropped."""
    boxes = []
    for box in annotations["boxes"]:
        source = NormBox(box["XMin"], box["XMax"], box["YMin"], box["YMax"])
        moved = stored_box(source, geometry, spec)
        if moved is not None:
            boxes.append({**box, "XMin": round(moved.xmin, 6), "XMax": round(moved.xmax, 6),
                          "YMin": round(moved.ymin, 6), "YMax": round(moved.ymax, 6)})
    return {"labels": annotations["labels"], "boxes": boxes}
