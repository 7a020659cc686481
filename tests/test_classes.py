"""Selection by class: class names, annotation files, -a classes/match/labels,
and the annotations written next to the results. End to end against a local
metadata mirror built from real V3 metadata (tests/data/v3-sample)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from openimages_crawler.dataset.annotations import (
    AnnotationReader,
    ClassFilter,
    ClassNames,
    merge_selected_rows,
    parse_class_list,
)
from openimages_crawler.dataset.catalogue import (
    ANNOTATION_KINDS,
    IMAGE_INFO_COLUMNS,
    IMAGES_CSV_COLUMNS,
    VERSIONS,
    MetadataSource,
    RemoteFile,
)
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.dataset.selection import SelectionError
from openimages_crawler.testing.mirror import Mirror, MirrorServer, Route
from openimages_crawler.testing.objects import S3Server
from tests.conftest import DATA, outcomes
from tests.test_metadata import tarball, version_crawl

SAMPLE = DATA / "v3-sample"
BOXES, LABELS = ANNOTATION_KINDS["boxes"], ANNOTATION_KINDS["labels"]
SPLITS = ("train", "validation", "test")
CLASS_NAMES = SAMPLE / "class-descriptions.csv"


def sample_rows(split: str) -> list[dict[str, str]]:
    with open(SAMPLE / split / "images.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def annotation_lines(split: str, kind: str) -> tuple[str, list[str]]:
    """Header and raw lines of a sample annotation file ("boxes" or "labels")."""
    name = "annotations-human-bbox.csv" if kind == "boxes" else "annotations-human.csv"
    header, *lines = (SAMPLE / split / name).read_text().splitlines(keepends=True)
    return header, lines


def mids_of(*names: str) -> set[str]:
    """Label ids of display names, read independently of the crawler's code."""
    with open(CLASS_NAMES, newline="", encoding="utf-8") as handle:
        return {mid for mid, name in csv.reader(handle) if name.lower() in {n.lower() for n in names}}


def images_with(split: str, kind: str, mids: set[str], *, every: bool = False) -> set[str]:
    """The sample's images whose annotations carry any (every) of ``mids``;
    image labels count only with Confidence 1."""
    _, lines = annotation_lines(split, kind)
    found: dict[str, set[str]] = {}
    for row in csv.reader(lines):
        if row[2] in mids and (kind == "boxes" or row[3] == "1"):
            found.setdefault(row[0], set()).add(row[2])
    return {image_id for image_id, labels in found.items() if not every or labels == mids}


