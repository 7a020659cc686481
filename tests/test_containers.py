"""Container outputs in a crawl (WebDataset, Parquet, TFRecord packs) against
the local mirror: read back with the real reader libraries and compared with
a files output of the same crawl; resumed after a kill -9 mid-pack."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.imaging.placement import placed_annotations
from openimages_crawler.imaging.pillow import Geometry, ResizeSpec
from tests.conftest import (
    ROOT,
    Served,
    crawl_command,
    kill,
    outcomes,
    run_crawl,
    serve,
    unlisted_root_names,
    wait_for,
)
from tests.test_classes import (  # noqa: F401 (sample_mirror: a fixture)
    CLASS_NAMES,
    SampleMirror,
    annotation_lines,
    images_with,
    mids_of,
    sample_mirror,
)
from tests.test_metadata import version_crawl

pytestmark = pytest.mark.e2e

CROP = {"mode": "FillCrop", "size": 96}
MIXED = [{"dir": "crop", **CROP}, {"dir": "crop-wds", **CROP, "container": "webdataset"},
         {"dir": "crop-pq", **CROP, "container": "parquet"}, {"dir": "crop-tfr", **CROP, "container": "tfrecord"}]


def manifest(store: Path, folder: str, split: str = "train") -> list[dict[str, str]]:
    path = store / split / folder / "shards.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def webdataset_samples(store: Path, folder: str, split: str = "train") -> dict[str, dict[str, bytes]]:
    import webdataset as wds

    packs = [str(store / split / folder / row["shard"]) for row in manifest(store, folder, split)]
    found: dict[str, dict[str, bytes]] = {}
    for sample in wds.WebDataset(packs, shardshuffle=False) if packs else []:
        assert sample["__key__"] not in found  # a row is in one pack, once
        found[sample["__key__"]] = sample
    return found


def parquet_rows(store: Path, folder: str, split: str = "train") -> dict[str, dict[str, object]]:
    import pyarrow.parquet as pq

    found: dict[str, dict[str, object]] = {}
    for row in manifest(store, folder, split):
        for record in pq.read_table(store / split / folder / row["shard"]).to_pylist():
            assert record["ImageID"] not in found
            found[str(record["ImageID"])] = record
    return found


def tfrecord_examples(store: Path, folder: str, split: str = "train") -> dict[str, dict[str, object]]:
    from tfrecord.reader import tfrecord_loader

    found: dict[str, dict[str, object]] = {}
    for row in manifest(store, folder, split):
        for record in tfrecord_loader(str(store / split / folder / row["shard"]), None):
            key = bytes(record["image/source_id"]).decode()
            assert key not in found
            found[key] = record
    return found


def hugging_face(store: Path, cache: Path) -> dict[str, dict[str, dict[str, object]]]:
    """The WebDataset and Parquet outputs as Hugging Face ``datasets`` loads them (offline), by ImageID."""
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    import datasets

    loaded = {}
    for name, folder in (("webdataset", "crop-wds"), ("parquet", "crop-pq")):
        files = [str(store / "train" / folder / row["shard"]) for row in manifest(store, folder)]
        found = datasets.load_dataset(name, data_files={"train": files}, split="train", cache_dir=str(cache))
        loaded[name] = {str(row["__key__"] if name == "webdataset" else row["ImageID"]): row for row in found}
    return loaded


def check_manifest(store: Path, folder: str, suffix: str) -> None:
    rows = manifest(store, folder)
    assert [row["shard"] for row in rows] == [f"{n:06d}{suffix}" for n in range(len(rows))]
    for row in rows:
        data = (store / "train" / folder / row["shard"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and int(row["bytes"]) == len(data)
    on_disk = sorted(path.name for path in (store / "train" / folder).glob(f"*{suffix}"))
    assert on_disk == [row["shard"] for row in rows]


def test_mixed_outputs_match_the_files_output_and_a_rerun_adds_nothing(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    settings = {"OPENIMAGES_OUTPUTS": json.dumps(MIXED), "OPENIMAGES_SHARD_SIZE": "4",
                "OPENIMAGES_SAVE_ORIGINALS": "True", "OPENIMAGES_ORIGINALS_CONTAINER": "webdataset",
                "OPENIMAGES_PROCESSES": "2"}
    run_crawl(mirror.metadata, store, settings)
    expected = mirror.mirror.expected()
    assert outcomes(store) == {image_id: [outcome] for image_id, outcome in expected.items()}
    succeeded = {image_id for image_id, outcome in expected.items() if outcome == "success"}
    files = {path.stem: path.read_bytes() for path in (store / "train" / "crop").rglob("*.jpg")}
    assert set(files) == succeeded

    samples = webdataset_samples(store, "crop-wds")
    assert {key: sample["jpg"] for key, sample in samples.items()} == files  # the same bytes
    success_rows = {row["ImageID"]: row for row in csv.DictReader(
        io.StringIO((store / "train" / "images-success.csv").read_text(), newline=""))}
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        assert {name: meta[name] for name in success_rows[key]} == success_rows[key]
        assert (meta["width"], meta["height"]) == (96, 96)
    table = parquet_rows(store, "crop-pq")
    assert {key: record["image"] for key, record in table.items()} == files
    assert all(record["format"] == "jpg" and record["width"] == record["height"] == 96 for record in table.values())
    assert {key: record["OriginalURL"] for key, record in table.items()} == {
        key: success_rows[key]["OriginalURL"] for key in succeeded}
    examples = tfrecord_examples(store, "crop-tfr")
    assert {key: bytes(record["image/encoded"]) for key, record in examples.items()} == files
    originals = webdataset_samples(store, "images-original")
    assert set(originals) == succeeded
    for key, sample in originals.items():
        body = sample.get("jpg", sample.get("png"))
        assert base64.b64encode(hashlib.md5(body).digest()).decode() == success_rows[key]["OriginalMD5"]
    loaded = hugging_face(store, tmp_path / "hf-cache")
    assert {key: sample["json"]["ImageID"] for key, sample in loaded["webdataset"].items()} == {
        key: key for key in succeeded}
    assert {key: row["image"] for key, row in loaded["parquet"].items()} == files
    for folder, suffix in (("crop-wds", ".tar"), ("crop-pq", ".parquet"), ("crop-tfr", ".tfrecord"),
                           ("images-original", ".tar")):
        check_manifest(store, folder, suffix)
        assert sum(int(row["count"]) for row in manifest(store, folder)) == len(succeeded)
    assert not list(store.glob(".tmp/*/*"))  # nothing left in staging

    # A rerun: nothing fetched, no pack added or rewritten.
    before = {path: path.stat().st_mtime_ns for path in (store / "train").rglob("*") if path.is_file()
              and path.suffix in (".tar", ".parquet", ".tfrecord")}
    requests = sum(mirror.server.counter.requests.values())
    run_crawl(mirror.metadata, store, settings)
    assert sum(mirror.server.counter.requests.values()) == requests
    after = {path: path.stat().st_mtime_ns for path in (store / "train").rglob("*") if path.is_file()
             and path.suffix in (".tar", ".parquet", ".tfrecord")}
    assert after == before


def test_kill_9_mid_pack_then_resume_leaves_every_row_in_one_whole_pack(tmp_path: Path) -> None:
    served = serve(tmp_path, faults=False, copies=6)
    for route in served.mirror.routes.values():
        route.delay = 0.15
    store = tmp_path / "store"
    settings = {"OPENIMAGES_RESIZE_CONTAINER": "webdataset", "OPENIMAGES_SHARD_SIZE": "5",
                "CONCURRENT_REQUESTS": "4"}
    try:
        process = subprocess.Popen(crawl_command(served.metadata, store, settings), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        # Killed with packs published and one being filled in staging (not under a final name).
        wait_for(lambda: len(manifest(store, "images-resized")) >= 2 and any(store.glob(".tmp/*/*.tar")),
                 timeout=90, interval=0.05)
        kill(process)
        process.wait(timeout=30)
        published = {key for key in webdataset_samples(store, "images-resized")}
        requests = Counter(served.server.counter.requests)

        run_crawl(served.metadata, store, settings, timeout=180)
        expected = served.mirror.expected()
        assert outcomes(store) == {image_id: ["success"] for image_id in expected}
        samples = webdataset_samples(store, "images-resized")  # asserts one pack per row
        assert set(samples) == set(expected)
        check_manifest(store, "images-resized", ".tar")
        assert not list((store / ".tmp").rglob("*.tar"))  # the dead process's staging is gone
        paths = {row.fields["ImageID"]: "/" + row.fields["OriginalURL"].split("/", 3)[3]
                 for row in served.mirror.rows}
        for image_id in published:  # in a published pack before the kill: not fetched again
            assert served.server.counter.requests[paths[image_id]] == requests[paths[image_id]], image_id
    finally:
        served.server.close()


def test_a_container_output_added_to_a_finished_files_store_comes_from_the_originals(
    clean_mirror: Served, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    files = {"OPENIMAGES_SAVE_ORIGINALS": "True", "OPENIMAGES_OUTPUTS": json.dumps([{"dir": "crop", **CROP}])}
    run_crawl(clean_mirror.metadata, store, files)
    requests = sum(clean_mirror.server.counter.requests.values())
    with_packs = {**files, "OPENIMAGES_SHARD_SIZE": "5", "OPENIMAGES_OUTPUTS": json.dumps(
        [{"dir": "crop", **CROP}, {"dir": "crop-pq", **CROP, "container": "parquet"}])}
    run_crawl(clean_mirror.metadata, store, with_packs)
    assert sum(clean_mirror.server.counter.requests.values()) == requests  # no download
    crops = {path.stem: path.read_bytes() for path in (store / "train" / "crop").rglob("*.jpg")}
    assert {key: record["image"] for key, record in parquet_rows(store, "crop-pq").items()} == crops
    check_manifest(store, "crop-pq", ".parquet")


def official_annotations(split: str, image_ids: set[str], mids: set[str]) -> dict[str, dict[str, list[dict]]]:
    """Each image's labels and boxes of ``mids``, read from the sample files independently of the crawler."""
    with open(CLASS_NAMES, newline="", encoding="utf-8") as handle:
        names = {mid: name for mid, name in csv.reader(handle)}
    order = {mid: number for number, mid in enumerate(names, 1)}
    found: dict[str, dict[str, list[dict]]] = {image_id: {"labels": [], "boxes": []} for image_id in image_ids}
    for kind in ("labels", "boxes"):
        header, lines = annotation_lines(split, kind)
        for record in csv.DictReader([header, *lines]):
            if record["ImageID"] not in image_ids or record["LabelName"] not in mids:
                continue
            item: dict[str, object] = {
                "LabelName": record["LabelName"], "DisplayName": names[record["LabelName"]],
                "ClassIndex": order[record["LabelName"]], "Source": record["Source"],
                "Confidence": float(record["Confidence"])}
            if kind == "boxes":
                item |= {key: float(record[key]) for key in ("XMin", "XMax", "YMin", "YMax")}
                item |= {key: int(record[key]) for key in ("IsOccluded", "IsTruncated", "IsGroupOf",
                                                            "IsDepiction", "IsInside")}
            found[record["ImageID"]][kind].append(item)
    return found


