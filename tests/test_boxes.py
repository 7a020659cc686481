"""Boxes follow the pixels: a dark rectangle drawn where a box is must be found,
in every output Pillow makes, where ``stored_box`` says (within a pixel)."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from openimages_crawler.imaging.boxes import (
    NormBox,
    stored_box,
    turned_box,
)
from openimages_crawler.imaging.pillow import Geometry, ResizeSpec, content_box
from openimages_crawler.imaging.placement import placed_annotations
from openimages_crawler.imaging.process import Expected, process_image

MAX_PIXELS = 10_000_000
TURNS = [None, *Image.Transpose]
YELLOW = (255, 255, 0)  # a light padding: the dark box is found, the padding is not
SPECS = [ResizeSpec("ShrinkToFit", 64, format="png"), ResizeSpec("FillDistort", 50, format="png"),
         ResizeSpec("FillCrop", 60, format="png"),
         ResizeSpec("FitPad", 64, format="png", pad_color=YELLOW),  # shrunk, padded along one axis
         ResizeSpec("FitPad", 256, format="png", pad_color=YELLOW),  # not enlarged: padded all round
         ResizeSpec("ShortSide", 50, format="png"), ResizeSpec("ShortSide", 150, format="png")]  # shrunk, enlarged


def drawn(width: int, height: int, box: NormBox) -> Image.Image:
    """White, with ``box`` filled black."""
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).rectangle(
        (round(box.xmin * width), round(box.ymin * height), round(box.xmax * width) - 1,
         round(box.ymax * height) - 1), fill="black")
    return image


def found(image: Image.Image) -> NormBox | None:
    """Where the dark pixels are, as fractions of the image."""
    dark = image.convert("L").point(lambda value: 255 if value < 128 else 0)
    bounds = dark.getbbox()
    if bounds is None:
        return None
    left, top, right, bottom = bounds
    return NormBox(left / image.width, right / image.width, top / image.height, bottom / image.height)


def assert_near(actual: NormBox | None, expected: NormBox | None, size: tuple[int, int]) -> None:
    assert (actual is None) == (expected is None), (actual, expected)
    if actual is None or expected is None:
        return
    width, height = size
    for name, scale in (("xmin", width), ("xmax", width), ("ymin", height), ("ymax", height)):
        assert getattr(actual, name) * scale == pytest.approx(getattr(expected, name) * scale, abs=1.01), name


@pytest.mark.parametrize("turn", TURNS, ids=lambda turn: getattr(turn, "name", "none"))
def test_turned_box_is_where_pillow_puts_the_pixels(turn: Image.Transpose | None) -> None:
    box = NormBox(0.2, 0.5, 0.1, 0.4)
    image = drawn(120, 80, box)
    if turn is not None:
        image = image.transpose(turn)
    assert_near(found(image), turned_box(box, turn), image.size)


def jpeg(image: Image.Image, orientation: int | None) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


# EXIF orientation o means: the stored pixels are the upright picture turned by STORED_AS[o].
STORED_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize(("orientation", "rotation"), [(None, 0), *((o, 0) for o in STORED_AS),
                                                       (None, 90), (None, 180), (None, 270), (6, 90)])
def test_every_output_holds_the_box_where_stored_box_says(orientation: int | None, rotation: int) -> None:
    """A box in the file's pixels (as Open Images gives them), through the EXIF
    orientation or the metadata's Rotation, then each resize mode."""
    upright = drawn(200, 120, NormBox(0.3, 0.6, 0.2, 0.7))
    stored = upright.transpose(STORED_AS[orientation]) if orientation else upright
    box = found(stored)  # the box as the file's pixels hold it
    assert box is not None
    outcome = process_image(jpeg(stored, orientation), Expected(), SPECS, max_pixels=MAX_PIXELS,
                            rotation=rotation)
    assert outcome.ok and outcome.geometry is not None
    for spec, data in zip(SPECS, outcome.encoded, strict=True):
        output = Image.open(io.BytesIO(data))
        assert_near(found(output), stored_box(box, outcome.geometry, spec), output.size)
        if spec.mode == "FitPad":
            assert_padded(output, outcome.geometry, spec)
    if orientation:  # the file's orientation wins; the box is upright again
        assert_near(turned_box(box, outcome.geometry.turn), found(upright), upright.size)


def assert_padded(output: Image.Image, geometry: Geometry, spec: ResizeSpec) -> None:
    """The pad colour all round ``content_box``, and the (white) image right up to its edges."""
    left, top, right, bottom = content_box(*geometry.upright_size, spec)
    assert output.size == (spec.size, spec.size) and right - left <= spec.size and bottom - top <= spec.size
    rgb = output.convert("RGB")
    for x in range(spec.size):
        for y in range(spec.size):
            inside = left <= x < right and top <= y < bottom
            if not inside:
                assert rgb.getpixel((x, y)) == spec.pad_color, (x, y)
            elif x in (left, right - 1) or y in (top, bottom - 1):
                assert rgb.getpixel((x, y))[2] > 200, (x, y)  # the image's white, not the yellow padding