def csv_bytes(rows: list[dict[str, str]], columns: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


@dataclass
class SampleMirror:
    """The V3 sample's rows with local image URLs, and an Open Images bucket of our own."""

    server: MirrorServer
    rows: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.server.bases[0] + "/openimages/"

    def downloads(self, path: str) -> int:
        return self.server.counter.requests["/openimages/" + path]

    def image_downloads(self) -> int:
        return sum(n for path, n in self.server.counter.requests.items() if path.startswith("/img/"))

    def publish_version(self, number: int, *, line_end: str = "\n", drop_subset: bool = False) -> None:
        """Lay the sample out as the catalogue says ``number``'s files are
        (annotation lines ending in ``line_end``; image rows without a Subset
        if ``drop_subset``)."""
        version = VERSIONS[number]
        columns = IMAGES_CSV_COLUMNS if number <= 3 else IMAGE_INFO_COLUMNS
        everything = [row for split in SPLITS for row in self.rows[split]]
        files: dict[MetadataSource, bytes] = {}
        for split, source in version.sources.items():
            shared = split == "all" or source == version.sources.get("all")
            rows = everything if shared else self.rows[split]
            if drop_subset:
                rows = [row | {"Subset": ""} for row in rows]
            files[source] = csv_bytes(rows, columns)
        for split, source in version.boxable_sources.items():
            boxed = images_with(split, "boxes", {line.split(",")[2] for line in annotation_lines(split, "boxes")[1]})
            files[source] = csv_bytes([row for row in self.rows[split] if row["ImageID"] in boxed], columns)
        for kind in ("boxes", "labels"):
            for split, (source,) in version.annotations.of_kind(kind).items():
                header, lines = annotation_lines(split, kind)
                text = header + "".join(lines)
                files[source] = text.replace("\n", line_end).encode()
        names = CLASS_NAMES.read_bytes()
        if number == 7:  # the V7 file has a header row
            names = b"LabelName,DisplayName\n" + names
        files[version.annotations.class_names] = names
        for extras in version.annotations.extras.values():  # the files explaining a kind: class lists here
            for source in extras:
                files[source] = CLASS_NAMES.read_bytes()
        archives: dict[RemoteFile, dict[str, bytes]] = {}
        for source, body in files.items():
            if source.member:
                archives.setdefault(source.file, {})[source.member] = body
            else:
                self.publish(source.file.path, body)
        for remote, members in archives.items():
            self.publish(remote.path, tarball(members))

    def publish(self, path: str, body: bytes) -> None:
        self.server.routes[(self.server.bases[0], "/openimages/" + path)] = Route(
            body=body, content_type="application/octet-stream"
        )


def _image(image_id: str) -> bytes:
    colour = tuple(hashlib.md5(image_id.encode()).digest()[:3])
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def sample_mirror() -> Iterator[SampleMirror]:
    server = MirrorServer()
    mirror = SampleMirror(server)
    for split in SPLITS:
        mirror.rows[split] = []
        for index, row in enumerate(sample_rows(split)):
            host = server.bases[index % 2]
            body = _image(row["ImageID"])
            path = f"/img/{row['ImageID']}_o.jpg"
            server.routes[(host, path)] = Route(body=body)
            mirror.rows[split].append(row | {
                "OriginalURL": host + path,
                "OriginalSize": str(len(body)),
                "OriginalMD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
                "Thumbnail300KURL": "",
                "Rotation": "0",
            })
    server.serve(Mirror())  # routes are set above
    yield mirror
    server.close()


def crawl(mirror: SampleMirror, store: Path, **args: str):  # type: ignore[no-untyped-def]
    settings = {"OPENIMAGES_METADATA_URL": mirror.base, "OPENIMAGES_METADATA_VERIFY": "False"}
    return version_crawl(store, settings, **args)


def written(store: Path, split: str, kind: str, line_end: str = "\n") -> tuple[str, list[str]]:
    """A written annotation file's header and lines, each checked to end in ``line_end``."""
    name = "annotations-bbox.csv" if kind == "boxes" else "annotations-labels.csv"
    raw = (store / split / name).read_bytes().decode()
    lines = raw.split(line_end)
    assert lines[-1] == "" and all("\r" not in line and "\n" not in line for line in lines), raw[:300]
    header, *rows = [line + "\n" for line in lines[:-1]]
    return header, rows


def rows_of(lines: list[str], image_ids: set[str], mids: set[str] | None = None) -> list[str]:
    return [line for line in lines if line.split(",")[0] in image_ids
            and (mids is None or line.split(",")[2] in mids)]


# --- class names ----------------------------------------------------------------


def test_class_descriptions_with_quotes_mixed_line_endings_and_a_header() -> None:
    raw = CLASS_NAMES.read_bytes()
    assert b"\r\n" in raw and b"\n/m/" in raw.replace(b"\r\n", b"")  # really mixed
    names = ClassNames.load(CLASS_NAMES)
    assert len(names.names) == 19995
    assert names.names["/m/01c_0l"] == "Ducks, geese and swans"
    resolved = names.resolve(["person", "DUCKS, GEESE AND SWANS", "/m/0284d"])
    assert resolved["person"] == frozenset(mids_of("Person")) == {"/m/01g317"}
    assert resolved["DUCKS, GEESE AND SWANS"] == {"/m/01c_0l"}
    assert resolved["/m/0284d"] == {"/m/0284d"}
    assert names.resolve(["ball"])["ball"] == frozenset(mids_of("Ball"))  # one name, several ids
    assert len(mids_of("Ball")) > 1


def test_a_header_row_is_not_a_class(tmp_path: Path) -> None:
    path = tmp_path / "oidv7-class-descriptions.csv"
    path.write_text('LabelName,DisplayName\r\n/m/01g317,Person\n/m/0284d,"Dairy Product"\n')
    names = ClassNames.load(path)
    assert names.names == {"/m/01g317": "Person", "/m/0284d": "Dairy Product"}
    empty = tmp_path / "empty.csv"
    empty.write_text("LabelName,DisplayName\n")
    with pytest.raises(MetadataError, match="lists no classes"):
        ClassNames.load(empty)


def test_unknown_names_are_one_error_with_close_names() -> None:
    names = ClassNames.load(CLASS_NAMES)
    with pytest.raises(SelectionError) as error:
        names.resolve(["Person", "Footbal", "Hotdogs", "qqqqzzzz"])
    message = str(error.value)
    assert "unknown class 'Footbal'; did you mean 'Footbag'" in message  # V3 has no "Football"
    assert "unknown class 'Hotdogs'; did you mean 'Hot dog'" in message
    assert "unknown class 'qqqqzzzz'" in message and "Person" not in message
    assert "Flag football" in names.suggestions("Footbal")  # the shortest names containing it, too


def test_class_list_argument() -> None:
    assert parse_class_list("Football, Person") == ["Football", "Person"]
    assert parse_class_list('"Ducks, geese and swans",Person') == ["Ducks, geese and swans", "Person"]
    for bad in ("", " , "):
        with pytest.raises(SelectionError, match="empty"):
            parse_class_list(bad)


# --- annotation files ----------------------------------------------------------


def test_filter_any_all_and_verified_against_the_sample() -> None:
    person, clothing = mids_of("Person"), mids_of("Clothing")
    boxes = SAMPLE / "validation" / "annotations-human-bbox.csv"
    labels = SAMPLE / "validation" / "annotations-human.csv"
    both = {"Person": frozenset(person), "Clothing": frozenset(clothing)}
    found = ClassFilter(both).found(BOXES, boxes)
    any_of = set(ClassFilter(both).images(found))
    all_of = set(ClassFilter(both, match_all=True).images(found))
    assert any_of == images_with("validation", "boxes", person | clothing)
    assert all_of == images_with("validation", "boxes", person | clothing, every=True)
    assert all_of and all_of < any_of
    verified = set(ClassFilter(both).images(ClassFilter(both).found(LABELS, labels)))
    assert verified == images_with("validation", "labels", person | clothing)
    unconfirmed = set(ClassFilter(both).found(BOXES, labels))  # read as boxes: Confidence 0 rows too
    assert verified < unconfirmed


def test_reader_handles_quoted_records_line_endings_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(
        b"ImageID,Source,LabelName,Confidence\r\n"
        b"aaaaaaaaaaaaaaaa,verification,/m/01g317,1\r\n"
        b'bbbbbbbbbbbbbbbb,"multi\nline, source",/m/01g317,1.0\n'
        b"\n"
        b"cccccccccccccccc,short\n"
        b"dddddddddddddddd,verification,/m/01g317,0\n"
        b"eeeeeeeeeeeeeeee,verification,/m/01g317,1"
    )
    flt = ClassFilter({"Person": frozenset({"/m/01g317"})})
    assert flt.images(flt.found(LABELS, path)) == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "eeeeeeeeeeeeeeee"]
    with AnnotationReader(path, ("ImageID", "LabelName")) as reader:
        assert len(list(reader)) == 4 and reader.malformed == 1  # the short row; blank lines are fine
    out = io.StringIO()
    added = merge_selected_rows(LABELS, [path], None, out, {"bbbbbbbbbbbbbbbb", "eeeeeeeeeeeeeeee"}, None)
    assert added == 2
    assert out.getvalue() == (
        "ImageID,Source,LabelName,Confidence\r\n"
        'bbbbbbbbbbbbbbbb,"multi\nline, source",/m/01g317,1.0\n'
        "eeeeeeeeeeeeeeee,verification,/m/01g317,1\n"
    )
    with pytest.raises(MetadataError, match="no column LabelName"):
        AnnotationReader(SAMPLE / "train" / "images.csv", ("ImageID", "LabelName"))