def publish_v4_turning_a_third(mirror: SampleMirror) -> set[str]:
    """The sample as V4, a third of its validation rows with Rotation 90 (no
    EXIF in these files: the metadata's turn applies); those rows' ImageIDs."""
    turned = {row["ImageID"] for row in mirror.rows["validation"][::3]}
    for row in mirror.rows["validation"]:
        if row["ImageID"] in turned:
            row["Rotation"] = "90"
    mirror.publish_version(4)
    return turned


def sample_geometry(image_id: str, turned: set[str]) -> Geometry:
    """How the sample's 64x48 files are made upright."""
    return Geometry(Image.Transpose.ROTATE_90, (48, 64)) if image_id in turned else Geometry(None, (64, 48))


def test_samples_carry_their_labels_and_boxes_in_the_stored_images_coordinates(
    sample_mirror: SampleMirror, tmp_path: Path  # noqa: F811 (the fixture imported above)
) -> None:
    turned = publish_v4_turning_a_third(sample_mirror)
    store = tmp_path / "store"
    crop, fit = {"mode": "FillCrop", "size": 32}, {"mode": "ShrinkToFit", "size": 40}
    outputs = [{"dir": "crop-wds", **crop, "container": "webdataset"}, {"dir": "fit-pq", **fit, "container": "parquet"},
               {"dir": "fit-tfr", **fit, "container": "tfrecord"}]
    settings = {"OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False",
                "OPENIMAGES_OUTPUTS": json.dumps(outputs), "OPENIMAGES_SAVE_ORIGINALS": "True",
                "OPENIMAGES_ORIGINALS_CONTAINER": "webdataset", "OPENIMAGES_SHARD_SIZE": "7"}
    done = version_crawl(store, settings, version="4", subset="validation", classes="Person,Car")
    assert done.returncode == 0, done.stderr[-3000:]
    mids = mids_of("Person", "Car")
    chosen = images_with("validation", "boxes", mids)
    assert outcomes(store, "validation") == {image_id: ["success"] for image_id in chosen}
    assert not unlisted_root_names(os.listdir(store), {"validation"})
    expected = official_annotations("validation", chosen, mids)
    assert any(expected[image_id]["boxes"] for image_id in chosen & turned)

    def geometry(image_id: str) -> Geometry:
        return sample_geometry(image_id, turned)

    samples = webdataset_samples(store, "crop-wds", "validation")
    assert set(samples) == chosen
    clipped = 0
    for image_id, sample in samples.items():
        meta = json.loads(sample["json"])
        placed = placed_annotations(expected[image_id], geometry(image_id), ResizeSpec(**crop))
        assert {"labels": meta["labels"], "boxes": meta["boxes"]} == placed
        assert (meta["width"], meta["height"]) == (32, 32)
        clipped += sum(0.0 in (box["XMin"], box["YMin"]) or 1.0 in (box["XMax"], box["YMax"])
                       for box in placed["boxes"])
    assert clipped > 0  # some boxes reach past the centred square
    for image_id, row in parquet_rows(store, "fit-pq", "validation").items():
        placed = placed_annotations(expected[image_id], geometry(image_id), ResizeSpec(**fit))
        assert {"labels": row["labels"], "boxes": row["boxes"]} == placed
        assert (row["width"], row["height"]) == ((30, 40) if image_id in turned else (40, 30))
    examples = tfrecord_examples(store, "fit-tfr", "validation")
    assert set(examples) == chosen
    for image_id, record in examples.items():
        placed = placed_annotations(expected[image_id], geometry(image_id), ResizeSpec(**fit))
        assert list(record.get("image/object/bbox/xmin", [])) == pytest.approx(
            [box["XMin"] for box in placed["boxes"]], abs=1e-6)
        assert list(record.get("image/object/class/label", [])) == [box["ClassIndex"] for box in placed["boxes"]]
    for image_id, sample in webdataset_samples(store, "images-original", "validation").items():
        meta = json.loads(sample["json"])  # an original is stored as downloaded: its boxes are the file's
        assert meta["boxes"] == expected[image_id]["boxes"] and meta["labels"] == expected[image_id]["labels"]
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    import datasets

    files = [str(store / "validation" / "fit-pq" / row["shard"]) for row in manifest(store, "fit-pq", "validation")]
    loaded = datasets.load_dataset("parquet", data_files={"train": files}, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    for row in loaded:
        placed = placed_annotations(expected[row["ImageID"]], geometry(row["ImageID"]), ResizeSpec(**fit))
        assert [box["XMin"] for box in row["boxes"]] == [box["XMin"] for box in placed["boxes"]]
    import duckdb

    counted = duckdb.sql(
        "SELECT b.DisplayName, count(*) FROM (SELECT unnest(boxes) AS b FROM read_parquet($files)) GROUP BY 1",
        params={"files": files}).fetchall()
    assert dict(counted) == dict(Counter(box["DisplayName"] for image in expected.values() for box in image["boxes"]))
