"""COCO, YOLO and Pascal VOC exports (``outputs``): a store of real resized
images with dark rectangles where their boxes are; every exported box must
land on its rectangle within a pixel, on each resize mode, with an EXIF turn
and a metadata Rotation, with boxes FillCrop clips and drops."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from openimages_crawler.imaging.boxes import NormBox
from openimages_crawler.imaging.placement import placed_annotations
from openimages_crawler.imaging.pillow import Geometry, ResizeSpec
from openimages_crawler.imaging.process import Expected, process_image
from openimages_crawler.outputs.export import ExportError, ExportRequest, export_subset
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore
from tests.conftest import ROOT
from tests.test_boxes import STORED_AS, found, jpeg
from tests.test_classes import (  # noqa: F401 (sample_mirror: a fixture)
    CLASS_NAMES,
    SampleMirror,
    images_with,
    mids_of,
    sample_mirror,
)
from tests.test_containers import (
    official_annotations,
    publish_v4_turning_a_third,
    sample_geometry,
)
from tests.test_database import readme_queries
from tests.test_metadata import version_crawl

OUTPUTS = {"fit": ResizeSpec("ShrinkToFit", 96), "distort": ResizeSpec("FillDistort", 64),
           "crop": ResizeSpec("FillCrop", 80)}
CLASSES = [("/m/01g317", "Person"), ("/m/0k4j", "Car"), ("/m/0ccs93", "Don't \"quote\": me")]
HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"
LAYOUT = StoreLayout()


def boxed_image(size: tuple[int, int], box: NormBox) -> Image.Image:
    image = Image.new("RGB", size, "white")
    width, height = size
    ImageDraw.Draw(image).rectangle((round(box.xmin * width), round(box.ymin * height),
                                     round(box.xmax * width) - 1, round(box.ymax * height) - 1), fill="black")
    return image


# ImageID -> (upright picture size, the box in it, EXIF orientation, metadata Rotation)
CASES = {
    "00000000000000a1": ((200, 120), NormBox(0.30, 0.60, 0.20, 0.70), None, 0),
    "00000000000000a2": ((180, 240), NormBox(0.10, 0.45, 0.55, 0.90), 6, 0),  # EXIF: rotate to show upright
    "00000000000000a3": ((160, 100), NormBox(0.55, 0.95, 0.10, 0.40), None, 90),  # the metadata's Rotation
    "00000000000000a4": ((240, 120), NormBox(0.02, 0.20, 0.30, 0.60), 3, 0),  # FillCrop cuts it away
    "00000000000000a5": ((240, 120), NormBox(0.10, 0.40, 0.20, 0.80), None, 0),  # FillCrop clips it
}


def build_store(root: Path) -> tuple[LocalStore, dict[str, NormBox]]:
    """The store a crawl would leave: resized files, results, annotations; the
    boxes as Open Images gives them (fractions of the file's pixels)."""
    store = LocalStore(str(root))
    rows, boxes = [], {}
    for image_id, (size, box, orientation, rotation) in CASES.items():
        upright = boxed_image(size, box)
        if rotation:  # the file is stored unturned: Rotation says how to turn it upright
            stored = upright.transpose(Image.Transpose.ROTATE_270 if rotation == 90 else Image.Transpose.ROTATE_180)
        else:
            stored = upright.transpose(STORED_AS[orientation]) if orientation else upright
        in_file = found(stored)
        assert in_file is not None
        boxes[image_id] = in_file
        outcome = process_image(jpeg(stored, orientation), Expected(), list(OUTPUTS.values()),
                                max_pixels=10**7, rotation=rotation)
        assert outcome.ok
        for folder, data in zip(OUTPUTS, outcome.encoded, strict=True):
            path = store.path(LAYOUT.image_key("train", folder, image_id, "jpg"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        rows.append(image_id)
    lines = [HEADER]
    for image_id, box in boxes.items():
        lines.append(f"{image_id},freeform,/m/01g317,1,{box.xmin:.6f},{box.xmax:.6f},{box.ymin:.6f},{box.ymax:.6f},"
                     "0,1,0,0,0")
        lines.append(f"{image_id},freeform,/m/0ccs93,1,{box.xmin:.6f},{box.xmax:.6f},{box.ymin:.6f},"
                     f"{box.ymax:.6f},1,0,1,0,0")
    lines.append("00000000000000ff,freeform,/m/0k4j,1,0.1,0.2,0.1,0.2,0,0,0,0,0")  # an image not stored
    (root / "train" / "annotations-bbox.csv").write_text("\n".join(lines) + "\n")
    (root / "train" / "class-descriptions.csv").write_text(
        "".join(f'{mid},"{name.replace(chr(34), chr(34) * 2)}"\n' for mid, name in CLASSES))
    (root / "train" / "images-success.csv").write_text(
        "ImageID,OriginalURL\n" + "".join(f"{image_id},https://x/{image_id}.jpg\n"
                                          for image_id in [*rows, "00000000000000ee"]))
    return store, boxes


def dark_box(path: Path) -> NormBox | None:
    with Image.open(path) as image:
        return found(image)


def near(actual: tuple[float, float, float, float], expected: NormBox, width: int, height: int) -> bool:
    """``actual`` (x, y, w, h pixels) within a pixel of ``expected``."""
    x, y, w, h = actual
    return all(abs(a - b) <= 1.01 for a, b in ((x, expected.xmin * width), (y, expected.ymin * height),
                                               (x + w, expected.xmax * width), (y + h, expected.ymax * height)))


@pytest.mark.parametrize("folder", list(OUTPUTS))
def test_every_exported_box_lands_on_its_pixels(tmp_path: Path, folder: str) -> None:
    from pycocotools.coco import COCO

    store, _ = build_store(tmp_path)
    store.open()
    counts = export_subset(store, LAYOUT, "train", tmp_path / "train" / "images-success.csv",
                           ExportRequest(("coco", "yolo", "voc"), folder))
    store.close()
    assert counts.images == len(CASES) and counts.not_found == 1  # a success row without its file
    coco = COCO(str(tmp_path / "train" / "coco" / "instances.json"))
    # Every class of the store's annotations (Car's only box is on an image not stored).
    assert sorted(coco.getCatIds()) == [1, 2, 3] and coco.loadCats(3)[0]["name"] == CLASSES[2][1]
    assert coco.loadCats(1)[0]["label_name"] == "/m/01g317"
    kept = 0
    for image in coco.loadImgs(coco.getImgIds()):
        stored = tmp_path / "train" / "coco" / image["file_name"]
        with Image.open(stored) as opened:
            assert opened.size == (image["width"], image["height"])
        dark = dark_box(stored)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        if dark is None:  # the crop cut the box away: its annotations are dropped
            assert folder == "crop" and annotations == [] and image["open_images_id"] == "00000000000000a4"
            continue
        assert {ann["category_id"] for ann in annotations} == {1, 3}
        for ann in annotations:
            assert near(ann["bbox"], dark, image["width"], image["height"]), (image, ann)
            assert ann["iscrowd"] == ann["is_group_of"] == (1 if ann["category_id"] == 3 else 0)
            assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.05)
            kept += 1
        # YOLO: the same box, centre and size as fractions; the image linked beside the labels.
        yolo = tmp_path / "train" / "yolo"
        lines = (yolo / "labels" / f"{image['open_images_id']}.txt").read_text().splitlines()
        names = (yolo / "classes.txt").read_text().splitlines()
        assert names == ["Person", "Car", CLASSES[2][1]]
        for line in lines:
            number, xc, yc, w, h = line.split()
            assert names[int(number)] in ("Person", CLASSES[2][1])  # never Car: its box is elsewhere
            width, height = image["width"], image["height"]
            pixels = ((float(xc) - float(w) / 2) * width, (float(yc) - float(h) / 2) * height,
                      float(w) * width, float(h) * height)
            assert near(pixels, dark, width, height)
        link = yolo / "images" / f"{image['open_images_id']}.jpg"
        assert link.is_symlink() and link.resolve() == stored.resolve()
        # VOC: 1-based inclusive pixels.
        voc = ElementTree.parse(tmp_path / "train" / "voc" / "Annotations" / f"{image['open_images_id']}.xml")
        assert int(voc.findtext("size/width") or 0) == image["width"]
        for item in voc.findall("object"):
            xmin, ymin, xmax, ymax = (int(item.findtext(f"bndbox/{key}") or 0) for key in
                                      ("xmin", "ymin", "xmax", "ymax"))
            assert near((xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1), dark, image["width"], image["height"])
            assert item.findtext("name") in ("Person", CLASSES[2][1])
    expected_kept = 2 * (len(CASES) - (1 if folder == "crop" else 0))
    assert kept == expected_kept and counts.boxes == expected_kept
    assert counts.boxes_left_out == (2 if folder == "crop" else 0)
    data = yaml.safe_load((tmp_path / "train" / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "Person", 1: "Car", 2: CLASSES[2][1]} and Path(data["path"]) == (tmp_path / "train" / "yolo")
    assert (Path(data["path"]) / data["train"]).is_dir()
    staging = tmp_path / ".tmp"
    assert not staging.exists() or not any(staging.iterdir())  # nothing left in staging


def test_a_rerun_replaces_the_export_whole_and_classes_narrow_it(tmp_path: Path) -> None:
    store, _ = build_store(tmp_path)
    store.open()
    success = tmp_path / "train" / "images-success.csv"
    export_subset(store, LAYOUT, "train", success, ExportRequest(("yolo",), "fit"))
    stale = tmp_path / "train" / "yolo" / "labels" / "stale.txt"
    stale.write_text("0 0.5 0.5 0.1 0.1\n")
    counts = export_subset(store, LAYOUT, "train", success, ExportRequest(("yolo", "coco"), "fit", ["person"]))
    assert not stale.exists()  # the folder was replaced, not added to
    assert (tmp_path / "train" / "yolo" / "classes.txt").read_text() == "Person\n"
    assert counts.boxes == len(CASES)
    coco = json.loads((tmp_path / "train" / "coco" / "instances.json").read_text())
    assert [cat["name"] for cat in coco["categories"]] == ["Person"]
    assert {ann["label_name"] for ann in coco["annotations"]} == {"/m/01g317"}
    with pytest.raises(ExportError, match="unknown class 'Pedestrian'"):
        export_subset(store, LAYOUT, "train", success, ExportRequest(("coco",), "fit", ["Pedestrian"]))
    with pytest.raises(ExportError, match="not in the store"):
        export_subset(store, LAYOUT, "train", success, ExportRequest(("coco",), "nothing-here"))
    os.remove(tmp_path / "train" / "annotations-bbox.csv")
    with pytest.raises(ExportError, match="-a annotations=true"):
        export_subset(store, LAYOUT, "train", success, ExportRequest(("coco",), "fit"))
    store.close()


def test_originals_keep_the_official_boxes(tmp_path: Path) -> None:
    """An original is stored as downloaded: the boxes are the file's pixels', unturned."""
    store, boxes = build_store(tmp_path)
    for image_id, (size, box, orientation, rotation) in CASES.items():
        upright = boxed_image(size, box)
        stored = upright.transpose(STORED_AS[orientation]) if orientation else upright
        path = store.path(LAYOUT.image_key("train", "images-original", image_id, "jpg"))
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        stored.save(buffer, "JPEG", quality=95)
        path.write_bytes(buffer.getvalue())
        if rotation:
            boxes[image_id] = found(stored)  # this copy is stored upright: the test's box file says so
    lines = [HEADER] + [f"{i},freeform,/m/01g317,1,{b.xmin},{b.xmax},{b.ymin},{b.ymax},0,0,0,0,0"
                        for i, b in boxes.items()]
    (tmp_path / "train" / "annotations-bbox.csv").write_text("\n".join(lines) + "\n")
    store.open()
    export_subset(store, LAYOUT, "train", tmp_path / "train" / "images-success.csv",
                  ExportRequest(("coco",), "images-original"))
    store.close()
    coco = json.loads((tmp_path / "train" / "coco" / "instances.json").read_text())
    for image in coco["images"]:
        (ann,) = [ann for ann in coco["annotations"] if ann["image_id"] == image["id"]]
        dark = dark_box(tmp_path / "train" / "coco" / image["file_name"])
        assert dark is not None and near(ann["bbox"], dark, image["width"], image["height"])
    with open(tmp_path / "train" / "images-success.csv", newline="") as handle:
        assert len(coco["images"]) == sum(1 for _ in csv.DictReader(handle)) - 1


# --- end to end -------------------------------------------------------------------


def run_export_command(*options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scrapy", "export", *options], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.e2e
def test_a_crawl_exports_coco_and_yolo_and_the_command_exports_a_container(
    sample_mirror: SampleMirror, tmp_path: Path  # noqa: F811 (the fixture imported above)
) -> None:
    from pycocotools.coco import COCO

    turned = publish_v4_turning_a_third(sample_mirror)
    store = tmp_path / "store"
    crop, fit = {"mode": "FillCrop", "size": 32}, {"mode": "ShrinkToFit", "size": 40}
    outputs = [{"dir": "crop", **crop}, {"dir": "fit-pq", **fit, "container": "parquet"}]
    settings = {"OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False",
                "OPENIMAGES_OUTPUTS": json.dumps(outputs)}
    done = version_crawl(store, settings, version="4", subset="validation", classes="Person,Car",
                         export="coco,yolo")
    assert done.returncode == 0, done.stderr[-3000:]
    mids = mids_of("Person", "Car")
    chosen = images_with("validation", "boxes", mids)
    expected = official_annotations("validation", chosen, mids)

    def geometry(image_id: str) -> Geometry:
        return sample_geometry(image_id, turned)

    coco = COCO(str(store / "validation" / "coco" / "instances.json"))
    images = {image["open_images_id"]: image for image in coco.loadImgs(coco.getImgIds())}
    assert set(images) == chosen
    for image_id, image in images.items():
        placed = placed_annotations(expected[image_id], geometry(image_id), ResizeSpec(**crop))["boxes"]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert [ann["bbox"] for ann in annotations] == [
            [round(v, 2) for v in NormBox(b["XMin"], b["XMax"], b["YMin"], b["YMax"]).pixels(32, 32)] for b in placed]
        assert (store / "validation" / "coco" / image["file_name"]).is_file()
        assert (store / "validation" / "yolo" / "labels" / f"{image_id}.txt").read_text().count("\n") == len(placed)
    assert {cat["name"] for cat in coco.loadCats(coco.getCatIds())} == {"Person", "Car"}
    # The crawl's database answers the README's queries.
    import duckdb

    with duckdb.connect(str(store / "openimages.duckdb"), read_only=True) as con:
        person_and_car, by_host, per_class = (con.execute(sql).fetchall() for sql in readme_queries())
    names = {mid: name for name in ("Person", "Car") for mid in mids_of(name)}
    both = {image_id for image_id, found in expected.items()
            if {names[box["LabelName"]] for box in found["boxes"]} == {"Person", "Car"}}
    assert both and {image_id for image_id, _ in person_and_car} == both
    assert by_host == []  # nothing failed
    boxes = Counter(names[box["LabelName"]] for found in expected.values() for box in found["boxes"])
    assert {name: count for name, count, _ in per_class} == dict(boxes)
    assert (store / "validation" / "class-descriptions.csv").read_bytes() == CLASS_NAMES.read_bytes()

    # The container output, by the command: the image files are inside the packs.
    voc = run_export_command("voc", "--store", str(store), "--subset", "validation", "--output", "fit-pq",
                             "--classes", "car")
    assert voc.returncode == 0, voc.stderr[-3000:]
    car = mids_of("Car")
    for image_id in chosen:
        tree = ElementTree.parse(store / "validation" / "voc" / "Annotations" / f"{image_id}.xml")
        assert "#" in (tree.findtext("path") or "")
        placed = placed_annotations(expected[image_id], geometry(image_id), ResizeSpec(**fit))["boxes"]
        assert len(tree.findall("object")) == sum(box["LabelName"] in car for box in placed)
        width = int(tree.findtext("size/width") or 0)
        assert width == (30 if image_id in turned else 40)

    for options, message in ((("bogus", "--store", str(store)), "give coco, yolo, voc"),
                             (("coco", "--store", str(tmp_path / "nowhere")), "not a folder"),
                             (("coco", "--store", "s3://bucket/x"), "folder store"),
                             (("coco", "--store", str(store), "--subset", "../x"), "plain subset name")):
        failed = run_export_command(*options)
        assert failed.returncode == 2 and message in failed.stderr, (options, failed.stderr[-1000:])
        assert "Traceback" not in failed.stderr
    missing = run_export_command("coco", "--store", str(store), "--output", "nothing")
    assert missing.returncode == 1 and "give an output with --output" in missing.stderr


def test_resized_files_without_provenance_are_left_out_not_guessed(tmp_path: Path) -> None:
    store, _ = build_store(tmp_path)
    foreign = store.path(LAYOUT.image_key("train", "crop", "00000000000000a1", "jpg"))
    with Image.open(foreign) as image:
        image.save(foreign, "JPEG")  # the same pixels, no EXIF: as another tool would write them
    store.open()
    counts = export_subset(store, LAYOUT, "train", tmp_path / "train" / "images-success.csv",
                           ExportRequest(("coco",), "crop"))
    store.close()
    assert counts.no_geometry == 1 and counts.images == len(CASES) - 1 and counts.not_found == 1
    coco = json.loads((tmp_path / "train" / "coco" / "instances.json").read_text())
    assert "00000000000000a1" not in {image["open_images_id"] for image in coco["images"]}


# --- --class-order ultralytics ----------------------------------------------------------

BOXABLE = Path(__file__).resolve().parent / "data" / "class-descriptions-boxable.csv"
ULTRALYTICS_NAMES = Path(__file__).resolve().parent / "data" / "ultralytics-open-images-v7-names.txt"
TULIP = ("/m/0100nhbf", "Sprenger's tulip")  # a class of the class descriptions that has no boxes in Open Images


def ultralytics_names() -> list[str]:
    """Ultralytics' open-images-v7.yaml names, 0..600 (the file's first line says where they come from)."""
    return [line for line in ULTRALYTICS_NAMES.read_text(encoding="utf-8").splitlines()
            if not line.startswith("#")]


def expected_names() -> list[str]:
    """The yaml's names as the boxable file spells them: the yaml has since renamed its 166,
    Doughnut (as an older copy of it, in WongKinYiu/yolov9@cca97ae, still says), to Donut,
    number kept."""
    names = ultralytics_names()
    assert names[166] == "Donut"
    return names[:166] + ["Doughnut"] + names[167:]


def read_yolo(folder: Path) -> tuple[list[str], dict[str, list[tuple[int, float, float, float, float]]]]:
    """A YOLO export as Ultralytics reads one (its documented format; the checks of
    ultralytics.data.utils.verify_image_label): data.yaml's names, and each label
    file's rows ``class x_center y_center width height``: five columns, an integer
    class below the number of names, coordinates within [0, 1], no duplicate row."""
    data = yaml.safe_load((folder / "data.yaml").read_text(encoding="utf-8"))
    names = data["names"]
    assert list(names) == list(range(len(names)))  # a dict numbered from 0, as Ultralytics wants
    labels = {}
    for path in sorted((folder / "labels").iterdir()):
        rows = []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            fields = line.split()
            assert len(fields) == 5, (path, line)
            number, *box = float(fields[0]), *map(float, fields[1:])
            assert number % 1 == 0 and 0 <= number < len(names), (path, line)
            assert all(0 <= value <= 1 for value in box), (path, line)
            rows.append((int(number), *box))
        assert len(set(rows)) == len(rows), path
        labels[path.stem] = rows
        assert (folder / "images" / f"{path.stem}.jpg").exists()  # where Ultralytics looks for them
    return [names[number] for number in range(len(names))], labels


def test_ultralytics_order_reproduces_the_yaml_from_the_boxable_file() -> None:
    """``tests/data/class-descriptions-boxable.csv`` is the official
    ``v5/class-descriptions-boxable.csv`` (the one FiftyOne reads for V6 and V7,
    whose sorted names Ultralytics' yaml lists), byte for byte: 12,011 bytes, MD5
    9846fd22fd2e68b45e3f3810a4c2a32a, as a git-annex mirror of the bucket recorded it
    (datasets-mila/datasets--open_images). It was rebuilt from two public copies, no
    download: the label ids and their order (by label id) from a copy of V4's
    ``2018_04/class-descriptions-boxable.csv`` (rolfstarke/cvmgr@b51fa86, whose 601
    ids are all in ``v3-sample/class-descriptions.csv`` too), the V5 display names in
    that order from MMDetection 3.3.0's ``oid_v6_classes()``; the two lists differ in
    16 names only, V5's disambiguations (Organ -> Organ (Musical Instrument), Asparagus
    -> Garden Asparagus, ...); lines end in CRLF, the last in LF, as the size and MD5 say."""
    import hashlib

    from openimages_crawler.dataset.annotations import ClassNames
    from openimages_crawler.outputs.export import ultralytics_classes

    assert hashlib.md5(BOXABLE.read_bytes()).hexdigest() == "9846fd22fd2e68b45e3f3810a4c2a32a"
    boxable = ClassNames.load(BOXABLE)
    assert len(boxable.names) == 601 and list(boxable.names)[:2] == ["/m/011k07", "/m/011q46kg"]  # no header
    assert list(boxable.names.values()) != sorted(boxable.names.values())
    ordered = ultralytics_classes(boxable, ClassNames.load(CLASS_NAMES))
    assert [cls.name for cls in ordered] == expected_names()
    assert len({cls.mid for cls in ordered}) == 601
    v3_lines = {mid: number for number, mid in enumerate(ClassNames.load(CLASS_NAMES).names, 1)}
    assert [cls.index for cls in ordered] == [v3_lines[cls.mid] for cls in ordered]  # the store's ClassIndex
    by_name = {cls.name: number for number, cls in enumerate(ordered)}
    assert (by_name["Accordion"], by_name["Person"], by_name["Zucchini"]) == (0, 381, 600)
    # Upper and lower case do not matter: no two of these names differ by case only, at any position.
    assert sorted(boxable.names.values(), key=str.casefold) == sorted(boxable.names.values())


def boxable_store(root: Path) -> tuple[LocalStore, dict[str, NormBox]]:
    """``build_store`` with the boxable file beside the boxes, and a box of a class
    that is not boxable on each stored image."""
    store, boxes = build_store(root)
    (root / "train" / "class-descriptions-boxable.csv").write_bytes(BOXABLE.read_bytes())
    with open(root / "train" / "class-descriptions.csv", "a", encoding="utf-8") as out:
        out.write(f"{TULIP[0]},{TULIP[1]}\n")
    with open(root / "train" / "annotations-bbox.csv", "a", encoding="utf-8") as out:
        out.writelines(f"{image_id},freeform,{TULIP[0]},1,0.4,0.6,0.4,0.6,0,0,0,0,0\n" for image_id in boxes)
    return store, boxes


def test_ultralytics_order_numbers_yolo_as_the_yaml_and_keeps_coco(tmp_path: Path) -> None:
    store, _ = boxable_store(tmp_path / "ultralytics")
    plain, _ = boxable_store(tmp_path / "store")
    names = ultralytics_names()
    success = "train/images-success.csv"
    for one in (store, plain):
        one.open()
    counts = export_subset(store, LAYOUT, "train", tmp_path / "ultralytics" / success,
                           ExportRequest(("yolo", "coco"), "fit", class_order="ultralytics"))
    default = export_subset(plain, LAYOUT, "train", tmp_path / "store" / success,
                            ExportRequest(("yolo", "coco"), "fit"))
    # Each stored image: Person, the class named Don't "quote": me in this store's class descriptions
    # (/m/0ccs93, Canary in the boxable file) and the tulip, left out of YOLO and counted.
    assert counts.not_boxable == counts.images == len(CASES) and default.not_boxable == 0
    assert counts.boxes == default.boxes == 3 * len(CASES)
    exported, labels = read_yolo(tmp_path / "ultralytics" / "train" / "yolo")
    assert exported == expected_names()  # all 601, boxes or not, in the yaml's order
    assert (tmp_path / "ultralytics" / "train" / "yolo" / "classes.txt").read_text().splitlines() == exported
    _, plain_labels = read_yolo(tmp_path / "store" / "train" / "yolo")
    store_names = (tmp_path / "store" / "train" / "yolo" / "classes.txt").read_text().splitlines()
    assert store_names == ["Person", "Car", CLASSES[2][1], TULIP[1]]  # the default order: as before
    as_yaml = {"Person": names.index("Person"), CLASSES[2][1]: names.index("Canary")}
    assert as_yaml == {"Person": 381, CLASSES[2][1]: 84}
    assert set(labels) == set(plain_labels) == set(CASES)
    for image_id, rows in labels.items():
        # The same boxes, each numbered as the yaml numbers its class; the tulip's box is left out.
        renumbered = sorted((as_yaml[store_names[number]], *box) for number, *box in plain_labels[image_id]
                            if store_names[number] != TULIP[1])
        assert sorted(rows) == renumbered and {number for number, *_ in rows} == {381, 84}
    # COCO keeps the store's ClassIndex and names, the tulip's box included.
    for folder in ("ultralytics", "store"):
        coco = json.loads((tmp_path / folder / "train" / "coco" / "instances.json").read_text())
        assert [(cat["id"], cat["name"]) for cat in coco["categories"]] == [
            (1, "Person"), (2, "Car"), (3, CLASSES[2][1]), (4, TULIP[1])]
        assert len(coco["annotations"]) == 3 * len(CASES)
    # Only some classes: only their boxes, numbered and named as before.
    counts = export_subset(store, LAYOUT, "train", tmp_path / "ultralytics" / success,
                           ExportRequest(("yolo",), "fit", ["Person"], "ultralytics"))
    exported, labels = read_yolo(tmp_path / "ultralytics" / "train" / "yolo")
    assert exported == expected_names() and counts.not_boxable == 0
    assert {number for rows in labels.values() for number, *_ in rows} == {381}
    # Without the boxable file: what to do, in one error.
    os.remove(tmp_path / "ultralytics" / "train" / "class-descriptions-boxable.csv")
    with pytest.raises(ExportError, match="class-descriptions-boxable.csv is missing: .* crawl again with boxes"):
        export_subset(store, LAYOUT, "train", tmp_path / "ultralytics" / success,
                      ExportRequest(("yolo",), "fit", class_order="ultralytics"))
    for one in (store, plain):
        one.close()


def test_class_order_option_is_checked() -> None:
    from scrapy.exceptions import UsageError

    from openimages_crawler.commands.export import parse_class_order

    assert parse_class_order("store", ("coco",)) == "store"
    assert parse_class_order("ultralytics", ("coco", "yolo")) == "ultralytics"
    with pytest.raises(UsageError, match=r"^--class-order 'coco': give store or ultralytics$"):
        parse_class_order("coco", ("yolo",))
    with pytest.raises(UsageError, match="list yolo among the formats"):
        parse_class_order("ultralytics", ("coco", "voc"))


@pytest.mark.e2e
def test_export_command_numbers_yolo_as_ultralytics(tmp_path: Path) -> None:
    boxable_store(tmp_path)
    done = run_export_command("yolo", "--store", str(tmp_path), "--output", "fit", "--class-order", "ultralytics")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"train/fit: {len(CASES)} boxes of classes that are not boxable left out of YOLO" in done.stderr
    assert (tmp_path / "train" / "yolo" / "classes.txt").read_text().splitlines() == expected_names()


def test_masks_export_as_coco_rle_yolo_outlines_and_captions(tmp_path: Path) -> None:
    """Each Person box gets an official mask (whole image, half the file's resolution, the box filled,
    in the file's orientation); exported for resized outputs of every EXIF orientation and Rotation,
    pycocotools decodes each RLE to the dark pixels of the stored image, its area is the decoded
    mask's pixel count, YOLO's outlines cover the same pixels, and narratives become captions.json."""
    from pycocotools.coco import COCO

    store, boxes = build_store(tmp_path)
    rows = ["MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks"]
    for image_id, (size, _, orientation, rotation) in CASES.items():
        file_size = size if not (rotation or orientation in (5, 6, 7, 8)) else (size[1], size[0])
        box = boxes[image_id]
        mask = Image.new("L", (file_size[0] // 2, file_size[1] // 2), 0)
        ImageDraw.Draw(mask).rectangle((box.xmin * mask.width, box.ymin * mask.height,
                                        box.xmax * mask.width - 1, box.ymax * mask.height - 1), fill=255)
        name = f"{image_id}_m01g317_0000000{image_id[-1]}.png"
        path = store.path(LAYOUT.mask_key("train", LAYOUT.originals_dir, image_id, name))
        path.parent.mkdir(parents=True, exist_ok=True)
        mask.save(path)
        rows.append(f"{name},{image_id},/m/01g317,0000000{image_id[-1]},{box.xmin:.6f},{box.xmax:.6f},"
                    f"{box.ymin:.6f},{box.ymax:.6f},0.9,0.5 0.5 1")
    (tmp_path / "train" / "annotations-masks.csv").write_text("\n".join(rows) + "\n")
    captions = {"00000000000000a1": "A black box on white.", "00000000000000a3": "Another box, turned."}
    (tmp_path / "train" / "narratives.jsonl").write_text("".join(
        json.dumps({"image_id": image_id, "caption": caption, "annotator_id": 1, "timed_caption": [],
                    "traces": []}) + "\n" for image_id, caption in captions.items()))
    store.open()
    success = tmp_path / "train" / "images-success.csv"
    for folder in ("fit", "crop"):
        counts = export_subset(store, LAYOUT, "train", success,
                               ExportRequest(("coco", "yolo"), folder, task="segment"))
        assert counts.masks_missing == 0 and counts.captions == len(captions)
        coco = COCO(str(tmp_path / "train" / "coco" / "instances.json"))
        by_name = {image["open_images_id"]: image for image in coco.dataset["images"]}
        masked = 0
        for image_id in CASES:
            if image_id not in by_name:
                continue
            with Image.open(tmp_path / "train" / by_name[image_id]["file_name"].removeprefix("../")) as stored:
                dark = np.asarray(stored.convert("L")) < 128
            people = 0
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[by_name[image_id]["id"]])):
                if ann["label_name"] != "/m/01g317":
                    assert isinstance(ann["segmentation"], list)  # no mask: the box's rectangle
                    continue
                assert isinstance(ann["segmentation"], dict)  # RLE
                decoded = coco.annToMask(ann).astype(bool)
                assert decoded.shape == dark.shape and ann["area"] == int(decoded.sum())
                assert pixel_iou(decoded, dark) >= 0.9, (folder, image_id)
                people += 1
            masked += people
            labels = (tmp_path / "train" / "yolo" / "labels" / f"{image_id}.txt").read_text().splitlines()
            assert len(labels) == people  # the masked Person only: the other box has no outline
            if not people:
                assert folder == "crop" and image_id == "00000000000000a4"  # FillCrop cut it away
                continue
            number, *values = labels[0].split()
            assert int(number) == 0 and len(values) % 2 == 0 and len(values) >= 6
            assert all(0.0 <= float(value) <= 1.0 for value in values)
            outline = Image.new("L", (dark.shape[1], dark.shape[0]), 0)
            points = [(float(x) * outline.width, float(y) * outline.height) for x, y in zip(values[::2], values[1::2])]
            ImageDraw.Draw(outline).polygon(points, fill=255, outline=255)
            assert pixel_iou(np.asarray(outline) > 127, dark) >= 0.85, (folder, image_id)
        assert masked == len(by_name) - (folder == "crop") == counts.masks
        loaded = COCO(str(tmp_path / "train" / "coco" / "captions.json"))
        assert {annotation["caption"] for annotation in loaded.dataset["annotations"]} == set(captions.values())
    store.close()


def pixel_iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return float(np.logical_and(first, second).sum() / union) if union else 1.0