def test_a_stray_quote_is_a_character_and_an_open_quote_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "boxes.csv"
    rows = [f"{i:016x},xclick,/m/01g317,1\n" for i in range(5000)]
    rows[10] = '000000000000000a,ab"c,/m/01g317,1\n'  # a quote inside a field: just a character
    path.write_text("ImageID,Source,LabelName,Confidence\n" + "".join(rows))
    flt = ClassFilter({"Person": frozenset({"/m/01g317"})})
    assert flt.images(flt.found(BOXES, path)) == [f"{i:016x}" for i in range(5000)]  # nothing lost, at once
    rows[10] = '000000000000000a,"never closed,/m/01g317,1\n'  # a quoted field left open
    path.write_text("ImageID,Source,LabelName,Confidence\n" + "".join(rows))
    with pytest.raises(MetadataError, match="quoted field is still open after 1000 lines"):
        flt.found(BOXES, path)


def test_selections_into_one_store_add_up(tmp_path: Path) -> None:
    source = tmp_path / "source.csv"
    source.write_text("ImageID,Source,LabelName,Confidence\r\n"
                      "a,v,/m/1,1\r\na,v,/m/2,1\r\nb,v,/m/1,1\r\nc,v,/m/2,1\r\n")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    with open(first, "w", newline="") as out:
        assert merge_selected_rows(BOXES, [source], first, out, {"a", "b"}, frozenset({"/m/1"})) == 2
    with open(second, "w", newline="") as out:  # another class, overlapping images
        assert merge_selected_rows(BOXES, [source], first, out, {"a", "c"}, frozenset({"/m/2"})) == 2
    assert second.read_bytes() == (b"ImageID,Source,LabelName,Confidence\r\n"
                                   b"a,v,/m/1,1\r\nb,v,/m/1,1\r\na,v,/m/2,1\r\nc,v,/m/2,1\r\n")
    again = tmp_path / "again.csv"
    with open(again, "w", newline="") as out:  # the same selection again adds nothing
        assert merge_selected_rows(BOXES, [source], second, out, {"a", "c"}, frozenset({"/m/2"})) == 0
    assert again.read_bytes() == second.read_bytes()
    other = tmp_path / "other.csv"
    other.write_text("ImageID,LabelName,XMin\nz,/m/9,0.1\n")  # another version's columns: replaced
    with open(tmp_path / "replaced.csv", "w", newline="") as out:
        assert merge_selected_rows(BOXES, [source], other, out, {"b"}, None) == 1
    assert (tmp_path / "replaced.csv").read_bytes() == (b"ImageID,Source,LabelName,Confidence\r\n"
                                                        b"b,v,/m/1,1\r\n")


