"""Instance masks for annotation files: COCO RLE, area, outline polygons, bounded decoding.

A mask here is a single-channel image in which a value over 127 is inside
(``boxes.stored_mask`` makes them 0/255). Outlines are traced with numpy and a
little Python (Moore-neighbour tracing), so OpenCV is not needed. Pure
functions (numpy, pycocotools, Pillow), no Scrapy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from openimages_crawler.imaging.pillow import ImageRejected, decode

# A pixel's 8 neighbours, clockwise (y down) from the west: Moore tracing's search order.
_AROUND = ((-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1))
_DIRECTION = {step: index for index, step in enumerate(_AROUND)}

Point = tuple[int, int]


def _inside(mask: Image.Image) -> np.ndarray:
    """The pixels inside the mask (any value over 127), as booleans."""
    return np.asarray(mask if mask.mode == "L" else mask.convert("L")) > 127


def mask_rle(mask: Image.Image) -> dict[str, Any]:
    """COCO's compressed RLE of the mask, ``{"size": [h, w], "counts": str}``:
    what a COCO file stores as an instance's segmentation, ready for JSON."""
    encoded = coco_mask.encode(np.asfortranarray(_inside(mask).astype(np.uint8)))
    return {"size": [int(side) for side in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def mask_area(mask: Image.Image) -> int:
    """The pixels inside the mask: COCO's ``area`` of a segmented instance."""
    return int(np.count_nonzero(_inside(mask)))


def mask_polygons(mask: Image.Image) -> list[list[float]]:
    """The outer outline of each 8-connected region inside the mask, largest
    first, as ``[x1, y1, x2, y2, ...]`` fractions of the mask's size (COCO's
    polygon segmentation, made independent of the pixel size).

    The vertices are the boundary pixels' centres, straight runs kept as their
    ends. Holes are not cut out and regions inside holes are skipped (outer
    outlines only); outlines of fewer than 3 points (specks, one-pixel lines)
    are left out, as a polygon needs 3.
    """
    inside = _inside(mask)
    height, width = inside.shape
    stride = width + 2
    pixels = np.pad(inside, 1).tobytes()  # a border of outside pixels: no bounds checks
    remaining = inside.copy()
    flat = remaining.ravel()
    outlines = []
    start = 0
    while True:
        start += int(flat[start:].argmax())  # the next region's first pixel in raster order
        if not flat[start]:
            break
        y, x = divmod(start, width)
        outline = _trace(pixels, stride, x, y)
        _clear(remaining, outline)
        corners = _corners(outline)
        if len(corners) >= 3:
            outlines.append(corners)
    outlines.sort(key=_area, reverse=True)
    return [[value for x, y in corners for value in ((x + 0.5) / width, (y + 0.5) / height)]
            for corners in outlines]


def _trace(pixels: bytes, stride: int, x: int, y: int) -> list[Point]:
    """The boundary pixels of the region whose first pixel in raster order is
    ``x``, ``y`` (so its west is outside), clockwise: Moore-neighbour tracing,
    stopped when the first step is about to repeat. ``pixels`` is the padded
    mask, ``stride`` bytes a row."""
    start = (x, y)
    outline = [start]
    first_step: Point | None = None
    back = 0  # the direction of the outside pixel the search turns from
    current = start
    while True:
        cx, cy = current
        for turn in range(1, 9):
            index = (back + turn) % 8
            dx, dy = _AROUND[index]
            if pixels[(cy + 1 + dy) * stride + cx + 1 + dx]:
                break
        else:
            return outline  # a single pixel
        step = (cx + dx, cy + dy)
        if current == start:
            if first_step is None:
                first_step = step
            elif step == first_step:
                return outline[:-1]  # the last entry is the start again
        outline.append(step)
        ox, oy = _AROUND[(index - 1) % 8]  # the outside neighbour checked just before the step
        back = _DIRECTION[(cx + ox - step[0], cy + oy - step[1])]
        current = step


def _clear(remaining: np.ndarray, outline: list[Point]) -> None:
    """Mark the region inside ``outline`` (holes and anything in them too) as done."""
    xs, ys = [x for x, _ in outline], [y for _, y in outline]
    left, top = min(xs), min(ys)
    window = Image.new("1", (max(xs) - left + 1, max(ys) - top + 1))
    shifted = [(x - left, y - top) for x, y in outline]
    draw = ImageDraw.Draw(window)
    draw.point(shifted, fill=1)
    if len(shifted) >= 3:
        draw.polygon(shifted, fill=1, outline=1)
    remaining[top:top + window.height, left:left + window.width] &= ~np.asarray(window)


def _corners(outline: list[Point]) -> list[Point]:
    """The outline without the points inside straight runs: the same polygon, fewer numbers."""
    if len(outline) < 3:
        return outline
    before, after = outline[-1:] + outline[:-1], outline[1:] + outline[:1]
    return [point for previous, point, following in zip(before, outline, after, strict=True)
            if (point[0] - previous[0], point[1] - previous[1]) != (following[0] - point[0], following[1] - point[1])]


def _area(corners: list[Point]) -> float:
    """The polygon's area (the shoelace formula), to order outlines largest first."""
    xs, ys = np.array([x for x, _ in corners], float), np.array([y for _, y in corners], float)
    return abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))) / 2


def decode_mask(data: bytes, max_pixels: int, max_decode_bytes: int | None = None) -> Image.Image:
    """A mask file's pixels as mode "L", decoded only under ``max_pixels`` and
    ``max_decode_bytes`` (a header can claim any size and depth): ``ValueError``
    over a bound or for bytes that are not an image."""
    try:
        image = decode(data, max_pixels, max_decode_bytes=max_decode_bytes)
    except ImageRejected as exc:
        raise ValueError(exc.details) from exc
    return image if image.mode == "L" else image.convert("L")


def joined_polygon(polygons: list[list[float]]) -> list[float]:
    """One polygon for an object in several parts (YOLO's segmentation labels
    take one per object): each further part is entered from the nearest
    vertex of what is joined so far, walked round back to its entry and left
    the way it came (a bridge of no width there and back), as Ultralytics
    joins a COCO object's segments; ``[]`` for no part."""
    if not polygons:
        return []
    joined = np.asarray(polygons[0], dtype=np.float64).reshape(-1, 2)
    for polygon in polygons[1:]:
        part = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        best = (np.inf, 0, 0)
        for j, vertex in enumerate(part):  # a row at a time: memory stays linear in the vertices
            distances = ((joined - vertex) ** 2).sum(axis=1)
            i = int(distances.argmin())
            if distances[i] < best[0]:
                best = (float(distances[i]), i, j)
        _, i, j = best
        loop = np.concatenate([np.roll(part, -j, axis=0), part[j:j + 1]])
        joined = np.concatenate([joined[:i + 1], loop, joined[i:]])
    return [round(float(value), 6) for value in joined.reshape(-1)]
