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

from openimages_crawler.annotations import (
    AnnotationReader,
    ClassFilter,
    ClassNames,
    copy_selected_rows,
    parse_class_list,
)
from openimages_crawler.catalogue import (
    IMAGE_INFO_COLUMNS,
    IMAGES_CSV_COLUMNS,
    VERSIONS,
    MetadataSource,
    RemoteFile,
)
from openimages_crawler.mirror import Mirror, MirrorServer, Route
from openimages_crawler.rows import MetadataError
from openimages_crawler.selection import SelectionError

from .conftest import DATA, outcomes
from .test_metadata import tarball, version_crawl

SAMPLE = DATA / "v3-sample"
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

    def publish_version(self, number: int) -> None:
        """Lay the sample out as the catalogue says ``number``'s files are."""
        version = VERSIONS[number]
        columns = IMAGES_CSV_COLUMNS if number <= 3 else IMAGE_INFO_COLUMNS
        everything = [row for split in SPLITS for row in self.rows[split]]
        files: dict[MetadataSource, bytes] = {}
        for split, source in version.sources.items():
            shared = split == "all" or source == version.sources.get("all")
            files[source] = csv_bytes(everything if shared else self.rows[split], columns)
        for split, source in version.boxable_sources.items():
            boxed = images_with(split, "boxes", {line.split(",")[2] for line in annotation_lines(split, "boxes")[1]})
            files[source] = csv_bytes([row for row in self.rows[split] if row["ImageID"] in boxed], columns)
        for kind in ("boxes", "labels"):
            for split, source in version.annotations.of_kind(kind).items():
                header, lines = annotation_lines(split, kind)
                files[source] = (header + "".join(lines)).encode()
        names = CLASS_NAMES.read_bytes()
        if number == 7:  # the V7 file has a header row
            names = b"LabelName,DisplayName\n" + names
        files[version.annotations.class_names] = names
        archives: dict[RemoteFile, dict[str, bytes]] = {}
        for source, body in files.items():
            if source.member:
                archives.setdefault(source.remote, {})[source.member] = body
            else:
                self.publish(source.remote.path, body)
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


def written(store: Path, split: str, kind: str) -> tuple[str, list[str]]:
    name = "annotations-bbox.csv" if kind == "boxes" else "annotations-labels.csv"
    header, *lines = (store / split / name).read_text().splitlines(keepends=True)
    return header, lines


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
    any_of = set(ClassFilter(both).images(boxes))
    all_of = set(ClassFilter(both, match_all=True).images(boxes))
    assert any_of == images_with("validation", "boxes", person | clothing)
    assert all_of == images_with("validation", "boxes", person | clothing, every=True)
    assert all_of and all_of < any_of
    verified = set(ClassFilter(both, confirmed_only=True).images(labels))
    assert verified == images_with("validation", "labels", person | clothing)
    unconfirmed = set(ClassFilter(both).images(labels))  # Confidence 0 rows too
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
    flt = ClassFilter({"Person": frozenset({"/m/01g317"})}, confirmed_only=True)
    assert flt.images(path) == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "eeeeeeeeeeeeeeee"]
    out = io.StringIO()
    with AnnotationReader(path, ("ImageID", "LabelName")) as reader:
        copied = copy_selected_rows(reader, out, {"bbbbbbbbbbbbbbbb", "eeeeeeeeeeeeeeee"}, None)
        assert reader.malformed == 1
    assert copied == 2
    assert out.getvalue() == (
        "ImageID,Source,LabelName,Confidence\r\n"
        'bbbbbbbbbbbbbbbb,"multi\nline, source",/m/01g317,1.0\n'
        "eeeeeeeeeeeeeeee,verification,/m/01g317,1\n"
    )
    with pytest.raises(MetadataError, match="no column LabelName"):
        AnnotationReader(SAMPLE / "train" / "images.csv", ("ImageID", "LabelName"))