def test_catalogue_paths_of_annotations() -> None:
    """Pinned to the official bucket's layout (../shared/notes/openimages-formats.md)."""
    def path(number: int, kind: str, split: str) -> str:
        (source,) = VERSIONS[number].annotations.of_kind(kind)[split]
        return source.local_path

    assert path(3, "boxes", "train") == "2017_11/train/annotations-human-bbox.csv"
    assert VERSIONS[3].annotations.of_kind("boxes")["train"][0].file.path == "2017_11/annotations_human_bbox_2017_11.tar.gz"
    assert path(2, "labels", "test") == "2017_07/test/annotations-human.csv"
    assert path(4, "boxes", "validation") == "2018_04/validation/validation-annotations-bbox.csv"
    assert path(4, "labels", "train") == "2018_04/train/train-annotations-human-imagelabels.csv"
    assert path(6, "boxes", "train") == "v6/oidv6-train-annotations-bbox.csv"
    assert path(7, "boxes", "test") == "v5/test-annotations-bbox.csv"
    assert path(7, "labels", "validation") == "v7/oidv7-val-annotations-human-imagelabels.csv"
    assert VERSIONS[7].annotations.class_names.local_path == "v7/oidv7-class-descriptions.csv"
    assert VERSIONS[1].annotations.of_kind("boxes") == {}
    assert path(1, "labels", "validation") == "human_ann_2016_08/validation/labels.csv"
    assert VERSIONS[1].annotations.of_kind("labels")["validation"][0].file.path == "2016_08/human_ann_2016_08_v3.tar.gz"
    assert VERSIONS[2].annotations.class_names.local_path == "2017_07/class-descriptions.csv"
    assert path(5, "boxes", "train") == "2018_04/train/train-annotations-bbox.csv"
    assert path(5, "labels", "test") == "v5/test-annotations-human-imagelabels.csv"
    assert VERSIONS[5].annotations.class_names.local_path == "v5/class-descriptions.csv"
    assert path(6, "labels", "train") == "v6/oidv6-train-annotations-human-imagelabels.csv"
    assert path(6, "labels", "validation") == "v5/validation-annotations-human-imagelabels.csv"
    assert VERSIONS[6].annotations.class_names.local_path == "v6/oidv6-class-descriptions.csv"
    assert VERSIONS[4].boxable_sources["train"].local_path == "2018_04/train/train-images-boxable-with-rotation.csv"


# --- end to end -----------------------------------------------------------------


