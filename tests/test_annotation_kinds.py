"""Annotations beyond boxes: instance masks (V5+), visual relationships (V6+),
localized narratives (V6+) and point labels (V7), selected by class, written
beside the results, masks extracted from only the zips needed. A small bucket
of our own is laid out as the catalogue says, derived from the real V3
sample's boxes and labels (tests/data/v3-sample)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import duckdb
import pytest
from PIL import Image, ImageDraw

from openimages_crawler.dataset.annotations import (
    ClassFilter,
    JsonLinesReader,
    merge_selected_rows,
    valid_json_line,
)
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS, VERSIONS, RemoteFile
from openimages_crawler.dataset.fetch import MetadataFetcher
from openimages_crawler.dataset.masks import MAX_MASK_BYTES, MaskArchives, mask_name_ok
from openimages_crawler.job.arguments import ArgumentError, CrawlArguments
from openimages_crawler.job.prepare import MetadataOptions, prepare, selection_of
from openimages_crawler.testing.mirror import Route
from tests.conftest import outcomes
from tests.test_classes import (  # noqa: F401
    SampleMirror,
    annotation_lines,
    crawl,
    mids_of,
    sample_mirror,
)
from tests.test_metadata import version_crawl

ATTRIBUTE = "/m/02gy9n"  # Transparent: relationships name attributes in LabelName2
MASK_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
                "PredictedIoU", "Clicks")
VRD_COLUMNS = ("ImageID", "LabelName1", "LabelName2", "XMin1", "XMax1", "YMin1", "YMax1", "XMin2", "XMax2",
               "YMin2", "YMax2", "RelationshipLabel")
POINT_COLUMNS = ("ImageId", "X", "Y", "Label", "EstimatedYesNo", "Source", "YesVotes", "NoVotes", "UnsureVotes",
                 "TextLabel")


def boxes_of(split: str) -> list[list[str]]:
    return list(csv.reader(annotation_lines(split, "boxes")[1]))


def mask_png(box: list[str]) -> bytes:
    """A whole-image mask at half the sample images' size (64x48): the box filled."""
    image = Image.new("L", (32, 24), 0)
    xmin, xmax, ymin, ymax = (float(value) for value in box[4:8])
    left, top = xmin * 32, ymin * 24
    ImageDraw.Draw(image).rectangle((left, top, max(left, xmax * 32 - 1), max(top, ymax * 24 - 1)), fill=255)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def table(columns: tuple[str, ...], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().encode()


def mask_rows(split: str) -> list[list[str]]:
    rows = []
    for box in boxes_of(split):
        box_id = hashlib.md5(",".join(box).encode()).hexdigest()[:8]
        mask_path = f"{box[0]}_{box[2].replace('/', '')}_{box_id}.png"
        rows.append([mask_path, box[0], box[2], box_id, *box[4:8], "0.8", "0.1 0.2 1;0.5 0.5 0"])
    return rows


def relationship_rows(split: str) -> list[list[str]]:
    """Two boxes of one image: ``at``; every box: ``is`` Transparent (an attribute)."""
    by_image: dict[str, list[list[str]]] = {}
    for box in boxes_of(split):
        by_image.setdefault(box[0], []).append(box)
    rows = []
    for image_id, boxes in by_image.items():
        if len(boxes) > 1:
            rows.append([image_id, boxes[0][2], boxes[1][2], *boxes[0][4:8], *boxes[1][4:8], "at"])
        rows.append([image_id, boxes[0][2], ATTRIBUTE, *boxes[0][4:8], *boxes[0][4:8], "is"])
    return rows


def point_rows(split: str) -> list[list[str]]:
    """A point of each image label, ``yes`` where the label is verified present, ``no`` where absent."""
    rows = []
    for image_id, _, label, confidence in csv.reader(annotation_lines(split, "labels")[1]):
        yes_no = "yes" if confidence == "1" else "no"
        rows.append([image_id, "0.25", "0.75", label, yes_no, "ih", "2", "0", "0", ""])
    return rows


def narrative_lines(split: str) -> list[str]:
    """One narrative per image with a box; a caption imitating another image's id."""
    lines = []
    for number, image_id in enumerate(dict.fromkeys(box[0] for box in boxes_of(split))):
        lines.append(json.dumps({
            "dataset_id": "open_images", "image_id": image_id, "annotator_id": number,
            "caption": 'A photo. "image_id": "ffffffffffffffff", it says.',
            "timed_caption": [{"utterance": "A photo", "start_time": 0.0, "end_time": 1.0}],
            "traces": [[{"x": 0.25, "y": 0.5, "t": 0.1}, {"x": 0.75, "y": 0.5, "t": 0.2}]],
            "voice_recording": f"open_images/{image_id}.ogg"}) + "\n")
    return lines


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def publish_kinds(mirror: SampleMirror, number: int) -> None:
    """The version's files beyond boxes and labels, as the catalogue names them."""
    annotations = VERSIONS[number].annotations
    builders = {"masks": lambda split: table(MASK_COLUMNS, mask_rows(split)),
                "relationships": lambda split: table(VRD_COLUMNS, relationship_rows(split)),
                "points": lambda split: table(POINT_COLUMNS, point_rows(split))}
    for kind, build in builders.items():
        for split, (source,) in annotations.of_kind(kind).items():
            mirror.publish(source.file.path, build(split))
    for split, parts in annotations.of_kind("narratives").items():
        lines = narrative_lines(split)
        for index, source in enumerate(parts):  # the train file in parts: every tenth line in each
            body = "".join(lines[index::len(parts)]).encode()
            mirror.server.routes[(mirror.server.bases[0], "/" + source.file.url_path.removeprefix("../"))] = \
                Route(body=body, content_type="application/octet-stream")
    for split, zips in annotations.mask_archives.items():
        members: dict[str, dict[str, bytes]] = {}
        for row, box in zip(mask_rows(split), boxes_of(split), strict=True):
            members.setdefault(row[1][0], {})[row[0]] = mask_png(box)
        for digit, remote in zips.items():
            if digit in members:
                mirror.publish(remote.path, zip_of(members[digit]))
    for extras in annotations.extras.values():
        for source in extras:
            mirror.publish(source.file.path, b"LabelName,DisplayName\n/m/02gy9n,Transparent\n")


def selected_by(split: str, mids: set[str]) -> set[str]:
    """Images carrying ``mids`` in masks, points (yes) or relationships (either side), found independently."""
    found = {row[1] for row in mask_rows(split) if row[2] in mids}
    found |= {row[0] for row in point_rows(split) if row[3] in mids and row[4] == "yes"}
    found |= {row[0] for row in relationship_rows(split) if row[1] in mids or row[2] in mids}
    return found


def written_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


# --- arguments and catalogue (fast) ------------------------------------------------


def test_catalogue_knows_the_files_of_each_kind() -> None:
    """Pinned to the official layout (../shared/notes/openimages-formats.md)."""
    def paths(number: int, kind: str, split: str) -> list[str]:
        return [source.file.url_path for source in VERSIONS[number].annotations.of_kind(kind).get(split, ())]

    assert paths(5, "masks", "train") == ["v5/train-annotations-object-segmentation.csv"]
    assert paths(7, "masks", "test") == ["v5/test-annotations-object-segmentation.csv"]
    assert VERSIONS[6].annotations.mask_archives["validation"]["c"].path == "v5/validation-masks/validation-masks-c.zip"
    assert len(VERSIONS[5].annotations.mask_archives["train"]) == 16
    assert paths(6, "relationships", "validation") == ["v6/oidv6-validation-annotations-vrd.csv"]
    assert paths(7, "points", "validation") == ["v7/oidv7-val-annotations-point-labels.csv"]
    assert paths(7, "narratives", "train")[3] == ("../localized-narratives/annotations/"
                                                  "open_images_train_v6_localized_narratives-00003-of-00010.jsonl")
    assert len(paths(6, "narratives", "train")) == 10
    assert paths(6, "narratives", "test") == [
        "../localized-narratives/annotations/open_images_test_localized_narratives.jsonl"]
    for number in (1, 2, 3, 4):
        assert set(VERSIONS[number].annotations.files) <= {"boxes", "labels"}
    assert "relationships" not in VERSIONS[5].annotations.files and "points" not in VERSIONS[6].annotations.files
    # cached inside the metadata folder, whatever the URL
    assert all(not source.local_path.startswith("..")
               for parts in VERSIONS[7].annotations.of_kind("narratives").values() for source in parts)


def test_annotation_kinds_argument() -> None:
    parse = CrawlArguments.parse
    assert parse(version=3, subset="train", annotations="true").kinds == ("boxes", "labels")
    assert parse(version=3, subset="train", classes="Person").kinds == ("boxes", "labels")
    assert parse(version=3, subset="train").kinds == ()
    listed = parse(version=7, subset="train", classes="Person", annotations="masks, Narratives,points,masks")
    assert listed.kinds == ("masks", "narratives", "points")
    assert listed.class_kinds == ("masks", "points")  # narratives carry no classes
    assert not listed.boxed_only
    assert parse(version=7, subset="train", classes="Person", annotations="boxes").boxed_only
    assert parse(version=7, subset="train", classes="Person", only_matching="false").only_matching is False
    for given, message in (
        ({"annotations": "boxes,mask"}, "-a annotations='boxes,mask': give true, false or kinds among boxes"),
        ({"annotations": "narratives", "classes": "Person"}, "-a classes: none of -a annotations=narratives has classes"),
        ({"annotations": "masks", "classes": "Person", "labels": "verified"}, "-a labels applies with"),
        ({"only_matching": "true"}, "-a only_matching only apply with -a classes"),
        ({"annotations": "narratives,points", "export": "coco"}, "-a export needs the boxes or the masks"),
        ({"classes": "Person", "only_matching": "maybe"}, "-a only_matching='maybe' is not true or false"),
    ):
        with pytest.raises(ArgumentError, match="^" + message.replace("(", r"\(").replace("?", r"\?")):
            parse(version=7, subset="train", **given)


@pytest.mark.parametrize(("number", "kind", "message"), [
    (5, "relationships", "version 5 has no visual relationships for validation: try version 6 or 7"),
    (6, "points", "version 6 has no point labels for validation: try version 7"),
    (4, "masks", "version 4 has no instance masks for validation: try version 5 or 6 or 7"),
])
def test_a_kind_the_version_lacks_stops_before_any_download(tmp_path: Path, number: int, kind: str,
                                                            message: str) -> None:
    arguments = CrawlArguments.parse(version=number, subset="validation", annotations=kind)
    options = MetadataOptions(tmp_path, "http://127.0.0.1:9/openimages/", 1 << 20)  # nothing listens there
    with pytest.raises(ArgumentError, match=f"^{message}$"):
        prepare(arguments, options, selection_of(arguments))


def test_a_plain_crawl_of_a_version_without_boxes_looks_for_no_kind(tmp_path: Path) -> None:
    """V1 has no boxes: a crawl without classes (with annotations=true too) is not refused for it."""
    for given in ({}, {"annotations": "true"}):
        arguments = CrawlArguments.parse(version=1, subset="validation", **given)
        assert arguments.class_kinds == ()
        options = MetadataOptions(tmp_path, "http://127.0.0.1:9/openimages/", 1 << 20)
        with pytest.raises(ArgumentError, match="cannot download"):  # it went on to the metadata
            prepare(arguments, options, selection_of(arguments))


def test_class_filter_in_points_and_relationships(tmp_path: Path) -> None:
    person, car = mids_of("Person"), mids_of("Car")
    classes = ClassFilter({"Person": frozenset(person), "Car": frozenset(car)})
    points, vrd = tmp_path / "points.csv", tmp_path / "vrd.csv"
    points.write_bytes(table(POINT_COLUMNS, point_rows("validation")))
    vrd.write_bytes(table(VRD_COLUMNS, relationship_rows("validation")))
    found = classes.found(ANNOTATION_KINDS["points"], points)
    assert set(found) == {row[0] for row in point_rows("validation") if row[3] in person | car and row[4] == "yes"}
    classes.found(ANNOTATION_KINDS["relationships"], vrd, found)
    assert set(classes.images(found)) == (
        {row[0] for row in point_rows("validation") if row[3] in person | car and row[4] == "yes"}
        | {row[0] for row in relationship_rows("validation") if {row[1], row[2]} & (person | car)})
    second_only = [row for row in relationship_rows("validation") if row[2] in person and row[1] not in person]
    assert all(row[0] in found for row in second_only)  # a relationship carries both its classes


def test_narrative_lines_are_found_by_their_image_only(tmp_path: Path) -> None:
    lines = narrative_lines("validation")
    path = tmp_path / "narratives.jsonl"
    path.write_text(lines[0] + "not json at all\n" + '{"image_id": "broken' + "\n" + lines[1]
                    + '{"image_id": "' + json.loads(lines[2])["image_id"] + '", "caption": \n')
    with JsonLinesReader(path) as reader:
        found = [values[0] for _, values in reader]
    assert found == [json.loads(lines[0])["image_id"], json.loads(lines[1])["image_id"],
                     json.loads(lines[2])["image_id"]]  # the caption's imitation is not an id
    nested = {"timed_caption": [{"image_id": "ffffffffffffffff"}], **json.loads(lines[3])}
    assert not valid_json_line(json.dumps(nested), "ffffffffffffffff")  # a nested key files it nowhere
    assert not valid_json_line("[" * 100_000 + "]" * 100_000, "x")  # too deep: not a narrative
    assert "ffffffffffffffff" not in found
    out = io.StringIO()
    chosen = {json.loads(lines[1])["image_id"], json.loads(lines[2])["image_id"], "ffffffffffffffff"}
    added = merge_selected_rows(ANNOTATION_KINDS["narratives"], [path], None, out, chosen, frozenset({"/m/x"}))
    assert added == 1 and out.getvalue() == lines[1]  # the cut line is not JSON: left out; classes do not apply


def test_masks_come_only_from_the_zips_needed_and_are_checked(tmp_path: Path) -> None:
    """Members are found by the row's MaskPath (never by their own names), bounded and PNG-only;
    a zip is opened only when one of its masks is asked for, and deleted at close unless kept."""
    png = mask_png(["", "", "", "", "0.1", "0.5", "0.2", "0.6"])
    good, other = "a000000000000001_m01g317_0a0b0c0d.png", "b000000000000002_m01g317_01020304.png"
    members = {f"masks/{good}": png, "a000000000000003_m01g317_00000000.png": b"GIF89a not a png",
               "../../a000000000000004_m01g317_00000000.png": png}
    bodies = {"v5/validation-masks/validation-masks-a.zip": zip_of(members),
              "v5/validation-masks/validation-masks-b.zip": zip_of({other: png})}
    cache = tmp_path / "metadata"
    for path, body in bodies.items():
        (cache / path).parent.mkdir(parents=True, exist_ok=True)
        (cache / path).write_bytes(body)
    archives = {"validation": {digit: RemoteFile(f"v5/validation-masks/validation-masks-{digit}.zip")
                               for digit in "ab"}}
    masks = MaskArchives(MetadataFetcher(cache, "http://127.0.0.1:9/", download=False), archives)
    assert masks.png("validation", "a000000000000001", good) == png
    assert masks.png("validation", "a000000000000004", "a000000000000004_m01g317_00000000.png") is None  # ../..
    assert masks.png("validation", "a000000000000003", "a000000000000003_m01g317_00000000.png") is None  # not a PNG
    assert masks.png("validation", "a000000000000005", "../a000000000000005_x_0.png") is None
    assert masks.png("validation", "a000000000000006", "a000000000000006_x_1.png") is None  # not in its zip
    assert masks.png("validation", "c000000000000007", "c000000000000007_x_1.png") is None  # no such zip
    assert [remote.path for remote in masks.zips] == ["v5/validation-masks/validation-masks-a.zip"]  # b: not needed
    assert not mask_name_ok("a000000000000001_../../x.png", "a000000000000001")
    masks.close()
    assert (cache / "v5/validation-masks/validation-masks-a.zip").exists()  # kept in the cache, as the CSVs
    assert masks.png("validation", "a000000000000001", good) is None  # closed: nothing more is read
    assert masks.errors == []


def test_a_zip_that_cannot_be_had_or_read_costs_its_masks_not_the_crawl(tmp_path: Path) -> None:
    png = mask_png(["", "", "", "", "0.1", "0.5", "0.2", "0.6"])
    cache = tmp_path / "metadata"
    (cache / "v5").mkdir(parents=True)
    (cache / "v5" / "a.zip").write_bytes(b"PK\x03\x04 not a zip at all")
    body = bytearray(zip_of({"b000000000000001_m1_00.png": png * 4}))
    body[40:60] = bytes(20)  # the deflated stream broken: the member cannot be read
    (cache / "v5" / "b.zip").write_bytes(bytes(body))
    archives = {"test": {digit: RemoteFile(f"v5/{digit}.zip") for digit in "abc"}}
    masks = MaskArchives(MetadataFetcher(cache, "http://127.0.0.1:9/", download=False), archives)
    assert masks.png("test", "a000000000000001", "a000000000000001_m1_00.png") is None
    assert masks.png("test", "a000000000000002", "a000000000000002_m1_00.png") is None  # tried once only
    assert not (cache / "v5" / "a.zip").exists()  # fetched again by the next run
    assert masks.png("test", "b000000000000001", "b000000000000001_m1_00.png") is None
    assert masks.png("test", "c000000000000001", "c000000000000001_m1_00.png") is None
    assert len(masks.errors) == 2 and "not a readable zip" in masks.errors[0]
    assert "not in the metadata cache and -a download_metadata=false" in masks.errors[1]


def test_a_mask_over_the_bound_is_not_read(tmp_path: Path) -> None:
    huge = b"\x89PNG\r\n\x1a\n" + bytes(MAX_MASK_BYTES)
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "z.zip").write_bytes(zip_of({"c000000000000001_m1_00.png": huge}))
    fetcher = MetadataFetcher(tmp_path / "metadata", "http://127.0.0.1:9/", download=False)
    masks = MaskArchives(fetcher, {"test": {"c": RemoteFile("z.zip")}})
    assert masks.png("test", "c000000000000001", "c000000000000001_m1_00.png") is None


