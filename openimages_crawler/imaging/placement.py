"""An image's annotations moved into one stored output: every kind follows
the pixels (``boxes``: ``stored_box``, ``stored_point``, ``stored_mask``).

What a crop cuts away is dropped (a box, a mask or a relationship with no
area left, a point, a click or a trace step outside), what it cuts into is
clipped. The original (``spec`` ``None``) keeps the official geometry and the
official mask PNGs byte for byte. Pure functions, no Scrapy.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

from openimages_crawler.imaging.boxes import (
    NormBox,
    stored_box,
    stored_mask,
    stored_point,
)
from openimages_crawler.imaging.masks import decode_mask
from openimages_crawler.imaging.pillow import Geometry, ResizeSpec

Annotations = dict[str, list[dict[str, Any]]]

# Pixels and bytes a mask PNG may decode to (above any Open Images photo's: a mask is one
# byte a pixel; a file claiming more, or a deeper mode, is not decoded).
MAX_MASK_PIXELS = 50_000_000
MAX_MASK_DECODE_BYTES = 128 << 20
BOX_COORDINATES = ("XMin", "XMax", "YMin", "YMax")
MASK_BOX = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")


def placed_annotations(annotations: Annotations, geometry: Geometry | None, spec: ResizeSpec | None,
                       size: tuple[int, int] | None = None) -> Annotations:
    """``annotations`` (``dataset.annotation_index.SampleAnnotations``) in the
    output of ``spec`` whose pixel size is ``size`` (needed for masks):
    coordinates as fractions of the stored image, to 6 decimals as in the
    official files; each mask's ``png`` the stored image's mask (1-bit PNG)."""
    movers = {"boxes": _box, "masks": _mask, "points": _point, "relationships": _relationship,
              "narratives": _narrative}
    placed: Annotations = {}
    for kind, items in annotations.items():
        move = movers.get(kind)
        if move is None:  # image labels have no place
            placed[kind] = items
            continue
        moved = (move(item, geometry, spec, size) for item in items)
        placed[kind] = [item for item in moved if item is not None]
    return placed


def _moved_box(item: dict[str, Any], names: tuple[str, ...], geometry: Geometry | None,
               spec: ResizeSpec | None) -> dict[str, float] | None:
    moved = stored_box(NormBox(*(item[name] for name in names)), geometry, spec)
    if moved is None:
        return None
    return dict(zip(names, (round(value, 6) for value in (moved.xmin, moved.xmax, moved.ymin, moved.ymax)),
                    strict=True))


def _box(item: dict[str, Any], geometry: Geometry | None, spec: ResizeSpec | None,
         size: tuple[int, int] | None) -> dict[str, Any] | None:
    moved = _moved_box(item, BOX_COORDINATES, geometry, spec)
    return None if moved is None else {**item, **moved}


def _relationship(item: dict[str, Any], geometry: Geometry | None, spec: ResizeSpec | None,
                  size: tuple[int, int] | None) -> dict[str, Any] | None:
    first = _moved_box(item, ("XMin1", "XMax1", "YMin1", "YMax1"), geometry, spec)
    second = _moved_box(item, ("XMin2", "XMax2", "YMin2", "YMax2"), geometry, spec)
    return None if first is None or second is None else {**item, **first, **second}


def _point(item: dict[str, Any], geometry: Geometry | None, spec: ResizeSpec | None,
           size: tuple[int, int] | None) -> dict[str, Any] | None:
    moved = stored_point(item["X"], item["Y"], geometry, spec)
    return None if moved is None else {**item, "X": round(moved[0], 6), "Y": round(moved[1], 6)}


def _mask(item: dict[str, Any], geometry: Geometry | None, spec: ResizeSpec | None,
          size: tuple[int, int] | None) -> dict[str, Any] | None:
    box = _moved_box(item, MASK_BOX, geometry, spec)
    if box is None:
        return None
    clicks = []
    for click in item["Clicks"]:
        moved = stored_point(click["X"], click["Y"], geometry, spec)
        if moved is not None:
            clicks.append({**click, "X": round(moved[0], 6), "Y": round(moved[1], 6)})
    png = item["png"]
    if png is not None and spec is not None:
        assert size is not None, "a resized output's masks need its size"
        png = _moved_png(png, geometry, spec, size)
    return {**item, **box, "Clicks": clicks, "png": png}


def _moved_png(png: bytes, geometry: Geometry | None, spec: ResizeSpec, size: tuple[int, int]) -> bytes | None:
    """The official mask moved into the output, as a 1-bit PNG; ``None`` if it does not decode."""
    try:
        mask = decode_mask(png, MAX_MASK_PIXELS, MAX_MASK_DECODE_BYTES)
    except ValueError:
        return None
    with mask:
        return _one_bit_png(stored_mask(mask, geometry, spec, size))


def _one_bit_png(mask: Image.Image) -> bytes:
    """A 0/255 mask as the smallest PNG: one bit a pixel."""
    out = io.BytesIO()
    mask.convert("1", dither=Image.Dither.NONE).save(out, "PNG")
    return out.getvalue()


def mask_at(png: bytes, size: tuple[int, int]) -> Image.Image | None:
    """A mask PNG (an output's, or an official one at its own resolution) as
    0/255 pixels of ``size``; ``None`` if it does not decode."""
    try:
        mask = decode_mask(png, MAX_MASK_PIXELS, MAX_MASK_DECODE_BYTES)
    except ValueError:
        return None
    with mask:
        return stored_mask(mask, None, None, size)


def mask_png_at(png: bytes, size: tuple[int, int]) -> bytes | None:
    """A mask PNG of exactly ``size`` (an official one may have its own
    resolution): as it is when it has, else resampled (1-bit PNG)."""
    try:
        with Image.open(io.BytesIO(png)) as header:
            if header.size == size:
                return png
    except (OSError, ValueError):
        return None
    mask = mask_at(png, size)
    return None if mask is None else _one_bit_png(mask)


def _narrative(item: dict[str, Any], geometry: Geometry | None, spec: ResizeSpec | None,
               size: tuple[int, int] | None) -> dict[str, Any]:
    traces = []
    for trace in item["traces"]:
        steps = []
        for step in trace:
            moved = stored_point(step["x"], step["y"], geometry, spec)
            if moved is not None:
                steps.append({**step, "x": round(moved[0], 6), "y": round(moved[1], 6)})
        traces.append(steps)
    return {**item, "traces": traces}


def objects_with_masks(boxes: list[dict[str, Any]], masks: list[dict[str, Any]] | None
                       ) -> tuple[list[dict[str, Any]], list[bytes | None] | None]:
    """The objects of an image and each one's mask PNG (``None``: no masks
    written). A mask belongs to the box of its class with the same coordinates
    (the masks were drawn on the boxes; 1e-4 apart at most); each box takes
    one mask at most. A mask no box takes (all of them, without boxes) is an
    object of its own, with its box's coordinates. A box without a mask has
    ``None``."""
    if masks is None:
        return boxes, None
    free = list(masks)
    found: list[bytes | None] = []
    for box in boxes:
        match = next((mask for mask in free if mask["LabelName"] == box["LabelName"] and all(
            abs(mask[m] - box[b]) <= 1e-4 for m, b in zip(MASK_BOX, BOX_COORDINATES, strict=True))), None)
        if match is not None:
            free.remove(match)
        found.append(match["png"] if match is not None else None)
    alone = [{**mask, **dict(zip(BOX_COORDINATES, (mask[name] for name in MASK_BOX), strict=True))} for mask in free]
    return boxes + alone, found + [mask["png"] for mask in free]