@pytest.mark.parametrize("orientation", [None, *range(1, 9)])
@pytest.mark.parametrize("stored_size", [(200, 120), (120, 200)], ids=["landscape", "portrait"])
def test_fit_pad_and_short_side_sizes_for_every_orientation(orientation: int | None,
                                                            stored_size: tuple[int, int]) -> None:
    """FitPad is always size x size; ShortSide's shorter side is the size, the
    aspect kept (to rounding), of the upright image (EXIF 5-8 swap the sides)."""
    outcome = process_image(jpeg(drawn(*stored_size, NormBox(0.3, 0.6, 0.2, 0.7)), orientation), Expected(),
                            SPECS, max_pixels=MAX_PIXELS)
    assert outcome.ok and outcome.geometry is not None
    width, height = stored_size[::-1] if orientation in (5, 6, 7, 8) else stored_size
    assert outcome.geometry.upright_size == (width, height)
    for spec, (out_w, out_h), data in zip(SPECS, outcome.sizes, outcome.encoded, strict=True):
        assert Image.open(io.BytesIO(data)).size == (out_w, out_h)
        if spec.mode == "FitPad":
            assert (out_w, out_h) == (spec.size, spec.size)
            left, top, right, bottom = content_box(width, height, spec)
            scale = min(1.0, spec.size / max(width, height))  # shrunk to fit, never enlarged
            assert (right - left, bottom - top) == (round(width * scale), round(height * scale))
            assert (left, top) == ((spec.size - (right - left)) // 2, (spec.size - (bottom - top)) // 2)
        elif spec.mode == "ShortSide":
            assert min(out_w, out_h) == spec.size
            assert (out_w >= out_h) == (width >= height)
            assert max(out_w, out_h) == round(max(width, height) * spec.size / min(width, height))
            assert abs(out_w / out_h - width / height) <= 1 / spec.size  # the aspect, to rounding


def test_fit_pad_moves_boxes_into_the_square_at_the_padding_offsets() -> None:
    """A 200x120 image in FitPad 64: 64x38 at (0, 13); in FitPad 256: as it is, at (28, 68)."""
    geometry = Geometry(None, (200, 120))
    box = NormBox(0.25, 0.75, 0.0, 1.0)
    shrunk = stored_box(box, geometry, SPECS[3])
    assert shrunk is not None
    assert shrunk.pixels(64, 64) == pytest.approx((16, 13, 32, 38))
    padded = stored_box(box, geometry, SPECS[4])
    assert padded is not None
    assert padded.pixels(256, 256) == pytest.approx((28 + 50, 68, 100, 120))
    assert stored_box(box, geometry, SPECS[5]) == box  # ShortSide only scales


def test_fill_crop_clips_boxes_it_cuts_and_drops_boxes_it_removes() -> None:
    spec = ResizeSpec("FillCrop", 60, format="png")
    cut = NormBox(0.1, 0.4, 0.2, 0.8)  # the crop of a 200x120 image keeps x in 0.2..0.8
    outside = NormBox(0.02, 0.15, 0.3, 0.6)
    image = drawn(200, 120, cut)
    outcome = process_image(jpeg(image, None), Expected(), [spec], max_pixels=MAX_PIXELS)
    assert outcome.geometry is not None
    clipped = stored_box(cut, outcome.geometry, spec)
    assert clipped is not None and clipped.xmin == 0.0
    assert_near(found(Image.open(io.BytesIO(outcome.encoded[0]))), clipped, (60, 60))
    assert stored_box(outside, outcome.geometry, spec) is None
    alone = process_image(jpeg(drawn(200, 120, outside), None), Expected(), [spec], max_pixels=MAX_PIXELS)
    assert found(Image.open(io.BytesIO(alone.encoded[0]))) is None  # the crop holds none of it

    annotations = {"labels": [{"LabelName": "/m/a"}], "boxes": [
        {"LabelName": "/m/a", "XMin": cut.xmin, "XMax": cut.xmax, "YMin": cut.ymin, "YMax": cut.ymax},
        {"LabelName": "/m/b", "XMin": outside.xmin, "XMax": outside.xmax, "YMin": outside.ymin, "YMax": outside.ymax}]}
    placed = placed_annotations(annotations, outcome.geometry, spec)
    assert placed["labels"] == annotations["labels"]
    assert [box["LabelName"] for box in placed["boxes"]] == ["/m/a"]
    assert placed["boxes"][0]["XMin"] == 0.0 and placed["boxes"][0]["XMax"] == round(clipped.xmax, 6)
    assert placed_annotations(annotations, None, None) == annotations  # an original: as the file has it


def test_pixels_are_cocos_bbox() -> None:
    assert NormBox(0.25, 0.75, 0.1, 0.6).pixels(200, 100) == (50.0, 10.0, 100.0, 50.0)
