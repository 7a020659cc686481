"""One export: for each subset, the stored images of one output with the
store's boxes, masks and captions moved into them (the official mask PNGs of
``{subset}/masks/{originals}/``), written as COCO, YOLO and/or VOC in a
staging folder, then put in place whole (a rerun replaces the previous
export; a kill leaves the previous one or none, never a half-written one)."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from openimages_crawler.dataset.annotation_index import (
    AnnotationIndex,
    SampleAnnotations,
)
from openimages_crawler.dataset.annotations import AnnotationReader, ClassNames
from openimages_crawler.dataset.catalogue import (
    ANNOTATION_ID_COLUMN,
    ANNOTATION_KINDS,
    ANNOTATION_LABEL_COLUMN,
    BOXABLE_CLASSES_FILE,
    CLASS_NAMES_FILE,
)
from openimages_crawler.dataset.masks import StoredMasks
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.dataset.selection import SelectionError
from openimages_crawler.imaging.placement import Annotations, placed_annotations
from openimages_crawler.outputs.formats import labels
from openimages_crawler.outputs.labels import ExportClass, LabelTarget, LabelWriter
from openimages_crawler.outputs.stored import StoredImage, stored_images
from openimages_crawler.store.layout import StoreLayout
from openimages_crawler.store.local import LocalStore, staging_folder
from openimages_crawler.store.lock import exclusive

logger = logging.getLogger(__name__)

INDEX_FOLDER = "metadata/exports"  # the store's annotation files indexed by image, for exports
# The kinds of annotation an export reads: objects (boxes, masks) and captions (narratives).
EXPORTED_KINDS = ("boxes", "masks", "narratives")

# How YOLO numbers the classes (their position in classes.txt and data.yaml names),
# ``--class-order``; COCO's category ids and VOC's names stay the store's ClassIndex and names.
CLASS_ORDERS: Final = {
    "store": "the export's classes in the class descriptions' order",
    "ultralytics": "all 601 boxable classes sorted by display name, numbered as Ultralytics' "
                   "open-images-v7.yaml and so OIV7-pretrained weights number them",
}
DEFAULT_CLASS_ORDER: Final = "store"
ORDERED_FORMAT: Final = "yolo"  # the one label format the class order applies to


class ExportError(Exception):
    """The export cannot be made (what to fix is in the message)."""


@dataclass
class ExportRequest:
    formats: tuple[str, ...]
    folder: str  # the output whose images the labels point at
    class_names: list[str] | None = None  # only these classes (display names or label ids)
    class_order: str = DEFAULT_CLASS_ORDER  # how YOLO numbers the classes: a name of CLASS_ORDERS
    task: str = "detect"  # what YOLO labels: a name of YOLO_TASKS


@dataclass
class ExportCounts:
    """What one subset's export holds."""

    images: int = 0
    boxes: int = 0
    boxes_left_out: int = 0  # boxes a FillCrop cut away entirely
    not_found: int = 0  # success rows whose image is not in the output
    no_geometry: int = 0  # resized images without the provenance EXIF: left out, their boxes cannot be placed
    not_boxable: int = 0  # boxes of classes the class order does not number: left out of YOLO
    masks: int = 0  # masks placed in the images
    masks_left_out: int = 0  # masks a FillCrop cut away entirely
    masks_missing: int = 0  # mask rows whose PNG the store does not hold (their objects keep a box)
    captions: int = 0
    without_mask: int = 0  # objects YOLO --task segment left out: no mask to outline
    formats: list[str] = field(default_factory=list)

    def add(self, found: Annotations, placed: Annotations) -> None:
        """One image's annotations, as found and as placed."""
        for kind in ("boxes", "masks"):
            kept = len(placed.get(kind, []))
            setattr(self, kind, getattr(self, kind) + kept)
            setattr(self, f"{kind}_left_out", getattr(self, f"{kind}_left_out") + len(found.get(kind, [])) - kept)
        self.masks_missing += sum(mask["png"] is None for mask in placed.get("masks", []))
        self.captions += len(placed.get("narratives", []))


