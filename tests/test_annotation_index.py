"""Annotation files indexed by image (``dataset.annotation_index``): what a
pack sample carries, checked against the real V3 sample files."""

from __future__ import annotations

import csv
import os
import shutil
import threading
from pathlib import Path

import pytest

from openimages_crawler.dataset.annotation_index import (
    INDEX_SUFFIX,
    AnnotationIndex,
    SampleAnnotations,
)
from openimages_crawler.dataset.annotations import ClassNames, CopyStopped
from tests.conftest import DATA

SAMPLE = DATA / "v3-sample"


def csv_records(path: Path) -> dict[str, list[dict[str, str]]]:
    by_image: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            by_image.setdefault(record["ImageID"], []).append(record)
    return by_image


def copied(tmp_path: Path, split: str, name: str) -> Path:
    target = tmp_path / split / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / split / name, target)
    return target


def test_every_image_has_its_records_in_file_order(tmp_path: Path) -> None:
    source = copied(tmp_path, "validation", "annotations-human-bbox.csv")
    index = AnnotationIndex.of(source)
    assert index.path == source.with_name(source.name + INDEX_SUFFIX)
    expected = csv_records(source)
    assert len(expected) > 30
    for image_id, records in expected.items():
        assert list(index.records(image_id)) == records
    assert list(index.records("ffffffffffffffff")) == []
    # Threads read at once (each has its own connection).
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(all(
        list(index.records(image_id)) == records for image_id, records in expected.items()))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


def test_built_once_rebuilt_when_the_file_changes_and_stopped_cleanly(tmp_path: Path) -> None:
    source = tmp_path / "labels.csv"
    source.write_bytes(b"ImageID,Source,LabelName,Confidence\r\n"
                       b'aaaaaaaaaaaaaaaa,"multi\nline, source",/m/01g317,1.0\r\n'
                       b"bbbbbbbbbbbbbbbb,verification,/m/01g317,0\n")
    index = AnnotationIndex.of(source)
    assert list(index.records("aaaaaaaaaaaaaaaa")) == [
        {"ImageID": "aaaaaaaaaaaaaaaa", "Source": "multi\nline, source", "LabelName": "/m/01g317", "Confidence": "1.0"}]
    built = index.path.stat().st_mtime_ns
    AnnotationIndex.of(source)
    assert index.path.stat().st_mtime_ns == built  # not built again
    source.write_bytes(b"ImageID,Source,LabelName,Confidence\ncccccccccccccccc,verification,/m/01g317,1\n")
    os.utime(source, ns=(built + 10**9, built + 10**9))
    rebuilt = AnnotationIndex.of(source)
    assert list(rebuilt.records("bbbbbbbbbbbbbbbb")) == []
    assert [r["ImageID"] for r in rebuilt.records("cccccccccccccccc")] == ["cccccccccccccccc"]

    big = tmp_path / "big.csv"
    big.write_text("ImageID,LabelName\n" + "".join(f"{n:016x},/m/x\n" for n in range(120_000)))
    stop = threading.Event()
    stop.set()
    with pytest.raises(CopyStopped):
        AnnotationIndex.of(big, stop)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["labels.csv", "labels.csv" + INDEX_SUFFIX, "big.csv"])  # no staging file left


def test_sample_annotations_filter_classes_and_mark_missing_flags(tmp_path: Path) -> None:
    boxes = {split: AnnotationIndex.of(copied(tmp_path, split, "annotations-human-bbox.csv"))
             for split in ("train", "validation")}
    labels = {"train": AnnotationIndex.of(copied(tmp_path, "train", "annotations-human.csv"))}
    classes = ClassNames.load(SAMPLE / "class-descriptions.csv")
    every = SampleAnnotations({"boxes": boxes, "labels": labels}, classes)
    train_boxes = csv_records(SAMPLE / "train" / "annotations-human-bbox.csv")
    image_id, records = next(iter(train_boxes.items()))
    found = every.of("train", image_id)
    assert [(box["LabelName"], box["XMin"], box["YMax"]) for box in found["boxes"]] == [
        (record["LabelName"], float(record["XMin"]), float(record["YMax"])) for record in records]
    first = found["boxes"][0]
    assert first["DisplayName"] == classes.names[first["LabelName"]]
    assert first["ClassIndex"] == list(classes.names).index(first["LabelName"]) + 1
    assert first["IsGroupOf"] == -1  # the V3 train box file has no flag columns
    label_rows = csv_records(SAMPLE / "train" / "annotations-human.csv")[image_id]
    assert [(label["LabelName"], label["Confidence"]) for label in found["labels"]] == [
        (row["LabelName"], float(row["Confidence"])) for row in label_rows]

    validation = csv_records(SAMPLE / "validation" / "annotations-human-bbox.csv")
    grouped = next(record for rows in validation.values() for record in rows if record["IsGroupOf"] == "1")
    found = every.of("validation", grouped["ImageID"])
    assert any(box["IsGroupOf"] == 1 for box in found["boxes"]) and found["labels"] == []  # no labels file given
    only = SampleAnnotations({"boxes": boxes, "labels": labels}, classes, frozenset({grouped["LabelName"]}))
    kept = only.of("validation", grouped["ImageID"])["boxes"]
    assert kept and {box["LabelName"] for box in kept} == {grouped["LabelName"]}
    assert only.of("test", grouped["ImageID"]) == {"boxes": [], "labels": []}  # a split without files
