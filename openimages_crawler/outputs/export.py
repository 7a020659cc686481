"""One export: for each subset, the stored images of one output with the
store's boxes moved into them, written as COCO, YOLO and/or VOC in a staging
folder, then put in place whole (a rerun replaces the previous export; a kill
leaves the previous one or none, never a half-written one)."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from openimages_crawler.dataset.annotation_index import (
    AnnotationIndex,
    SampleAnnotations,
)
from openimages_crawler.dataset.annotations import AnnotationReader, ClassNames
from openimages_crawler.dataset.catalogue import (
    ANNOTATION_KINDS,
    ANNOTATION_ID_COLUMN,
    ANNOTATION_LABEL_COLUMN,
    CLASS_NAMES_FILE,
)
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.dataset.selection import SelectionError
from openimages_crawler.imaging.boxes import placed_annotations
from openimages_crawler.outputs.formats import labels
from openimages_crawler.outputs.labels import ExportClass, LabelTarget
from openimages_crawler.outputs.stored import stored_images
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore, staging_folder
from openimages_crawler.store.lock import exclusive

logger = logging.getLogger(__name__)

INDEX_FOLDER = "metadata/exports"  # the store's annotation files indexed by image, for exports


class ExportError(Exception):
    """The export cannot be made (what to fix is in the message)."""


@dataclass
class ExportRequest:
    formats: tuple[str, ...]
    folder: str  # the output whose images the labels point at
    class_names: list[str] | None = None  # only these classes (display names or label ids)


@dataclass
class ExportCounts:
    """What one subset's export holds."""

    images: int = 0
    boxes: int = 0
    boxes_left_out: int = 0  # boxes a FillCrop cut away entirely
    not_found: int = 0  # success rows whose image is not in the output
    no_geometry: int = 0  # resized images without the provenance EXIF: left out, their boxes cannot be placed
    formats: list[str] = field(default_factory=list)


def export_subset(store: LocalStore, layout: StoreLayout, subset: str, success_csv: Path,
                  request: ExportRequest, stop: threading.Event | None = None) -> ExportCounts:
    """Write ``{subset}/{coco,yolo,voc}`` for the images of ``request.folder``."""
    boxes_csv = store.path(f"{subset}/{ANNOTATION_KINDS['boxes'].file}")
    names_csv = store.path(f"{subset}/{CLASS_NAMES_FILE}")
    for path in (boxes_csv, names_csv):
        if not path.is_file():
            raise ExportError(f"{path} is missing: crawl {subset} with -a classes=… or -a annotations=true first")
    if not store.path(f"{subset}/{request.folder}").is_dir():
        raise ExportError(f"{subset}/{request.folder} is not in the store: give an output with --output")
    try:
        classes = ClassNames.load(names_csv)
        wanted = frozenset().union(*classes.resolve(request.class_names).values()) if request.class_names else None
        with exclusive(store.root, f"export-{subset}", stop):
            index = AnnotationIndex.of(boxes_csv, stop, store.path(f"{INDEX_FOLDER}/{subset}-{boxes_csv.name}.sqlite"))
        chosen = export_classes(classes, wanted if wanted is not None else labels_in(boxes_csv))
    except (MetadataError, SelectionError) as exc:
        raise ExportError(str(exc)) from None
    lookup = SampleAnnotations({subset: index}, {}, classes, wanted)
    staging = staging_folder(store.root, "export") / subset
    shutil.rmtree(staging, ignore_errors=True)
    targets = [LabelTarget(staging / name, store.path(f"{subset}/{name}"), chosen, subset) for name in request.formats]
    writers = [labels(name).writer(target) for name, target in zip(request.formats, targets, strict=True)]
    counts = ExportCounts(formats=list(request.formats))
    wanted_ids = list(success_ids(success_csv))
    for image in stored_images(store, layout, subset, request.folder, wanted_ids):
        if stop is not None and stop.is_set():
            shutil.rmtree(staging, ignore_errors=True)
            raise ExportError("stopped: the previous export (if any) is left as it was")
        if image.geometry is None and request.folder != layout.originals_dir:
            counts.no_geometry += 1  # made by another tool, or an old version: where its boxes go is unknown
            continue
        found = lookup.of(subset, image.image_id)
        placed = placed_annotations(found, image.geometry, image.spec)["boxes"]
        counts.images += 1
        counts.boxes += len(placed)
        counts.boxes_left_out += len(found["boxes"]) - len(placed)
        for writer in writers:
            writer.add(image, placed)
    counts.not_found = len(wanted_ids) - counts.images - counts.no_geometry
    for target, writer in zip(targets, writers, strict=True):
        writer.close()
        _put_in_place(target.folder, target.final)
    shutil.rmtree(staging.parent, ignore_errors=True)
    return counts


def _put_in_place(built: Path, final: Path) -> None:
    """Swap a finished export folder in; the previous one goes to staging, then away."""
    old = built.with_name(built.name + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(built, final)
    shutil.rmtree(old, ignore_errors=True)


def export_classes(classes: ClassNames, mids: frozenset[str] | set[str]) -> list[ExportClass]:
    """The classes of an export, in the class descriptions' order."""
    order = {mid: number for number, mid in enumerate(classes.names, 1)}
    known = sorted((mid for mid in mids if mid in order), key=order.__getitem__)
    return [ExportClass(mid, classes.names[mid], order[mid]) for mid in known]


def labels_in(boxes_csv: Path) -> set[str]:
    """The label ids a box file uses."""
    with AnnotationReader(boxes_csv, (ANNOTATION_LABEL_COLUMN,)) as reader:
        return {values[0] for _, values in reader}


def success_ids(path: Path) -> Iterator[str]:
    """The ImageIDs of a results file (none if it does not exist yet)."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if ANNOTATION_ID_COLUMN not in (reader.fieldnames or []):
            raise ExportError(f"{path} has no ImageID column")
        for row in reader:
            yield row[ANNOTATION_ID_COLUMN]
