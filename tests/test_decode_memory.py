"""The decode memory bound (issue 24): an image whose decode and conversion to
upright RGB would hold more than OPENIMAGES_MAX_DECODE_BYTES is ``too_large``
before a pixel is decoded, in the crawl's workers, ``scrapy resize`` and
``scrapy pack``; the pixel cap alone let a 328 kB file take a worker to 1.67 GB."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.imaging.pack import PackOptions, check_image
from openimages_crawler.imaging.pillow import ImageRejected, ResizeSpec, decode
from openimages_crawler.imaging.process import Expected, process_image
from openimages_crawler.imaging.tree import ResizeJob, ResizeOptions, Resizer
from openimages_crawler.reasons import CORRUPT, TOO_LARGE
from openimages_crawler.settings import OPENIMAGES_MAX_DECODE_BYTES, OPENIMAGES_MAX_PIXELS
from openimages_crawler.testing.images import IMAGE_KINDS, bomb_png
from openimages_crawler.testing.mirror import Mirror, MirrorRow, MirrorServer, Route, metadata_row
from tests.conftest import ROOT, crawl_command, outcomes, read_csv

REFUSAL = ("13000x13000 I;16: 2,095 MiB to decode and make upright RGB, "
           "over OPENIMAGES_MAX_DECODE_BYTES (512 MiB)")


@pytest.fixture(scope="module")
def sixteen_bit_png() -> bytes:
    """The issue's file: 13000x13000 16-bit grey, 328 kB, under the pixel cap."""
    data = bomb_png(13000, bit_depth=16)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "I;16" and opened.width * opened.height < OPENIMAGES_MAX_PIXELS
    return data


def bounded_decode(data: bytes) -> Image.Image:
    return decode(data, OPENIMAGES_MAX_PIXELS, max_decode_bytes=OPENIMAGES_MAX_DECODE_BYTES)


def test_the_16_bit_png_is_too_large_before_a_pixel_is_decoded(sixteen_bit_png: bytes) -> None:
    with pytest.raises(ImageRejected) as refused:
        bounded_decode(sixteen_bit_png)
    assert (refused.value.reason, refused.value.details) == (TOO_LARGE, REFUSAL)
    # Its pixel data cut off: still too_large, where the decoder would find the cut
    # (corrupt): the refusal comes from the header, before the decoder runs.
    header_only = sixteen_bit_png[:100]
    with pytest.raises(ImageRejected) as cut:
        bounded_decode(header_only)
    assert cut.value.reason == TOO_LARGE
    with pytest.raises(ImageRejected) as decoded:
        decode(header_only, OPENIMAGES_MAX_PIXELS)
    assert decoded.value.reason == CORRUPT


def test_a_one_byte_a_pixel_image_is_counted_with_its_conversion_to_rgb() -> None:
    """169 MB decoded, under the bound, but 4 bytes a pixel more once RGB."""
    with pytest.raises(ImageRejected) as refused:
        bounded_decode(bomb_png(13000, bit_depth=1))
    assert refused.value.reason == TOO_LARGE
    assert refused.value.details.startswith("13000x13000 1: 1,773 MiB to decode and make upright RGB")


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
@pytest.mark.parametrize("fast", [True, False])
def test_every_kind_of_photo_passes_the_default_bound(kind: str, fast: bool) -> None:
    body = IMAGE_KINDS[kind][1](1)  # type: ignore[operator]
    outcome = process_image(body, Expected(), (ResizeSpec(size=128),), max_pixels=OPENIMAGES_MAX_PIXELS,
                            max_decode_bytes=OPENIMAGES_MAX_DECODE_BYTES, fast=fast)
    assert outcome.ok, outcome.details


def test_the_workers_of_scrapy_resize_and_scrapy_pack_refuse_it(sixteen_bit_png: bytes, tmp_path: Path) -> None:
    source = tmp_path / "in" / "bomb.png"
    source.parent.mkdir()
    source.write_bytes(sixteen_bit_png)
    out = tmp_path / "out"
    resized = Resizer(out, ResizeOptions(
        spec=ResizeSpec(), max_pixels=OPENIMAGES_MAX_PIXELS, max_decode_bytes=OPENIMAGES_MAX_DECODE_BYTES,
        max_bytes=1 << 26)).run(ResizeJob(source, out / "bomb.jpg"))
    assert (resized.status, resized.details) == (TOO_LARGE, REFUSAL)
    packed = check_image(source, "bomb", PackOptions(
        max_pixels=OPENIMAGES_MAX_PIXELS, max_decode_bytes=OPENIMAGES_MAX_DECODE_BYTES, max_bytes=1 << 26))
    assert (packed.status, packed.details) == (TOO_LARGE, REFUSAL)


@pytest.mark.e2e
def test_a_crawl_refuses_it_and_its_memory_stays_small(sixteen_bit_png: bytes, tmp_path: Path) -> None:
    """A real crawl of the 16-bit PNG and a small 16-bit photo: the first is a
    too_large row, the second is stored, and the crawl's peak resident memory
    (its own and its children's, from wait4) stays far below the 1.67 GB the
    file took before."""
    server = MirrorServer(("127.0.0.1",))
    mirror = Mirror()
    photo = IMAGE_KINDS["png_16bit"][1](1)  # type: ignore[operator]
    for index, (kind, body, expected) in enumerate((("bomb", sixteen_bit_png, TOO_LARGE),
                                                     ("photo", photo, "success"))):
        path = f"/{kind}.png"
        mirror.routes[(server.bases[0], path)] = Route(body=body, content_type="image/png")
        fields = metadata_row(f"{index:016x}", "train", server.bases[0] + path, body, index)
        mirror.rows.append(MirrorRow(fields, expected, kind))
    metadata = mirror.write_metadata(tmp_path / "images.csv")
    server.serve(mirror)
    store = tmp_path / "store"
    try:
        with open(tmp_path / "crawl.log", "w", encoding="utf-8") as log:
            crawl = subprocess.Popen(crawl_command(metadata, store), cwd=ROOT, stdout=log, stderr=log)
            _, status, usage = os.wait4(crawl.pid, 0)
            crawl.returncode = os.waitstatus_to_exitcode(status)  # reaped here, for its rusage
    finally:
        server.close()
    assert crawl.returncode == 0, (tmp_path / "crawl.log").read_text(encoding="utf-8")[-4000:]
    assert outcomes(store) == {row.fields["ImageID"]: [row.expected] for row in mirror.rows}
    (failure,) = read_csv(store / "train" / "images-failure.csv")[1]
    assert failure["FailureDetails"] == REFUSAL
    # A crawl of two small images peaks near 250 MiB; decoding the file whole, near 2 GiB.
    assert usage.ru_maxrss * 1024 < 800 * 2**20, f"peak {usage.ru_maxrss // 1024} MiB"
