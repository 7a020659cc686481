"""Masks and points follow the pixels: a shape and a dot drawn in the file's pixels
must be found, in every output the real pipeline makes, where ``stored_mask`` and
``stored_point`` say; and the COCO encodings of a mask give it back."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

from openimages_crawler.imaging.boxes import stored_mask, stored_point
from openimages_crawler.imaging.masks import (
    decode_mask,
    mask_area,
    mask_polygons,
    mask_rle,
)
from openimages_crawler.imaging.pillow import Geometry, ResizeSpec, content_box
from openimages_crawler.imaging.process import Expected, process_image

MAX_PIXELS = 10_000_000
YELLOW = (255, 255, 0)  # FitPad's padding here: neither red nor white, and no blue to weigh
SPECS = [ResizeSpec("ShrinkToFit", 64, format="png"), ResizeSpec("FillDistort", 50, format="png"),
         ResizeSpec("FillCrop", 60, format="png"),
         ResizeSpec("FitPad", 64, format="png", pad_color=YELLOW),
         ResizeSpec("FitPad", 600, format="png", pad_color=YELLOW),
         ResizeSpec("ShortSide", 60, format="png"), ResizeSpec("ShortSide", 400, format="png")]
FILE_SIZE = (480, 320)  # FillCrop keeps x in 1/6..5/6 of the file's pixels, whatever the turn
MASK_SIZE = (240, 160)  # masks need not have the image's pixel size: half of it here
# EXIF orientation (None: no tag) and V4 Rotation; the Rotation applies only without an orientation.
TURNINGS = [(None, 0), *((orientation, 0) for orientation in range(1, 9)), (None, 90), (None, 180), (None, 270),
            (1, 90), (6, 90)]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def shape(size: tuple[int, int], colour: tuple[int, int, int] | int, background: tuple[int, int, int] | int,
          mode: str) -> Image.Image:
    """An irregular shape (an ellipse and a triangle), off-centre, its left part where FillCrop cuts."""
    width, height = size
    image = Image.new(mode, size, background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((0.04 * width, 0.18 * height, 0.42 * width - 1, 0.72 * height - 1), fill=colour)
    draw.polygon([(x * width - 0.5, y * height - 0.5) for x, y in ((0.35, 0.3), (0.78, 0.55), (0.45, 0.92))],
                 fill=colour)
    return image


def jpeg(image: Image.Image, orientation: int | None) -> bytes:
    """As Open Images stores it: a JPEG, maybe with an EXIF orientation (full chroma: colours stay sharp)."""
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    return out.getvalue()


def coloured(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    """The pixels nearer ``colour`` than the white background."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return np.all((pixels > 127) == (np.array(colour) > 127), axis=2)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return np.count_nonzero(first & second) / np.count_nonzero(first | second)


def outputs(data: bytes, rotation: int) -> tuple[Geometry, list[Image.Image]]:
    outcome = process_image(data, Expected(), SPECS, max_pixels=MAX_PIXELS, rotation=rotation)
    assert outcome.ok and outcome.geometry is not None
    return outcome.geometry, [Image.open(io.BytesIO(encoded)) for encoded in outcome.encoded]


@pytest.mark.parametrize(("orientation", "rotation"), TURNINGS)
def test_every_output_holds_the_mask_where_stored_mask_says(orientation: int | None, rotation: int) -> None:
    data = jpeg(shape(FILE_SIZE, RED, (255, 255, 255), "RGB"), orientation)
    mask = shape(MASK_SIZE, 255, 0, "L")
    geometry, images = outputs(data, rotation)
    original = Image.open(io.BytesIO(data))  # stored as downloaded: the file's pixels
    for spec, image in [(None, original), *zip(SPECS, images, strict=True)]:
        moved = stored_mask(mask, geometry if spec else None, spec, image.size)
        assert moved.mode == "L" and moved.size == image.size
        assert set(np.unique(np.asarray(moved))) <= {0, 255}
        drawn = coloured(image, RED)
        assert iou(np.asarray(moved) > 0, drawn) >= 0.95, spec
        if spec is not None and spec.mode == "FillCrop":  # the crop cut some of the shape
            assert drawn[0].any() or drawn[-1].any() or drawn[:, 0].any() or drawn[:, -1].any()
        if spec is not None and spec.mode == "FitPad":  # the pad colour in the image, 0 in the mask
            left, top, right, bottom = content_box(*geometry.upright_size, spec)
            padding = np.ones(image.size[::-1], bool)
            padding[top:bottom, left:right] = False
            assert padding.any()
            assert np.all(np.asarray(image.convert("RGB"))[padding] == YELLOW)
            assert not np.asarray(moved)[padding].any()
            assert np.asarray(moved)[top:bottom, left:right].any()