def export_subset(store: LocalStore, layout: StoreLayout, subset: str, success_csv: Path,
                  request: ExportRequest, stop: threading.Event | None = None) -> ExportCounts:
    """Write ``{subset}/{coco,yolo,voc}`` for the images of ``request.folder``."""
    names_csv = store.path(f"{subset}/{CLASS_NAMES_FILE}")
    found_files = {kind: store.path(f"{subset}/{ANNOTATION_KINDS[kind].file}") for kind in EXPORTED_KINDS}
    found_files = {kind: path for kind, path in found_files.items() if path.is_file()}
    if not names_csv.is_file() or not {"boxes", "masks"} & set(found_files):
        raise ExportError(f"{store.path(subset)} has no {ANNOTATION_KINDS['boxes'].file} (or "
                          f"{ANNOTATION_KINDS['masks'].file}) and {CLASS_NAMES_FILE}: crawl {subset} with "
                          "-a classes=… or -a annotations=true (or a list with boxes or masks) first")
    if request.task == "segment" and "masks" not in found_files:
        raise ExportError(f"{found_files.get('masks', store.path(subset))}: no masks to outline for "
                          "--task segment: crawl with -a annotations=…,masks (versions 5 to 7)")
    if not store.path(f"{subset}/{request.folder}").is_dir():
        raise ExportError(f"{subset}/{request.folder} is not in the store: give an output with --output")
    try:
        classes = ClassNames.load(names_csv)
        wanted = frozenset().union(*classes.resolve(request.class_names).values()) if request.class_names else None
        with exclusive(store.root, f"export-{subset}", stop):
            indexes = {kind: {subset: AnnotationIndex.of(path, stop, store.path(
                f"{INDEX_FOLDER}/{subset}-{path.name}.sqlite"), kind=ANNOTATION_KINDS[kind])}
                for kind, path in found_files.items()}
        object_file = found_files.get("boxes") or found_files["masks"]
        chosen = export_classes(classes, wanted if wanted is not None else labels_in(object_file))
        numbered = ordered_classes(request.class_order, classes, chosen,
                                   store.path(f"{subset}/{BOXABLE_CLASSES_FILE}"))
    except (MetadataError, SelectionError) as exc:
        raise ExportError(str(exc)) from None
    lookup = SampleAnnotations(indexes, classes, wanted, StoredMasks(store, layout))
    staging = staging_folder(store.root, "export") / subset
    shutil.rmtree(staging, ignore_errors=True)
    targets = [LabelTarget(staging / name, store.path(f"{subset}/{name}"),
                           numbered if name == ORDERED_FORMAT else chosen, subset,
                           request.task if name == ORDERED_FORMAT else "detect") for name in request.formats]
    writers = [labels(name).writer(target) for name, target in zip(request.formats, targets, strict=True)]
    if numbered is not chosen:  # YOLO leaves out the boxes of classes the order does not number: counted
        writers = [_Counting(writer, numbered) if name == ORDERED_FORMAT else writer
                   for name, writer in zip(request.formats, writers, strict=True)]
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
        placed = placed_annotations(found, image.geometry, image.spec, (image.width, image.height))
        counts.images += 1
        counts.add(found, placed)
        for writer in writers:
            writer.add(image, placed)
    counts.not_found = len(wanted_ids) - counts.images - counts.no_geometry
    counts.not_boxable = sum(writer.left_out for writer in writers if isinstance(writer, _Counting))
    counts.without_mask = sum(getattr(writer, "without_mask", 0) for writer in writers)
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


def ordered_classes(order: str, classes: ClassNames, chosen: list[ExportClass],
                    boxable_csv: Path) -> list[ExportClass]:
    """YOLO's classes in ``order`` (a name of ``CLASS_ORDERS``): ``chosen`` as
    they are, or every boxable class of ``boxable_csv`` in Ultralytics' order."""
    if order == "store":
        return chosen
    if order == "ultralytics":
        if not boxable_csv.is_file():
            raise ExportError(f"{boxable_csv} is missing: --class-order ultralytics numbers the classes by it; "
                              "crawl again with boxes annotations (-a classes=… or -a annotations=true, "
                              "version 4 to 7), which copies it beside them")
        return ultralytics_classes(ClassNames.load(boxable_csv), classes)
    raise ExportError(f"unknown class order {order!r}: give {' or '.join(CLASS_ORDERS)}")


def ultralytics_classes(boxable: ClassNames, classes: ClassNames) -> list[ExportClass]:
    """Every boxable class, in the order of Ultralytics' open-images-v7.yaml:
    Python's sort of the display names of V5's class-descriptions-boxable.csv
    (FiftyOne's ``default_classes``, which that yaml's download script exports
    by), so a class's YOLO number is its position here, boxes or not. Names are
    the file's (the yaml has since renamed its 166 Doughnut to Donut, number
    kept); the index is the store's ClassIndex, 0 where its class descriptions
    lack the class."""
    line = {mid: number for number, mid in enumerate(classes.names, 1)}
    ordered = sorted(boxable.names.items(), key=lambda item: (item[1], item[0]))
    return [ExportClass(mid, name, line.get(mid, 0)) for mid, name in ordered]


class _Counting:
    """A label writer that counts the boxes it is given of classes it does not number."""

    def __init__(self, writer: LabelWriter, numbered: list[ExportClass]) -> None:
        self.writer = writer
        self.mids = {cls.mid for cls in numbered}
        self.left_out = 0

    def add(self, image: StoredImage, annotations: Annotations) -> None:
        self.left_out += sum(box[ANNOTATION_LABEL_COLUMN] not in self.mids for box in annotations.get("boxes", []))
        self.writer.add(image, annotations)

    def close(self) -> None:
        self.writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)  # the wrapped writer's own counts


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