def test_catalogue_paths_of_annotations() -> None:
    """Pinned to the official bucket's layout (../shared/notes/openimages-formats.md)."""
    def path(number: int, kind: str, split: str) -> str:
        return VERSIONS[number].annotations.of_kind(kind)[split].local_path

    assert path(3, "boxes", "train") == "2017_11/train/annotations-human-bbox.csv"
    assert VERSIONS[3].annotations.boxes["train"].remote.path == "2017_11/annotations_human_bbox_2017_11.tar.gz"
    assert path(2, "labels", "test") == "2017_07/test/annotations-human.csv"
    assert path(4, "boxes", "validation") == "2018_04/validation/validation-annotations-bbox.csv"
    assert path(4, "labels", "train") == "2018_04/train/train-annotations-human-imagelabels.csv"
    assert path(6, "boxes", "train") == "v6/oidv6-train-annotations-bbox.csv"
    assert path(7, "boxes", "test") == "v5/test-annotations-bbox.csv"
    assert path(7, "labels", "validation") == "v7/oidv7-val-annotations-human-imagelabels.csv"
    assert VERSIONS[7].annotations.class_names.local_path == "v7/oidv7-class-descriptions.csv"
    assert VERSIONS[1].annotations.boxes == {}


# --- end to end -----------------------------------------------------------------


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


def test_match_all_verified_labels_all_labels_and_other_filters(
    sample_mirror: SampleMirror, tmp_path: Path
) -> None:
    sample_mirror.publish_version(3)
    mids = mids_of("Person", "Clothing")
    store = tmp_path / "all"
    done = crawl(sample_mirror, store, version="3", subset="test", classes="Person,Clothing", match="all",
                 labels="verified", all_labels="true")
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


def test_annotations_for_an_id_list_and_when_they_are_off(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(4)
    wanted = [row["ImageID"] for row in sample_rows("validation")[3:7]]
    (tmp_path / "ids.txt").write_text("".join(f"validation/{image_id}\n" for image_id in wanted))
    store = tmp_path / "store"
    done = crawl(sample_mirror, store, version="4", subset="validation", ids=str(tmp_path / "ids.txt"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(outcomes(store, "validation")) == set(wanted)
    for kind in ("boxes", "labels"):  # an id list is a selected set: annotations by default
        header, lines = written(store, "validation", kind)
        assert lines == rows_of(annotation_lines("validation", kind)[1], set(wanted))
    # Turned off, or a selection that is not a set of images: nothing fetched or written.
    for name, args in (("off", {"ids": str(tmp_path / "ids.txt"), "annotations": "false"}),
                       ("limit", {"limit": "3", "shard": "1/2"})):
        done = crawl(sample_mirror, tmp_path / name, version="4", subset="validation", **args)
        assert done.returncode == 0, done.stderr[-3000:]
        assert outcomes(tmp_path / name, "validation")
        assert not (tmp_path / name / "validation" / "annotations-bbox.csv").exists()
    assert sample_mirror.downloads("2018_04/validation/validation-annotations-bbox.csv") == 1
    # ... unless asked for.
    done = crawl(sample_mirror, tmp_path / "asked", version="4", subset="validation", limit="3",
                 annotations="true")
    assert done.returncode == 0, done.stderr[-3000:]
    taken = set(outcomes(tmp_path / "asked", "validation"))
    assert len(taken) == 3
    assert written(tmp_path / "asked", "validation", "labels")[1] == rows_of(
        annotation_lines("validation", "labels")[1], taken)


def test_selection_errors_are_clear(sample_mirror: SampleMirror, tmp_path: Path) -> None:
    sample_mirror.publish_version(1)
    store = tmp_path / "store"
    v1 = crawl(sample_mirror, store, version="1", subset="validation", classes="Person")
    assert v1.returncode != 0 and "version 1 has no bounding boxes for validation" in v1.stderr
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
    ):
        done = crawl(sample_mirror, store, **args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr[-1500:])


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
    has_boxes = "validation" in VERSIONS[number].annotations.boxes
    assert (store / "validation" / "annotations-bbox.csv").exists() == has_boxes
    assert has_boxes == (number != 1)