def dot(x: float, y: float) -> Image.Image:
    """A blue dot of 24 pixels centred on ``x``, ``y`` (whole pixels at this size) in the file's pixels."""
    image = Image.new("RGB", FILE_SIZE, "white")
    centre_x, centre_y = round(x * FILE_SIZE[0]), round(y * FILE_SIZE[1])
    ImageDraw.Draw(image).ellipse((centre_x - 12, centre_y - 12, centre_x + 11, centre_y + 11), fill=BLUE)
    return image


def centre(image: Image.Image) -> tuple[float, float] | None:
    """The blue dot's centre in pixels (each pixel's centre at +0.5), weighted by how blue."""
    weight = 255 - np.asarray(image.convert("RGB"))[:, :, 0].astype(float)
    weight[weight < 16] = 0  # JPEG noise
    if not weight.any():
        return None
    rows, columns = np.indices(weight.shape) + 0.5
    return float((columns * weight).sum() / weight.sum()), float((rows * weight).sum() / weight.sum())


@pytest.mark.parametrize(("orientation", "rotation"), TURNINGS)
@pytest.mark.parametrize(("x", "y"), [(0.6, 0.35), (0.08, 0.5)], ids=["kept", "cut-by-fillcrop"])
def test_every_output_holds_the_point_where_stored_point_says(orientation: int | None, rotation: int,
                                                              x: float, y: float) -> None:
    data = jpeg(dot(x, y), orientation)
    geometry, images = outputs(data, rotation)
    for spec, image in [(None, Image.open(io.BytesIO(data))), *zip(SPECS, images, strict=True)]:
        moved = stored_point(x, y, geometry if spec else None, spec)
        found = centre(image)
        if moved is None:
            assert spec is not None and spec.mode == "FillCrop" and found is None
            continue
        assert found is not None, spec
        assert found[0] == pytest.approx(moved[0] * image.width, abs=1.5), spec
        assert found[1] == pytest.approx(moved[1] * image.height, abs=1.5), spec
    assert (stored_point(x, y, geometry, SPECS[2]) is None) == (x < 1 / 6)


@pytest.mark.parametrize("turn", [None, *Image.Transpose], ids=lambda turn: getattr(turn, "name", "none"))
def test_fill_crop_keeps_its_edge_and_traces_stray_along_the_uncut_axis(turn: Image.Transpose | None) -> None:
    swaps = turn in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
                     Image.Transpose.TRANSVERSE)
    geometry = Geometry(turn, FILE_SIZE[::-1] if swaps else FILE_SIZE)
    fill_crop, shrink = SPECS[2], SPECS[0]
    for edge in (80 / 480, 400 / 480):  # the crop's edges in the file's x
        kept = stored_point(edge, 0.3, geometry, fill_crop)
        assert kept is not None
        assert kept[1 if swaps else 0] in (0.0, 1.0)
    assert stored_point(80 / 480 - 1e-4, 0.3, geometry, fill_crop) is None
    assert stored_point(400 / 480 + 1e-4, 0.3, geometry, fill_crop) is None
    stray = stored_point(0.5, 1.02, geometry, fill_crop)  # the file's x = 0.5 is the crop's middle
    assert stray is not None and stray == pytest.approx(stored_point(0.5, 1.02, geometry, shrink))
    assert stored_point(0.5, 1.02, geometry, None) == (0.5, 1.02)


@pytest.mark.parametrize("turn", [None, *Image.Transpose], ids=lambda turn: getattr(turn, "name", "none"))
def test_fit_pad_moves_points_into_the_square_and_traces_stray_into_the_padding(turn: Image.Transpose | None) -> None:
    swaps = turn in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
                     Image.Transpose.TRANSVERSE)
    geometry = Geometry(turn, FILE_SIZE[::-1] if swaps else FILE_SIZE)
    fit_pad = SPECS[3]  # 64x43 (or 43x64) at offset 10 along the padded axis
    left, top, right, bottom = content_box(*geometry.upright_size, fit_pad)
    assert {left, top} == {0, 10} and {right - left, bottom - top} == {64, 43}
    # Corners, a point inside, and a narrative trace's steps a little outside the image (kept, unclipped).
    for x, y in ((0.0, 0.0), (1.0, 1.0), (0.3, 0.7), (1.02, -0.02), (-0.02, 1.02)):
        moved = stored_point(x, y, geometry, fit_pad)
        shrunk = stored_point(x, y, geometry, SPECS[0])  # ShrinkToFit: the same image, unpadded
        assert moved is not None and shrunk is not None
        assert moved[0] * 64 == pytest.approx(left + shrunk[0] * (right - left))
        assert moved[1] * 64 == pytest.approx(top + shrunk[1] * (bottom - top))
        padded_axis = 1 if top else 0
        assert 0.0 < moved[padded_axis] < 1.0  # in the padding, not clipped to the image's edge