# --- end to end -------------------------------------------------------------------


@pytest.mark.e2e
def test_masks_points_relationships_and_narratives_of_a_class(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    """V7 validation, classes=Person in masks, points and relationships: the images carrying
    Person in any of them, each kind's official rows of Person only (narratives whole), the
    masks of the selected images from their zips only, the extras beside them, and the
    database's tables; a rerun downloads no zip again and adds nothing."""
    sample_mirror.publish_version(7)
    publish_kinds(sample_mirror, 7)
    store = tmp_path / "store"
    args = {"version": "7", "subset": "validation", "classes": "Person",
            "annotations": "masks,points,relationships,narratives"}
    done = crawl(sample_mirror, store, **args)
    assert done.returncode == 0, done.stderr[-3000:]
    person = mids_of("Person")
    chosen = selected_by("validation", person)
    assert chosen and outcomes(store, "validation") == {image_id: ["success"] for image_id in chosen}
    folder = store / "validation"
    assert not (folder / "annotations-bbox.csv").exists() and not (folder / "annotations-labels.csv").exists()
    header, masks = written_rows(folder / "annotations-masks.csv")
    assert tuple(header) == MASK_COLUMNS
    assert masks == [row for row in mask_rows("validation") if row[1] in chosen and row[2] in person]
    _, points = written_rows(folder / "annotations-points.csv")
    assert points == [row for row in point_rows("validation") if row[0] in chosen and row[3] in person]
    _, relationships = written_rows(folder / "annotations-relationships.csv")
    assert relationships == [row for row in relationship_rows("validation")
                             if row[0] in chosen and (row[1] in person or row[2] in person)]
    assert (folder / "narratives.jsonl").read_text() == "".join(
        line for line in narrative_lines("validation") if json.loads(line)["image_id"] in chosen)
    stored_masks = sorted(path.relative_to(folder).as_posix()
                          for path in (folder / "masks" / "images-original").rglob("*.png"))
    assert stored_masks == sorted(f"masks/images-original/{row[1][:3]}/{row[0]}" for row in masks)
    boxes = {row[0]: box for row, box in zip(mask_rows("validation"), boxes_of("validation"), strict=True)}
    assert all((folder / path).read_bytes() == mask_png(boxes[Path(path).name]) for path in stored_masks)
    zips = VERSIONS[7].annotations.mask_archives["validation"]
    needed = {row[1][0] for row in masks}
    assert {digit for digit, remote in zips.items() if sample_mirror.downloads(remote.path)} == needed
    assert (folder / "classes-segmentation.txt").is_file() and (folder / "oidv6-relationship-triplets.csv").is_file()
    assert sorted(path.name for path in (store / "metadata").rglob("*.zip")) == sorted(
        f"validation-masks-{digit}.zip" for digit in needed)  # kept in the cache, as the CSVs

    # every request (the metadata, the zips, the images) says who crawls
    assert {agent.split("/")[0] for agent in sample_mirror.server.counter.user_agents} == {"openimages-crawler"}

    again = crawl(sample_mirror, store, **args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(sample_mirror.downloads(remote.path) == (digit in needed) for digit, remote in zips.items())
    assert written_rows(folder / "annotations-masks.csv")[1] == masks

    db = store / "openimages.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM masks").fetchone()[0] == len(masks)
        assert con.execute("SELECT count(*) FROM points").fetchone()[0] == len(points)
        assert con.execute("SELECT count(*) FROM relationships").fetchone()[0] == len(relationships)
        assert sorted(row[0] for row in con.execute(
            "SELECT n.image_id FROM narratives n JOIN images i ON i.ImageID = n.image_id").fetchall()) == sorted(
            json.loads(line)["image_id"] for line in narrative_lines("validation")
            if json.loads(line)["image_id"] in chosen)
        assert con.execute("SELECT json_extract(traces, '$[0][1].x')::DOUBLE FROM narratives LIMIT 1"
                           ).fetchone()[0] == 0.75


@pytest.mark.e2e
def test_train_narratives_in_parts_and_every_class_with_only_matching_false(
        sample_mirror: SampleMirror, tmp_path: Path) -> None:
    """V6 train: the narratives come from ten files; only_matching=false keeps every class of
    the selected images' masks."""
    sample_mirror.publish_version(6)
    publish_kinds(sample_mirror, 6)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="6", subset="train", classes="Person", only_matching="false",
                 annotations="masks,narratives")
    assert done.returncode == 0, done.stderr[-3000:]
    person = mids_of("Person")
    chosen = {row[1] for row in mask_rows("train") if row[2] in person}
    assert chosen and set(outcomes(store, "train")) == chosen
    _, masks = written_rows(store / "train" / "annotations-masks.csv")
    assert masks == [row for row in mask_rows("train") if row[1] in chosen]
    assert {row[2] for row in masks} > person
    lines = (store / "train" / "narratives.jsonl").read_text().splitlines(keepends=True)
    assert sorted(lines) == sorted(line for line in narrative_lines("train") if json.loads(line)["image_id"] in chosen)


