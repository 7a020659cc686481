"""The Pillow functions, without a crawler."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openimages_crawler.imaging.pillow import (
    MAX_OUTPUT_SIDE,
    REDUCING_GAP,
    RESAMPLE_FILTERS,
    RESIZE_MODES,
    Geometry,
    ImageRejected,
    ResizeSpec,
    content_box,
    decode,
    draft_request,
    full_size,
    parse_color,
    read_provenance,
    resize,
    resized_bytes,
    resized_images,
    resized_set,
    target_size,
    upright_rgb,
)
from openimages_crawler.imaging.process import Expected, process_image
from openimages_crawler.testing.images import IMAGE_KINDS, bomb_png, photo

MAX_PIXELS = 178_956_970


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    photo(width, height, 1).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "size_in", "size_out"),
    [
        ("ShrinkToFit", (1000, 500), (224, 112)),
        ("ShrinkToFit", (500, 1000), (112, 224)),
        ("ShrinkToFit", (100, 50), (100, 50)),
        ("ShrinkToFit", (224, 10), (224, 10)),
        ("ShrinkToFit", (10000, 3), (224, 1)),
        ("FillCrop", (1000, 500), (224, 224)),
        ("FillCrop", (100, 50), (224, 224)),
        ("FillDistort", (1000, 500), (224, 224)),
        ("FitPad", (1000, 500), (224, 224)),
        ("FitPad", (100, 50), (224, 224)),
        ("ShortSide", (1000, 500), (448, 224)),
        ("ShortSide", (500, 1000), (224, 448)),
        ("ShortSide", (600, 800), (224, 299)),  # 298.67 rounded
        ("ShortSide", (100, 50), (448, 224)),  # enlarged: the shorter side is the size
        ("ShortSide", (224, 10), (5018, 224)),
        ("ShortSide", (1000, 3000), (224, 672)),
        ("ShortSide", (300, 300), (224, 224)),
    ],
)
def test_resize_sizes(mode: str, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
    spec = ResizeSpec(mode=mode, size=224)
    assert target_size(*size_in, spec) == size_out
    assert resize(Image.new("RGB", size_in), spec).size == size_out


@pytest.mark.parametrize("resample", sorted(RESAMPLE_FILTERS))
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_every_mode_and_filter_produces_a_decodable_jpeg(mode: str, resample: str) -> None:
    image = decode(jpeg(640, 480), MAX_PIXELS)
    data = resized_bytes(image, ResizeSpec(mode=mode, resample=resample, size=64))
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        assert out.size == {"ShrinkToFit": (64, 48), "ShortSide": (85, 64)}.get(mode, (64, 64))


def test_fill_crop_keeps_the_centre() -> None:
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # blue centre third
    out = resize(image, ResizeSpec(mode="FillCrop", size=50))
    assert out.getpixel((25, 25)) == pytest.approx((0, 0, 255), abs=3)
    assert out.getpixel((1, 25))[2] > 200  # the red sides are cropped away


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_every_mirror_kind_becomes_rgb(kind: str) -> None:
    _, maker = IMAGE_KINDS[kind]
    image = upright_rgb(decode(maker(3), MAX_PIXELS))  # type: ignore[operator]
    assert image.mode == "RGB"


def test_exif_orientation_is_applied() -> None:
    _, maker = IMAGE_KINDS["jpeg_exif_rotated"]
    raw = decode(maker(1), MAX_PIXELS)  # type: ignore[operator]
    assert raw.size == (200, 300)
    upright = upright_rgb(raw)
    assert upright.size == (300, 200)
    red, green, blue = upright.getpixel((10, 10))
    assert red > 180 and green < 90 and blue < 90


def test_transparency_is_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert upright_rgb(rgba).getpixel((5, 5)) == (255, 255, 255)
    la = Image.new("LA", (10, 10), (0, 0))
    assert upright_rgb(la).getpixel((5, 5)) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.info["transparency"] = 0
    assert upright_rgb(palette).getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled() -> None:
    image = Image.new("I;16", (4, 4), 65535)
    assert upright_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    image = Image.new("I;16", (4, 4), 32768)
    assert upright_rgb(image).getpixel((0, 0))[0] == pytest.approx(128, abs=1)


def test_float_grey_is_scaled_as_fractions_or_as_levels() -> None:
    assert upright_rgb(Image.new("F", (4, 4), 0.5)).getpixel((0, 0)) == (127, 127, 127)
    assert upright_rgb(Image.new("F", (4, 4), 200.0)).getpixel((0, 0)) == (200, 200, 200)


def test_cmyk_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red
    assert upright_rgb(cmyk).getpixel((1, 1)) == pytest.approx((255, 0, 0), abs=2)


def test_rejections() -> None:
    with pytest.raises(ImageRejected) as not_image:
        decode(b"<html>gone</html>", MAX_PIXELS)
    assert not_image.value.reason == "not_image"
    with pytest.raises(ImageRejected) as corrupt:
        decode(jpeg(800, 600)[:5000], MAX_PIXELS)
    assert corrupt.value.reason == "corrupt"
    with pytest.raises(ImageRejected) as bomb:
        decode(bomb_png(20000), MAX_PIXELS)
    assert bomb.value.reason == "too_large"
    with pytest.raises(ImageRejected) as small_limit:
        decode(jpeg(100, 100), 9999)
    assert small_limit.value.reason == "too_large"


def test_bad_specs_are_refused() -> None:
    for bad in ({"mode": "Stretch"}, {"resample": "cubic"}, {"format": "gif"}, {"size": 0},
                {"quality": 101}, {"pad_color": (0, 0, 256)}, {"pad_color": (0, 0)}, {"pad_color": [0, 0, 0]},
                {"pad_color": "black"}, {"pad_color": (0.5, 0, 0)}):
        with pytest.raises(ValueError):
            ResizeSpec(**bad)  # type: ignore[arg-type]


# --- FitPad and ShortSide -------------------------------------------------------


def test_fit_pad_centres_shrink_to_fit_on_the_pad_colour() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    out = resize(image, ResizeSpec(mode="FitPad", size=90, pad_color=(10, 200, 30)))
    assert out.size == (90, 90)
    assert content_box(300, 100, ResizeSpec(mode="FitPad", size=90)) == (0, 30, 90, 60)  # 90x30 at (90-30)//2
    pixels = np.asarray(out)
    assert (pixels[:30] == (10, 200, 30)).all() and (pixels[60:] == (10, 200, 30)).all()
    assert (pixels[30:60] == (0, 0, 255)).all()
    # Not enlarged, and an odd margin puts the extra pixel after the image (as (size - w) // 2).
    small = resize(Image.new("RGB", (41, 20), (0, 0, 255)), ResizeSpec(mode="FitPad", size=64))
    assert small.getbbox() == (11, 22, 52, 42) and small.getpixel((0, 0)) == (0, 0, 0)  # default: black


def test_short_side_enlarges_and_refuses_an_output_too_long() -> None:
    spec = ResizeSpec(mode="ShortSide", size=300)
    assert resize(Image.new("RGB", (600, 800)), spec).size == (300, 400)
    assert resize(Image.new("RGB", (150, 100)), spec).size == (450, 300)
    thin = Image.new("RGB", (MAX_OUTPUT_SIDE // 100, 2))  # 655x2: the long side would be 98,250
    with pytest.raises(ImageRejected, match="over the largest output") as refused:
        resize(thin, spec)
    assert refused.value.reason == "too_large"
    with pytest.raises(ImageRejected, match="40,000,000 pixels"):  # 4000x40000: 160 MP, sides allowed
        resize(Image.new("RGB", (100, 1000)), ResizeSpec(mode="ShortSide", size=4000))
    with pytest.raises(ImageRejected, match="16383 px a side"):  # WebP's own limit
        resize(Image.new("RGB", (10, 600)), ResizeSpec(mode="ShortSide", size=300, format="webp"))  # 300x18000


@pytest.mark.parametrize("mode", ["FitPad", "ShortSide"])
@pytest.mark.parametrize("kind", ["jpeg_odd_size", "jpeg_portrait_odd", "jpeg_exif_6"])
def test_new_modes_decode_reduced_but_at_least_twice_the_image_part(kind: str, mode: str) -> None:
    """The reduced JPEG decode keeps REDUCING_GAP above FitPad's image part
    (ShrinkToFit's) and ShortSide's whole output, in the file's orientation."""
    data = ALL_KINDS[kind]
    spec = ResizeSpec(mode=mode, size=150)
    full = decode(data, MAX_PIXELS)
    reduced = decode(data, MAX_PIXELS, reduce_for=(spec,))
    assert reduced.width < full.width and reduced.height < full.height
    wanted = draft_request(*full.size, spec)
    assert reduced.width >= wanted[0] or reduced.height >= wanted[1]
    upright = upright_rgb(full)
    left, top, right, bottom = content_box(*upright.size, spec)
    image_part = (right - left, bottom - top)
    if upright.size != full.size:
        image_part = image_part[::-1]
    assert reduced.width >= REDUCING_GAP * image_part[0] - 1 or reduced.height >= REDUCING_GAP * image_part[1] - 1


@pytest.mark.parametrize("spec", [ResizeSpec(mode="FitPad", size=80, pad_color=(1, 2, 3)),
                                  ResizeSpec(mode="FitPad", size=80), ResizeSpec(mode="ShortSide", size=80)],
                         ids=["fitpad-colour", "fitpad-black", "shortside"])
@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_provenance_round_trip_of_the_new_modes(spec: ResizeSpec, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg_bytes(photo(300, 200, 3), exif=exif.tobytes())
    spec = ResizeSpec(mode=spec.mode, size=spec.size, format=fmt, pad_color=spec.pad_color)
    [(encoded, size)], geometry = resized_images(decode(data, MAX_PIXELS), [spec])
    with Image.open(io.BytesIO(encoded)) as out:
        assert out.size == size == ((80, 80) if spec.mode == "FitPad" else (80, 120))
        found = read_provenance(out)
    assert found is not None
    assert found[0] == geometry == Geometry(Image.Transpose.ROTATE_270, (200, 300))
    assert (found[1].mode, found[1].size, found[1].pad_color) == (spec.mode, spec.size, spec.pad_color)


def test_provenance_with_a_bad_pad_colour_is_no_provenance() -> None:
    from openimages_crawler.imaging.pillow import (
        _EXIF_IFD,
        _USER_COMMENT,
        PROVENANCE_PREFIX,
    )

    for pad, expected in (('"#0a0b0c"', (10, 11, 12)), ('"nocolour"', None), ("7", None)):
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = PROVENANCE_PREFIX + (
            f'{{"turn":null,"upright":[4,2],"mode":"FitPad","size":8,"pad":{pad}}}').encode()
        out = io.BytesIO()
        Image.new("RGB", (8, 8)).save(out, "PNG", exif=exif.tobytes())
        found = read_provenance(Image.open(io.BytesIO(out.getvalue())))
        assert (found[1].pad_color if found else None) == expected, pad


def test_pad_colours_parse_or_say_why_not() -> None:
    assert parse_color("black") == (0, 0, 0)
    assert parse_color("#808080") == parse_color("rgb(128,128,128)") == parse_color([128, 128, 128]) == (128, 128, 128)
    assert parse_color(" #fff ") == (255, 255, 255)
    assert parse_color("#ff0000ff") == (255, 0, 0)  # opaque alpha is fine
    assert parse_color("124,116,104") == (124, 116, 104)  # as -s gives it
    for bad, message in (("nocolour", "not a colour Pillow knows"), ("#12345", "not a colour Pillow knows"),
                         ("#ff000080", "transparent"), ([0, 0, 300], "three 0-255"), ([0, 0], "three 0-255"),
                         ((0.5, 0, 0), "three 0-255"), (None, "not a colour"), (7, "not a colour"),
                         ("300,0,0", "three 0-255")):
        with pytest.raises(ValueError, match=message):
            parse_color(bad)


def test_a_bad_pad_colour_stops_the_crawl_with_one_line() -> None:
    from scrapy.exceptions import UsageError

    from openimages_crawler.crawl.config import CrawlConfig
    from tests.conftest import project_settings

    base = {"IMAGES_STORE": "/tmp/unused-store"}
    config = CrawlConfig.from_settings(project_settings({**base, "OPENIMAGES_RESIZE_MODE": "FitPad",
                                                         "OPENIMAGES_PAD_COLOR": "#808080"}))
    assert config.outputs[0].spec == ResizeSpec(mode="FitPad", pad_color=(128, 128, 128))
    outputs = [{"dir": "pad", "mode": "FitPad", "size": 64, "pad_color": "white"},
               {"dir": "pad-default", "mode": "FitPad", "size": 64}, {"dir": "short", "mode": "ShortSide", "size": 64}]
    config = CrawlConfig.from_settings(project_settings({**base, "OPENIMAGES_OUTPUTS": outputs,
                                                         "OPENIMAGES_PAD_COLOR": "rgb(1,2,3)"}))
    assert [output.spec.pad_color for output in config.outputs] == [(255, 255, 255), (1, 2, 3), (1, 2, 3)]
    assert [output.spec.mode for output in config.outputs] == ["FitPad", "FitPad", "ShortSide"]
    with pytest.raises(UsageError, match=r"^OPENIMAGES_PAD_COLOR: 'nocolour' is not a colour Pillow knows") as bad:
        CrawlConfig.from_settings(project_settings({**base, "OPENIMAGES_PAD_COLOR": "nocolour"}))
    assert "\n" not in str(bad.value)
    with pytest.raises(UsageError, match=r"OPENIMAGES_OUTPUTS entry .*: pad_color '#ff000000' is transparent"):
        CrawlConfig.from_settings(project_settings({**base, "OPENIMAGES_OUTPUTS": [
            {"dir": "pad", "mode": "FitPad", "size": 64, "pad_color": "#ff000000"}]}))


def test_process_image_checks_size_then_md5_then_decodes(tmp_path: Path) -> None:
    import hashlib

    body = jpeg(300, 200)
    specs = (ResizeSpec(size=100),)
    good = Expected(size=len(body), md5=hashlib.md5(body).digest())
    too_long = process_image(body, Expected(size=len(body) + 1), specs, max_pixels=MAX_PIXELS)
    assert too_long.reason == "size_mismatch" and not too_long.encoded
    other_md5 = process_image(body, Expected(md5=b"\0" * 16), specs, max_pixels=MAX_PIXELS)
    assert other_md5.reason == "md5_mismatch" and not other_md5.encoded
    outcome = process_image(body, good, specs, max_pixels=MAX_PIXELS)
    assert outcome.ok
    assert outcome.md5 == good.md5 and outcome.size == len(body)
    (encoded,) = outcome.encoded
    with Image.open(io.BytesIO(encoded)) as out:
        assert out.size == (100, 67)
    unchecked = process_image(body, Expected(), specs, max_pixels=MAX_PIXELS)
    assert unchecked.ok and unchecked.md5 is None  # no MD5 when nothing needs it
    assert process_image(body, Expected(), specs, max_pixels=MAX_PIXELS, want_md5=True).md5 == good.md5


# --- the fast path: reduced JPEG decode + pre-reduction ---------------------


def _jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _rotated(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg_bytes(photo(1800, 1199, 5), exif=exif.tobytes())


# Inputs large enough for a reduced decode, in every odd shape and mode.
LARGE_KINDS = {
    "jpeg_odd_size": lambda: _jpeg_bytes(photo(1999, 1333, 1)),
    "jpeg_portrait_odd": lambda: _jpeg_bytes(photo(1001, 1999, 2)),
    "jpeg_very_wide": lambda: _jpeg_bytes(photo(4000, 150, 3)),
    "jpeg_progressive_large": lambda: _jpeg_bytes(photo(2400, 1600, 4), progressive=True),
    "jpeg_cmyk_large": lambda: _jpeg_bytes(photo(1600, 1200, 6).convert("CMYK")),
    "jpeg_gray_large": lambda: _jpeg_bytes(photo(1600, 1200, 7).convert("L")),
    "jpeg_exif_6": lambda: _rotated(6),
    "jpeg_exif_8": lambda: _rotated(8),
    "jpeg_exif_3": lambda: _rotated(3),
    "jpeg_exif_5": lambda: _rotated(5),
    "png_large": lambda: _png_bytes(photo(1500, 1000, 8)),
}


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _all_kinds() -> dict[str, bytes]:
    kinds = {name: maker(11) for name, (_, maker) in IMAGE_KINDS.items()}  # type: ignore[operator]
    kinds.update({name: maker() for name, maker in LARGE_KINDS.items()})
    return kinds


ALL_KINDS = _all_kinds()


def plain_and_fast(data: bytes, spec: ResizeSpec) -> tuple[Image.Image, Image.Image]:
    plain = resize(upright_rgb(decode(data, MAX_PIXELS)), spec)
    fast = resize(upright_rgb(decode(data, MAX_PIXELS, reduce_for=(spec,))), spec,
                  reducing_gap=REDUCING_GAP)
    return plain, fast


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


@pytest.mark.parametrize("size", [224, 97])
@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("kind", sorted(ALL_KINDS))
def test_fast_path_matches_the_plain_path(kind: str, mode: str, size: int) -> None:
    spec = ResizeSpec(mode=mode, size=size)
    plain, fast = plain_and_fast(ALL_KINDS[kind], spec)
    assert fast.size == plain.size
    assert fast.mode == plain.mode == "RGB"
    # 0-255 scale; the corpus of the benchmark averages ~0.6 (README "Speed").
    assert mean_abs_diff(fast, plain) < 3.0


@pytest.mark.parametrize("kind", sorted(LARGE_KINDS))
def test_large_jpegs_really_take_the_reduced_decode(kind: str) -> None:
    data = ALL_KINDS[kind]
    spec = ResizeSpec(size=224)
    full = decode(data, MAX_PIXELS)
    reduced = decode(data, MAX_PIXELS, reduce_for=(spec,))
    if full.format != "JPEG":
        assert reduced.size == full.size
        return
    assert reduced.width < full.width and reduced.height < full.height
    assert full_size(reduced) == full.size
    # never below REDUCING_GAP times the output, so the final filter has room
    out_w, out_h = resize(upright_rgb(full), spec).size
    if "exif" in kind and upright_rgb(full).size != full.size:
        out_w, out_h = out_h, out_w
    assert reduced.width >= REDUCING_GAP * out_w - 1 or reduced.height >= REDUCING_GAP * out_h - 1


def test_exif_rotation_is_applied_once_on_the_fast_path() -> None:
    spec = ResizeSpec(size=224)
    for orientation in (3, 5, 6, 8):
        plain, fast = plain_and_fast(_rotated(orientation), spec)
        expected = (224, 149) if orientation == 3 else (149, 224)
        assert plain.size == fast.size == expected


@pytest.mark.parametrize("options", [{"reduce_for": (ResizeSpec(),)}, {"check_only": True}, {}])
def test_reduced_decodes_still_reject_truncated_and_garbled_jpegs(options: dict) -> None:
    data = _jpeg_bytes(photo(2000, 1500, 9))
    with pytest.raises(ImageRejected) as truncated:
        decode(data[: len(data) * 2 // 3], MAX_PIXELS, **options)
    assert truncated.value.reason == "corrupt"
    decode(data, MAX_PIXELS, **options)  # the whole file passes


@pytest.mark.parametrize("kind", ["jpeg_large", "jpeg_exif_6", "png_large"])
def test_several_outputs_from_one_decode_are_as_good_as_each_alone(kind: str) -> None:
    """One decode for all outputs is sized for the largest in each direction:
    no output is further from a full decode than when it is made alone."""
    data = jpeg(6000, 800) if kind == "jpeg_large" else ALL_KINDS[kind]  # wide: FillDistort wants height
    specs = (ResizeSpec(mode="ShrinkToFit", size=320), ResizeSpec(mode="FillDistort", size=224))
    together = resized_set(decode(data, MAX_PIXELS, reduce_for=specs), specs, reducing_gap=REDUCING_GAP)
    for spec, made in zip(specs, together, strict=True):
        alone = resized_bytes(decode(data, MAX_PIXELS, reduce_for=(spec,)), spec, reducing_gap=REDUCING_GAP)
        full = resized_bytes(decode(data, MAX_PIXELS), spec)
        with Image.open(io.BytesIO(made)) as a, Image.open(io.BytesIO(alone)) as b, \
                Image.open(io.BytesIO(full)) as reference:
            assert a.size == b.size == reference.size
            rgb = reference.convert("RGB")
            assert mean_abs_diff(a.convert("RGB"), rgb) <= mean_abs_diff(b.convert("RGB"), rgb) + 0.25, spec


def test_process_image_fast_and_plain_give_the_same_sizes() -> None:
    for kind in ("jpeg_exif_6", "jpeg_odd_size", "png_large", "jpeg_cmyk_large"):
        body = ALL_KINDS[kind]
        sizes = []
        for fast in (True, False):
            outcome = process_image(body, Expected(size=len(body)), (ResizeSpec(mode="FillCrop", size=128),),
                                    max_pixels=MAX_PIXELS, fast=fast)
            assert outcome.ok
            with Image.open(io.BytesIO(outcome.encoded[0])) as image:
                sizes.append(image.size)
        assert sizes == [(128, 128), (128, 128)]
    body = ALL_KINDS["jpeg_progressive_large"]
    originals_only = process_image(body, Expected(), (), max_pixels=MAX_PIXELS, fast=True)
    assert originals_only.ok and originals_only.encoded == []  # checked by a reduced decode
    truncated = body[: len(body) // 2]
    assert process_image(truncated, Expected(), (), max_pixels=MAX_PIXELS).reason == "corrupt"


# --- V4+ Rotation and EXIF orientation ---------------------------------------


def _marked(exif_orientation: int | None = None, size: tuple[int, int] = (300, 200)) -> bytes:
    """A landscape JPEG, red on its left third, grey elsewhere."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, size[0] // 3, size[1]))
    options: dict[str, object] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    return _jpeg_bytes(image, **options)


def _red_at(image: Image.Image, xy: tuple[int, int]) -> bool:
    red, green, blue = image.getpixel(xy)
    return red > 200 and green < 60 and blue < 60


def test_rotation_applies_to_files_without_exif_orientation() -> None:
    ccw = upright_rgb(decode(_marked(), MAX_PIXELS), 90)
    assert ccw.size == (200, 300)
    assert _red_at(ccw, (100, 290)) and not _red_at(ccw, (100, 10))  # the left side is now at the bottom
    half = upright_rgb(decode(_marked(), MAX_PIXELS), 180)
    assert half.size == (300, 200) and _red_at(half, (290, 100))
    cw = upright_rgb(decode(_marked(), MAX_PIXELS), 270)
    assert cw.size == (200, 300) and _red_at(cw, (100, 10))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_wins_so_nothing_is_turned_twice(orientation: int) -> None:
    data = _marked(orientation)
    by_exif = upright_rgb(decode(data, MAX_PIXELS))
    for rotation in (0, 90, 180, 270):
        both = upright_rgb(decode(data, MAX_PIXELS), rotation)
        assert both.size == by_exif.size
        assert mean_abs_diff(both, by_exif) == 0


@pytest.mark.parametrize("rotation", [90, 270])
@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_rotation_on_the_fast_path_keeps_sizes(rotation: int, mode: str) -> None:
    data = _jpeg_bytes(photo(1999, 1201, 12))
    spec = ResizeSpec(mode=mode, size=150)
    plain = resize(upright_rgb(decode(data, MAX_PIXELS), rotation), spec)
    fast = resize(upright_rgb(decode(data, MAX_PIXELS, reduce_for=(spec,)), rotation), spec,
                  reducing_gap=REDUCING_GAP)
    assert plain.size == fast.size
    assert mean_abs_diff(fast, plain) < 3.0
    if mode == "ShrinkToFit":
        assert plain.size == (90, 150)