def blobs(size: tuple[int, int], *, second: bool = False, ring: bool = False) -> Image.Image:
    """The irregular shape, or two blobs apart, or a ring with an island in its hole."""
    width, height = size
    if not (second or ring):
        return shape(size, 255, 0, "L")
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    if second:
        draw.ellipse((0.05 * width, 0.1 * height, 0.5 * width, 0.8 * height), fill=255)
        draw.polygon([(0.65 * width, 0.2 * height), (0.95 * width, 0.5 * height), (0.7 * width, 0.9 * height)],
                     fill=255)
    if ring:
        draw.ellipse((0.1 * width, 0.1 * height, 0.9 * width, 0.9 * height), fill=255)
        draw.ellipse((0.3 * width, 0.3 * height, 0.7 * width, 0.7 * height), fill=0)
        draw.ellipse((0.45 * width, 0.45 * height, 0.55 * width, 0.55 * height), fill=255)
    return image


def rasterised(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    width, height = size
    for polygon in polygons:
        draw.polygon([(x * width - 0.5, y * height - 0.5) for x, y in zip(polygon[::2], polygon[1::2])], fill=255)
    return np.asarray(image) > 0


@pytest.mark.parametrize(("mask", "count"), [(blobs((120, 80)), 1), (blobs((97, 61), second=True), 2),
                                             (blobs((64, 64)), 1)], ids=["blob", "two-blobs", "small-blob"])
def test_polygons_outline_the_mask(mask: Image.Image, count: int) -> None:
    polygons = mask_polygons(mask)
    assert len(polygons) == count
    for polygon in polygons:
        assert len(polygon) >= 6 and len(polygon) % 2 == 0
        assert all(0.0 <= value <= 1.0 for value in polygon)
    areas = [np.count_nonzero(rasterised([polygon], mask.size)) for polygon in polygons]
    assert areas == sorted(areas, reverse=True)  # largest first
    assert iou(rasterised(polygons, mask.size), np.asarray(mask) > 127) >= 0.9


def test_polygons_are_outer_outlines_only_and_skip_specks() -> None:
    assert len(mask_polygons(blobs((80, 80), ring=True))) == 1  # the hole's island is inside the outline
    specks = Image.new("L", (20, 10), 0)
    specks.putpixel((3, 3), 255)
    ImageDraw.Draw(specks).line((8, 5, 15, 5), fill=255)  # a one-pixel line has no area
    assert mask_polygons(specks) == []
    assert mask_polygons(Image.new("L", (5, 5), 0)) == []


def test_rle_decodes_back_to_the_mask_and_area_counts_its_pixels() -> None:
    mask = blobs((97, 61), second=True)
    mask.putpixel((0, 0), 200)  # any value over 127 is inside
    mask.putpixel((96, 60), 100)  # and none at or under it
    inside = np.asarray(mask) > 127
    rle = mask_rle(mask)
    assert rle["size"] == [61, 97] and isinstance(rle["counts"], str)
    assert json.loads(json.dumps(rle)) == rle
    assert np.array_equal(coco_mask.decode(rle).astype(bool), inside)
    assert mask_area(mask) == np.count_nonzero(inside) == int(coco_mask.area(rle))


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_decode_mask_bounds_pixels_and_refuses_non_images() -> None:
    data = png(blobs((50, 40)).convert("1"))
    decoded = decode_mask(data, max_pixels=2000)
    assert decoded.mode == "L" and decoded.size == (50, 40)
    assert np.array_equal(np.asarray(decoded) > 127, np.asarray(blobs((50, 40))) > 127)
    with pytest.raises(ValueError):
        decode_mask(data, max_pixels=1999)
    with pytest.raises(ValueError):
        decode_mask(b"not an image at all", max_pixels=2000)
    with pytest.raises(ValueError):
        decode_mask(data[: len(data) // 2], max_pixels=2000)