def moved_reference(official: bytes, turned: bool, mode: str, size: int) -> Image.Image:
    """The official mask moved with Pillow's own steps, as the sample's 64x48 image is
    (turned by Rotation 90, scaled, FillCrop's centre cut): independent of ``stored_mask``."""
    mask = Image.open(io.BytesIO(official)).convert("L")
    upright = (48, 64) if turned else (64, 48)
    if turned:
        mask = mask.transpose(Image.Transpose.ROTATE_90)
    mask = mask.resize(upright, Image.Resampling.NEAREST)
    if mode == "FillCrop":
        side = min(upright)
        left, top = (upright[0] - side) // 2, (upright[1] - side) // 2
        return mask.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.NEAREST)
    scale = size / max(upright)
    return mask.resize((round(upright[0] * scale), round(upright[1] * scale)), Image.Resampling.NEAREST)


def iou(first: Image.Image, second: Image.Image) -> float:
    import numpy as np

    a, b = np.asarray(first.convert("L")) > 127, np.asarray(second.convert("L")) > 127
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def moved_point(x: float, y: float, turned: bool, mode: str) -> tuple[float, float] | None:
    """A point of the 64x48 file in the output, by hand: Rotation 90 takes (x, y) to (y, 1 - x);
    FillCrop keeps the centre square (the long side's middle three quarters)."""
    if turned:
        x, y = y, 1 - x
    if mode == "FillCrop":
        if turned:  # upright 48x64: the crop cuts y
            if not 0.125 <= y <= 0.875:
                return None
            y = (y - 0.125) / 0.75
        else:  # upright 64x48: the crop cuts x
            if not 0.125 <= x <= 0.875:
                return None
            x = (x - 0.125) / 0.75
    return x, y