@pytest.mark.e2e
def test_classes_select_images_and_write_their_annotations(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(3)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="3", subset="validation", classes="person,Car")
    assert done.returncode == 0, done.stderr[-3000:]
    mids = mids_of("Person", "Car")
    chosen = images_with("validation", "boxes", mids)
    assert len(chosen) >= 10
    assert outcomes(store, "validation") == {image_id: ["success"] for image_id in chosen}
    header, lines = written(store, "validation", "boxes")
    official_header, official = annotation_lines("validation", "boxes")
    assert header == official_header and lines == rows_of(official, chosen, mids)
    header, lines = written(store, "validation", "labels")
    official_header, official = annotation_lines("validation", "labels")
    assert header == official_header and lines == rows_of(official, chosen, mids)
    assert lines  # the chosen images do have human labels of these classes
    # A rerun: nothing downloaded again, the annotations written the same.
    before = [sample_mirror.downloads(p) for p in ("2017_11/annotations_human_bbox_2017_11.tar.gz",
                                                   "2017_11/classes_2017_11.tar.gz")]
    assert before == [1, 1]
    images = sample_mirror.image_downloads()
    again = crawl(sample_mirror, store, version="3", subset="validation", classes="Person,car",
                  download_metadata="false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sample_mirror.image_downloads() == images
    assert written(store, "validation", "boxes")[1] == rows_of(annotation_lines("validation", "boxes")[1],
                                                               chosen, mids)
    assert not list(store.rglob("*.part"))


@pytest.mark.e2e
def test_match_all_verified_labels_only_matching_and_other_filters(
    sample_mirror: SampleMirror, tmp_path: Path
) -> None:
    sample_mirror.publish_version(3)
    mids = mids_of("Person", "Clothing")
    store = tmp_path / "all"
    done = crawl(sample_mirror, store, version="3", subset="test", classes="Person,Clothing", match="all",
                 labels="verified", only_matching="false")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = images_with("test", "labels", mids, every=True)
    assert chosen and chosen < images_with("test", "labels", mids)
    assert set(outcomes(store, "test")) == chosen
    _, boxes = written(store, "test", "boxes")
    assert boxes == rows_of(annotation_lines("test", "boxes")[1], chosen)  # every class of them
    _, labels = written(store, "test", "labels")
    assert labels == rows_of(annotation_lines("test", "labels")[1], chosen)
    assert {line.split(",")[2] for line in labels} > mids
    # Classes combine with the other filters; annotations follow the final selection.
    excluded = sorted(chosen)[0]
    (tmp_path / "exclude.txt").write_text(f"test/{excluded}\n")
    store = tmp_path / "limited"
    done = crawl(sample_mirror, store, version="3", subset="test", classes="Person,Clothing", match="all",
                 labels="verified", exclude=str(tmp_path / "exclude.txt"), limit="2")
    assert done.returncode == 0, done.stderr[-3000:]
    taken = set(outcomes(store, "test"))
    in_file_order = [row["ImageID"] for row in sample_rows("test") if row["ImageID"] in chosen - {excluded}]
    assert taken == set(in_file_order[:2])
    assert {line.split(",")[0] for line in written(store, "test", "labels")[1]} == taken


@pytest.mark.e2e
def test_unknown_class_stops_before_any_big_download(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(3)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="3", subset="train", classes="Person,Footbal")
    assert done.returncode != 0
    assert "unknown class 'Footbal'; did you mean 'Footbag'" in done.stderr
    assert sample_mirror.downloads("2017_11/images_2017_11.tar.gz") == 0
    assert sample_mirror.downloads("2017_11/annotations_human_bbox_2017_11.tar.gz") == 0
    assert sample_mirror.image_downloads() == 0
    assert not (store / "train").exists()


@pytest.mark.e2e
def test_v7_layout_every_split_and_its_folders(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(7)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="7", subset="all", classes="Person", labels="verified")
    assert done.returncode == 0, done.stderr[-3000:]
    mids = mids_of("Person")
    for split in SPLITS:
        chosen = images_with(split, "labels", mids)
        assert chosen, split
        assert outcomes(store, split) == {image_id: ["success"] for image_id in chosen}
        assert written(store, split, "labels")[1] == rows_of(annotation_lines(split, "labels")[1], chosen, mids)
        assert written(store, split, "boxes")[1] == rows_of(annotation_lines(split, "boxes")[1], chosen, mids)
    assert sample_mirror.downloads("v7/oidv7-val-annotations-human-imagelabels.csv") == 1
    assert sample_mirror.downloads("v6/oidv6-train-annotations-bbox.csv") == 1


@pytest.mark.e2e
def test_boxes_of_v4_train_come_from_the_boxable_file(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(4)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="4", subset="train", classes="Tree")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = images_with("train", "boxes", mids_of("Tree"))
    assert chosen and outcomes(store, "train") == {image_id: ["success"] for image_id in chosen}
    assert sample_mirror.downloads("2018_04/train/train-images-boxable-with-rotation.csv") == 1
    assert sample_mirror.downloads("2018_04/image_ids_and_rotation.csv") == 0  # 3.35 GB saved
    # The CVDF mirror holds only boxable images: the same smaller file.
    settings = {"OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False",
                "OPENIMAGES_CVDF_URL": sample_mirror.server.bases[1]}
    done = version_crawl(tmp_path / "cvdf", settings, version="4", subset="train", source="cvdf")
    assert done.returncode == 0, done.stderr[-3000:]
    boxable = {row["ImageID"] for row in sample_rows("train")} & images_with(
        "train", "boxes", {line.split(",")[2] for line in annotation_lines("train", "boxes")[1]})
    assert set(outcomes(tmp_path / "cvdf", "train")) == boxable  # (404s here: no copies served)
    assert sample_mirror.downloads("2018_04/train/train-images-boxable-with-rotation.csv") == 2
    assert sample_mirror.downloads("2018_04/image_ids_and_rotation.csv") == 0
    # Image labels are not limited to boxable images: the full file is needed.
    done = crawl(sample_mirror, tmp_path / "labels", version="4", subset="train", classes="Tree",
                 labels="verified")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sample_mirror.downloads("2018_04/image_ids_and_rotation.csv") == 1


@pytest.mark.e2e
def test_annotations_of_an_id_list_only_when_asked(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(4)
    wanted = [row["ImageID"] for row in sample_rows("validation")[3:7]]
    (tmp_path / "ids.txt").write_text("".join(f"validation/{image_id}\n" for image_id in wanted))
    ids = str(tmp_path / "ids.txt")
    # By default only classes fetch annotations: an id list crawls from the cache alone.
    plain = tmp_path / "plain"
    assert crawl(sample_mirror, plain, version="4", subset="validation", ids=ids).returncode == 0
    again = crawl(sample_mirror, plain, version="4", subset="validation", ids=ids, download_metadata="false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(outcomes(plain, "validation")) == set(wanted)
    assert not (plain / "validation" / "annotations-bbox.csv").exists()
    assert sample_mirror.downloads("2018_04/validation/validation-annotations-bbox.csv") == 0
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="4", subset="validation", ids=ids, annotations="true")
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("boxes", "labels"):
        header, lines = written(store, "validation", kind)
        assert lines == rows_of(annotation_lines("validation", kind)[1], set(wanted))
    done = crawl(sample_mirror, tmp_path / "off", version="4", subset="validation", classes="Person",
                 annotations="false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "off" / "validation" / "annotations-labels.csv").exists()
    assert sample_mirror.downloads("2018_04/validation/validation-annotations-human-imagelabels.csv") == 1


@pytest.mark.e2e
def test_shards_and_other_classes_into_one_store_add_up(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(3, line_end="\r\n")
    store = tmp_path / "store"
    for shard in ("1/2", "2/2"):
        done = crawl(sample_mirror, store, version="3", subset="validation", classes="Person", shard=shard)
        assert done.returncode == 0, done.stderr[-3000:]
    person = mids_of("Person")
    chosen = images_with("validation", "boxes", person)
    assert set(outcomes(store, "validation")) == chosen
    _, boxes = written(store, "validation", "boxes", line_end="\r\n")  # line endings kept
    assert sorted(boxes) == sorted(rows_of(annotation_lines("validation", "boxes")[1], chosen, person))
    done = crawl(sample_mirror, store, version="3", subset="validation", classes="Car")
    assert done.returncode == 0, done.stderr[-3000:]
    car = mids_of("Car")
    with_car = images_with("validation", "boxes", car)
    assert with_car & chosen and with_car - chosen  # overlapping selections
    _, boxes = written(store, "validation", "boxes", line_end="\r\n")
    official = annotation_lines("validation", "boxes")[1]
    assert sorted(boxes) == sorted(rows_of(official, chosen, person) + rows_of(official, with_car, car))
    assert len(boxes) == len(set(boxes))  # each row once
    assert not (store / ".tmp").exists()


@pytest.mark.e2e
def test_rows_without_subset_belong_to_their_files_split(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(3, drop_subset=True)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="3", subset="all", classes="Person")
    assert done.returncode == 0, done.stderr[-3000:]
    person = mids_of("Person")
    for split in SPLITS:
        chosen = images_with(split, "boxes", person)
        assert chosen and set(outcomes(store, split)) == chosen, split
        assert written(store, split, "boxes")[1] == rows_of(annotation_lines(split, "boxes")[1], chosen, person)


@pytest.mark.e2e
def test_selection_errors_are_clear(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(1)
    store = tmp_path / "store"
    v1 = crawl(sample_mirror, store, version="1", subset="validation", classes="Person")
    assert v1.returncode != 0
    assert "version 1 has no bounding boxes for validation: try -a labels=verified" in v1.stderr
    v1 = crawl(sample_mirror, store, version="1", subset="validation", classes="Person", labels="verified")
    assert v1.returncode == 0, v1.stderr[-3000:]
    chosen = images_with("validation", "labels", mids_of("Person"))
    assert set(outcomes(store, "validation")) == chosen
    for args, message in (
        ({"metadata": str(SAMPLE / "train" / "images.csv"), "classes": "Person"}, "needs -a version=N"),
        ({"metadata": str(SAMPLE / "train" / "images.csv"), "annotations": "true"}, "needs -a version=N"),
        ({"version": "3", "subset": "train", "classes": "Person", "match": "some"}, "-a match='some'"),
        ({"version": "3", "subset": "train", "classes": "Person", "labels": "machine"}, "-a labels='machine'"),
        ({"version": "3", "subset": "train", "classes": ""}, "-a classes is empty"),
        ({"version": "3", "subset": "train", "match": "all"}, "-a match only apply with -a classes"),
        ({"version": "1", "subset": "train", "classes": "Person", "labels": "verified"},
         "version 1 has no human-verified image labels for train: try another subset"),
    ):
        done = crawl(sample_mirror, store, **args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr[-1500:])


@pytest.mark.e2e
@pytest.mark.parametrize("number", sorted(VERSIONS))
def test_every_version_layout_end_to_end(sample_mirror: SampleMirror, tmp_path: Path, number: int) -> None:
    """Each version's catalogue layout (archives or plain files, shared files, a
    header in V7's class names) fetched, unpacked and crawled with a class."""
    sample_mirror.publish_version(number)
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version=str(number), subset="validation", classes="Person",
                 labels="verified")
    assert done.returncode == 0, done.stderr[-3000:]
    mids = mids_of("Person")
    chosen = images_with("validation", "labels", mids)
    assert outcomes(store, "validation") == {image_id: ["success"] for image_id in chosen}
    assert written(store, "validation", "labels")[1] == rows_of(annotation_lines("validation", "labels")[1],
                                                                chosen, mids)
    has_boxes = "validation" in VERSIONS[number].annotations.of_kind("boxes")
    assert (store / "validation" / "annotations-bbox.csv").exists() == has_boxes
    assert has_boxes == (number != 1)


@pytest.mark.e2e
def test_annotations_in_an_object_store_add_up_across_machines(
    sample_mirror: SampleMirror, s3: S3Server, tmp_path: Path
) -> None:
    """Two crawls of other classes into one bucket, each from a work folder of its own (two
    machines): the bucket's annotation files hold both selections' rows."""
    sample_mirror.publish_version(3)
    prefix = f"{tmp_path.name}/store/"
    bucket = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
              "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION_NAME": "us-east-1",
              "OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False"}
    for machine, classes in (("one", "Person"), ("two", "Car")):
        done = version_crawl(f"s3://data/{prefix}",  # type: ignore[arg-type]
                             {**bucket, "OPENIMAGES_WORK_DIR": str(tmp_path / machine)},
                             version="3", subset="validation", classes=classes)
        assert done.returncode == 0, done.stderr[-3000:]
    person, car = mids_of("Person"), mids_of("Car")
    person_images = images_with("validation", "boxes", person)
    car_images = images_with("validation", "boxes", car)
    official_header, official = annotation_lines("validation", "boxes")
    body = s3.client().get_object(Bucket="data", Key=f"{prefix}validation/annotations-bbox.csv")["Body"].read()
    header, *lines = [line + "\n" for line in body.decode().split("\n")[:-1]]
    assert header == official_header
    assert sorted(lines) == sorted(set(rows_of(official, person_images, person) + rows_of(official, car_images, car)))
