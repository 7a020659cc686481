"""OPENIMAGES_OUTPUTS: several resized outputs from one download and one
decode, each resumed on its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from scrapy.exceptions import UsageError

from openimages_crawler.crawl.config import CrawlConfig
from tests.conftest import (
    ROOT,
    Served,
    crawl_command,
    outcomes,
    project_settings,
    run_crawl,
)
from tests.test_crawl import image_requests

TWO_OUTPUTS = [
    {"dir": "crop224", "mode": "FillCrop", "size": 224},
    {"dir": "fit640", "mode": "ShrinkToFit", "size": 640, "format": "webp", "quality": 80,
     "resample": "bicubic"},
]


def sizes(store: Path, folder: str, ext: str) -> dict[str, tuple[int, int]]:
    found = {}
    for path in (store / "train" / folder).rglob(f"*.{ext}"):
        with Image.open(path) as image:
            assert image.format == {"jpg": "JPEG", "webp": "WEBP"}[ext]
            found[path.stem] = image.size
    return found


@pytest.mark.e2e
def test_two_outputs_from_one_download(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, {"OPENIMAGES_OUTPUTS": json.dumps(TWO_OUTPUTS)})
    rows = {row.fields["ImageID"]: row for row in clean_mirror.mirror.rows}
    assert outcomes(store) == {image_id: ["success"] for image_id in rows}
    assert image_requests(clean_mirror) == len(rows)  # one download per image
    crops, fits = sizes(store, "crop224", "jpg"), sizes(store, "fit640", "webp")
    assert set(crops) == set(fits) == set(rows)
    assert set(crops.values()) == {(224, 224)}
    assert all(max(size) <= 640 for size in fits.values())
    assert any(max(size) == 640 for size in fits.values())
    assert any(max(size) < 640 for size in fits.values())  # small ones are not enlarged
    assert not (store / "train" / "images-resized").exists()  # the single output is replaced


@pytest.mark.e2e
def test_an_output_added_to_a_finished_store_builds_only_the_new_one(
    clean_mirror: Served, tmp_path: Path
) -> None:
    first = [TWO_OUTPUTS[0]]
    store = tmp_path / "with-originals"
    settings = {"OPENIMAGES_SAVE_ORIGINALS": "True"}
    run_crawl(clean_mirror.metadata, store, settings | {"OPENIMAGES_OUTPUTS": json.dumps(first)})
    crops = {p: p.stat().st_mtime_ns for p in (store / "train" / "crop224").rglob("*.jpg")}
    before = image_requests(clean_mirror)
    run_crawl(clean_mirror.metadata, store, settings | {"OPENIMAGES_OUTPUTS": json.dumps(TWO_OUTPUTS)})
    assert image_requests(clean_mirror) == before  # built from the stored originals
    assert {p: p.stat().st_mtime_ns for p in (store / "train" / "crop224").rglob("*.jpg")} == crops
    assert set(sizes(store, "fit640", "webp")) == {row.fields["ImageID"] for row in clean_mirror.mirror.rows}
    assert all(v == ["success"] for v in outcomes(store).values())  # recorded once, not again
    # Without stored originals the new output needs the downloads.
    bare = tmp_path / "bare"
    run_crawl(clean_mirror.metadata, bare, {"OPENIMAGES_OUTPUTS": json.dumps(first)})
    before = image_requests(clean_mirror)
    run_crawl(clean_mirror.metadata, bare, {"OPENIMAGES_OUTPUTS": json.dumps(TWO_OUTPUTS)})
    assert image_requests(clean_mirror) == before + len(clean_mirror.mirror.rows)
    assert set(sizes(bare, "fit640", "webp")) == set(sizes(bare, "crop224", "jpg"))
    assert all(v == ["success"] for v in outcomes(bare).values())
    # Nothing missing: a rerun downloads nothing.
    run_crawl(clean_mirror.metadata, bare, {"OPENIMAGES_OUTPUTS": json.dumps(TWO_OUTPUTS)})
    assert image_requests(clean_mirror) == before + len(clean_mirror.mirror.rows)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ("[{\"dir\": \"a\"", "not valid JSON"),
        ('{"dir": "a"}', "must be a list of dicts"),
        ('[{"dir": "a", "mode": "FillCrop"}]', "missing size"),
        ('[{"dir": "a", "mode": "FillCrop", "size": 9, "colour": "red"}]', "unknown colour"),
        ('[{"dir": "a", "mode": "Squash", "size": 9}]', "resize mode 'Squash'"),
        ('[{"dir": "a", "mode": "FillCrop", "size": "big"}]', "invalid literal"),
        ('[{"dir": "../x", "mode": "FillCrop", "size": 9}]', "plain folder name"),
        ('[{"dir": "a", "mode": "FillCrop", "size": 9}, {"dir": "a", "mode": "FillDistort", "size": 9}]',
         "its own dir"),
        ('[{"dir": "images-original", "mode": "FillCrop", "size": 9}]', "also OPENIMAGES_ORIGINALS_DIR"),
    ],
)
def test_bad_outputs_are_clear_errors(outputs: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        CrawlConfig.from_settings(project_settings({"OPENIMAGES_OUTPUTS": outputs}))


def test_outputs_from_settings_py_and_the_single_output_defaults() -> None:
    config = CrawlConfig.from_settings(project_settings({
        "OPENIMAGES_OUTPUTS": [{"dir": "a", "mode": "FillCrop", "size": 32}],
        "OPENIMAGES_RESIZE_FORMAT": "png", "OPENIMAGES_RESAMPLE": "box",
    }))
    (output,) = config.outputs
    assert (output.dir, output.spec.mode, output.spec.size, output.spec.format, output.spec.resample) == (
        "a", "FillCrop", 32, "png", "box")
    single = CrawlConfig.from_settings(project_settings({"OPENIMAGES_RESIZED_DIR": "small"})).outputs
    assert [(o.dir, o.spec.mode, o.spec.size) for o in single] == [("small", "ShrinkToFit", 224)]
    assert CrawlConfig.from_settings(project_settings({"OPENIMAGES_RESIZE": False,
                                               "OPENIMAGES_SAVE_ORIGINALS": True})).outputs == ()


@pytest.mark.e2e
def test_a_bad_outputs_setting_stops_the_crawl(clean_mirror: Served, tmp_path: Path) -> None:
    done = subprocess.run(
        crawl_command(clean_mirror.metadata, tmp_path / "store", {"OPENIMAGES_OUTPUTS": '[{"dir": "a"}]'}),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and "missing mode, size" in done.stderr
    assert image_requests(clean_mirror) == 0