@pytest.mark.e2e
def test_every_output_carries_each_kind_moved_with_its_pixels(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    """V7 validation with a third of the images turned by Rotation 90: a files output gets its masks
    beside the images, moved; WebDataset, Parquet and TFRecord samples carry the masks (PNGs), the
    points, the relationships and the narratives moved into each stored image."""
    turned = {row["ImageID"] for row in sample_mirror.rows["validation"][::3]}
    for row in sample_mirror.rows["validation"]:
        row["Rotation"] = "90" if row["ImageID"] in turned else "0"
    sample_mirror.publish_version(7)
    publish_kinds(sample_mirror, 7)
    crop, fit = {"mode": "FillCrop", "size": 32, "format": "png"}, {"mode": "ShrinkToFit", "size": 40, "format": "png"}
    outputs = [{"dir": "crop", **crop}, {"dir": "fit-wds", **fit, "container": "webdataset"},
               {"dir": "crop-pq", **crop, "container": "parquet"}, {"dir": "fit-tfr", **fit, "container": "tfrecord"}]
    store = tmp_path / "store"
    settings = {"OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False",
                "OPENIMAGES_OUTPUTS": json.dumps(outputs), "OPENIMAGES_SAVE_ORIGINALS": "True",
                "OPENIMAGES_SHARD_SIZE": "7"}
    done = version_crawl(store, settings, version="7", subset="validation", classes="Person",
                         annotations="boxes,masks,points,relationships,narratives")
    assert done.returncode == 0, done.stderr[-3000:]
    person = mids_of("Person")
    stored = set(outcomes(store, "validation"))
    masks = [row for row in mask_rows("validation") if row[1] in stored and row[2] in person]
    official = {row[0]: mask_png(box) for row, box in zip(mask_rows("validation"), boxes_of("validation"),
                                                              strict=True)}
    assert masks and stored & turned
    folder = store / "validation"
    checked = 0
    for row in masks:  # files: every output's masks beside its images, the originals' official
        prefix = row[1][:3]
        assert (folder / "masks" / "images-original" / prefix / row[0]).read_bytes() == official[row[0]]
        reference = moved_reference(official[row[0]], row[1] in turned, "FillCrop", 32)
        path = folder / "masks" / "crop" / prefix / row[0]
        if not reference.getbbox():
            continue  # the crop cut this mask away
        with Image.open(path) as moved:
            assert moved.size == (32, 32)
            if np_area(reference) >= 30:
                assert iou(moved, reference) >= 0.8, row[0]
                checked += 1
    assert checked >= 3

    from tests.test_containers import parquet_rows, webdataset_samples

    samples = webdataset_samples(store, "fit-wds", "validation")
    assert set(samples) == stored
    narratives = {json.loads(line)["image_id"]: json.loads(line) for line in narrative_lines("validation")}
    for image_id, sample in samples.items():
        meta = json.loads(sample["json"])
        wanted = [row for row in masks if row[1] == image_id]
        assert [mask["MaskPath"] for mask in meta["masks"]] == [row[0] for row in wanted]
        for number, (mask, row) in enumerate(zip(meta["masks"], wanted, strict=True)):
            assert mask["file"] == f"mask{number}.png"
            with Image.open(io.BytesIO(sample[f"mask{number}.png"])) as moved:
                assert moved.size == (meta["width"], meta["height"])
                reference = moved_reference(official[row[0]], image_id in turned, "ShrinkToFit", 40)
                if np_area(reference) >= 30:
                    assert iou(moved, reference) >= 0.8
        points = [row for row in point_rows("validation") if row[0] == image_id and row[3] in person]
        assert [(p["X"], p["Y"]) for p in meta["points"]] == [
            pytest.approx(moved_point(float(row[1]), float(row[2]), image_id in turned, "ShrinkToFit"), abs=1e-5)
            for row in points]
        caption = sample["txt"].decode() if isinstance(sample["txt"], bytes) else sample["txt"]
        assert caption == narratives[image_id]["caption"]
        trace = meta["narratives"][0]["traces"][0]
        assert [(step["x"], step["y"]) for step in trace] == [
            pytest.approx(moved_point(step["x"], step["y"], image_id in turned, "ShrinkToFit"), abs=1e-5)
            for step in narratives[image_id]["traces"][0]]
        relationships = [row for row in relationship_rows("validation")
                         if row[0] == image_id and (row[1] in person or row[2] in person)]
        assert [(r["LabelName1"], r["LabelName2"], r["RelationshipLabel"]) for r in meta["relationships"]] == [
            (row[1], row[2], row[11]) for row in relationships]
        assert all(r["DisplayName2"] == "Transparent" for r in meta["relationships"] if r["LabelName2"] == ATTRIBUTE)

    rows = parquet_rows(store, "crop-pq", "validation")
    assert set(rows) == stored
    for image_id, row in rows.items():
        points = [p for p in point_rows("validation") if p[0] == image_id and p[3] in person]
        expected = [moved_point(float(p[1]), float(p[2]), image_id in turned, "FillCrop") for p in points]
        assert [(p["X"], p["Y"]) for p in row["points"]] == [pytest.approx(e, abs=1e-5) for e in expected if e]
        for mask in row["masks"]:
            with Image.open(io.BytesIO(mask["png"])) as moved:
                assert moved.size == (32, 32)
        assert [n["caption"] for n in row["narratives"]] == [narratives[image_id]["caption"]]

    examples = tf_examples(store / "validation" / "fit-tfr")
    assert set(examples) == stored
    for image_id, feature in examples.items():
        pngs = list(feature["image/object/mask"].bytes_list.value)
        boxes = [box for box in boxes_of("validation") if box[0] == image_id and box[2] in person]
        assert len(pngs) == len(feature["image/object/bbox/xmin"].float_list.value) == len(boxes)
        size = (feature["image/width"].int64_list.value[0], feature["image/height"].int64_list.value[0])
        for png in pngs:  # each box's own mask (every box of the sample has one)
            with Image.open(io.BytesIO(png)) as moved:
                assert moved.size == size
        assert [caption.decode() for caption in feature["image/caption"].bytes_list.value] == [
            narratives[image_id]["caption"]]


def tf_examples(folder: Path) -> dict[str, object]:
    """Each Example's features by ImageID, parsed with the protobuf definitions (every value of a list)."""
    from tfrecord import example_pb2
    from tfrecord.reader import tfrecord_iterator

    found = {}
    for path in sorted(folder.glob("*.tfrecord")):
        for raw in tfrecord_iterator(str(path)):
            example = example_pb2.Example()
            example.ParseFromString(raw)
            feature = example.features.feature
            found[feature["image/source_id"].bytes_list.value[0].decode()] = feature
    return found


def np_area(mask: Image.Image) -> int:
    import numpy as np

    return int((np.asarray(mask.convert("L")) > 127).sum())
