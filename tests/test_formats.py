"""The registry of output formats (``outputs.formats``): each name once, the
names users type unchanged, every container's writer and reader round trip
its samples, every label format's writer fills its folder, unknown names are
errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from openimages_crawler.outputs.formats import (
    CONTAINERS,
    FORMATS,
    LABEL_FORMATS,
    PACK_FORMATS,
    PACKED_CONTAINERS,
    UnknownFormat,
    container,
    labels,
    pack_format,
    pack_format_of,
)
from openimages_crawler.outputs.labels import ExportClass, LabelTarget
from openimages_crawler.outputs.packs import Sample
from openimages_crawler.outputs.stored import StoredImage

LABEL = {"LabelName": "/m/01g317", "DisplayName": "Person", "ClassIndex": 1, "Source": "human", "Confidence": 1.0}
BOX = {**LABEL, "XMin": 0.1, "XMax": 0.6, "YMin": 0.2, "YMax": 0.9,
       "IsOccluded": 0, "IsTruncated": 1, "IsGroupOf": 0, "IsDepiction": 0, "IsInside": 0}


def test_each_format_is_named_once_and_the_names_users_type_are_kept() -> None:
    names = [one.name for one in FORMATS]
    assert len(set(names)) == len(names)
    suffixes = [one.suffix for one in PACK_FORMATS]
    assert len(set(suffixes)) == len(suffixes)  # a stored pack's suffix tells its format
    assert CONTAINERS == ("files", "webdataset", "parquet", "tfrecord")
    assert PACKED_CONTAINERS == ("webdataset", "parquet", "tfrecord")
    assert LABEL_FORMATS == ("coco", "yolo", "voc")
    assert set(CONTAINERS) | set(LABEL_FORMATS) == set(names)
    assert all(container(name).name == name for name in CONTAINERS)
    assert all(labels(name).name == name for name in LABEL_FORMATS)


@pytest.mark.parametrize("name", PACKED_CONTAINERS)
@pytest.mark.parametrize("annotated", [False, True])
def test_each_container_reads_back_what_it_wrote(tmp_path: Path, name: str, annotated: bool) -> None:
    packed_format = pack_format(name)
    assert container(name) is packed_format
    annotations = {"labels": [LABEL], "boxes": [BOX]} if annotated else None
    samples = [Sample("000a1249af2bc5f0", b"\xff\xd8 jpeg bytes", "jpg", 20, 10,
                      {"ImageID": "000a1249af2bc5f0", "Title": "a \"title\", with a comma"}, annotations),
               Sample("0000b86e2fd18333", b"\x89PNG bytes", "png", 7, 9,
                      {"ImageID": "0000b86e2fd18333", "Title": ""}, annotations)]
    path = tmp_path / f"000000{packed_format.suffix}"
    writer = packed_format.writer(path, samples[0])
    for sample in samples:
        writer.add(sample)
    writer.close()
    assert pack_format_of(path.name) is packed_format
    assert list(packed_format.reader(path)) == [(sample.image_id, sample.ext, sample.data) for sample in samples]


@pytest.mark.parametrize("name", LABEL_FORMATS)
def test_each_label_format_writes_its_folder(tmp_path: Path, name: str) -> None:
    target = LabelTarget(tmp_path / "staging" / name, tmp_path / "train" / name,
                         [ExportClass("/m/01g317", "Person", 1)], "train")
    writer = labels(name).writer(target)
    writer.add(StoredImage("000a1249af2bc5f0", "crop/000/000a1249af2bc5f0.jpg", 20, 10, None, None), {"boxes": [BOX]})
    writer.close()
    written = [path for path in target.folder.rglob("*") if path.is_file() or path.is_symlink()]
    assert written and not any(path.name.endswith(".part") for path in written)


@pytest.mark.parametrize(("lookup", "name", "known"), [
    (container, "zip", "files, webdataset, parquet, tfrecord"),
    (container, "coco", "files, webdataset, parquet, tfrecord"),  # a label format is no container
    (pack_format, "files", "webdataset, parquet, tfrecord"),  # files are not packs
    (labels, "webdataset", "coco, yolo, voc"),
    (labels, "COCO", "coco, yolo, voc"),  # names are compared as typed (the parsers lower them)
    (pack_format_of, "000000.zip", ".tar, .parquet, .tfrecord"),
])
def test_an_unknown_name_is_an_error_that_lists_the_known_ones(lookup: Callable[[str], object], name: str,
                                                               known: str) -> None:
    with pytest.raises(UnknownFormat, match=re.escape(known)):
        lookup(name)
