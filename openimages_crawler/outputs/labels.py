"""COCO, YOLO and Pascal VOC writers: each fills a staging folder that
``outputs.export`` puts in place whole. An image's annotations arrive moved
into the stored image (``imaging.placement.placed_annotations``): boxes as
fractions, masks as PNGs of its size. Which name stands for which writer is
``outputs.formats``."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from openimages_crawler.imaging.boxes import NormBox
from openimages_crawler.imaging.masks import (
    joined_polygon,
    mask_area,
    mask_polygons,
    mask_rle,
)
from openimages_crawler.imaging.placement import (
    Annotations,
    mask_at,
    objects_with_masks,
)

if TYPE_CHECKING:  # hints only: stored.py reads packs through outputs.formats, which imports this module
    from openimages_crawler.outputs.stored import StoredImage


@dataclass(frozen=True, slots=True)
class ExportClass:
    """A class of an export: its label id, display name and ClassIndex (1-based
    line in the class descriptions: COCO's category id)."""

    mid: str
    name: str
    index: int


# What a YOLO export labels (``--task``): boxes, or the masks' outlines.
YOLO_TASKS = ("detect", "segment")
# The largest parts of a mask an outline joins (joining is quadratic in the parts; the
# rest of a mask broken into more pieces than this is specks).
MAX_PARTS = 64


@dataclass(frozen=True, slots=True)
class LabelTarget:
    """What a writer of one format of a subset's export is given."""

    folder: Path  # the staging folder it fills
    final: Path  # where ``outputs.export`` puts that folder once it is closed
    classes: list[ExportClass]
    subset: str
    task: str = "detect"  # YOLO's: a name of YOLO_TASKS


class LabelWriter(Protocol):
    def add(self, image: StoredImage, annotations: Annotations) -> None: ...

    def close(self) -> None: ...


def objects_of(image: StoredImage, annotations: Annotations) -> list[tuple[dict[str, Any], Image.Image | None]]:
    """The image's objects (its boxes; its masks where no boxes were written),
    each with its mask at the image's pixel size, or ``None``."""
    objects, pngs = objects_with_masks(annotations.get("boxes", []), annotations.get("masks"))
    size = (image.width, image.height)
    return [(item, mask_at(png, size) if png is not None else None)
            for item, png in zip(objects, pngs or [None] * len(objects), strict=True)]


# Open Images flags -> the COCO annotation's extra fields (-1: unknown, as a mask has none).
_COCO_FLAGS = {"IsOccluded": "is_occluded", "IsTruncated": "is_truncated", "IsGroupOf": "is_group_of",
               "IsDepiction": "is_depiction", "IsInside": "is_inside"}


def _norm(box: dict[str, Any]) -> NormBox:
    return NormBox(box["XMin"], box["XMax"], box["YMin"], box["YMax"])


class CocoWriter:
    """``instances.json``: images (file_name relative to it), categories (the
    label id kept as ``label_name``), annotations with bbox [x, y, w, h] in
    pixels, iscrowd from IsGroupOf, the Open Images flags as extra fields, and
    ``segmentation``: the object's mask as compressed RLE (pycocotools' own
    encoding, ``area`` its pixel count) where the store has one, else the
    box's rectangle as a polygon (``area`` the box's). With narratives,
    ``captions.json`` in COCO's captions format. Streamed through temporary
    files, so memory stays flat."""

    def __init__(self, target: LabelTarget) -> None:
        self.folder = target.folder
        self.classes = target.classes
        self.category = {cls.mid: cls.index for cls in target.classes}
        self.subset = target.subset
        self.folder.mkdir(parents=True, exist_ok=True)
        self.images = open(self.folder / ".images.part", "w", encoding="utf-8")
        self.annotations = open(self.folder / ".annotations.part", "w", encoding="utf-8")
        self.captions = open(self.folder / ".captions.part", "w", encoding="utf-8")
        self.image_count = self.box_count = self.caption_count = 0

    def add(self, image: StoredImage, annotations: Annotations) -> None:
        self.image_count += 1
        image_id = self.image_count
        entry: dict[str, Any] = {"id": image_id, "file_name": f"../{image.path}", "width": image.width,
                                 "height": image.height, "open_images_id": image.image_id}
        if image.in_pack:
            entry["shard"] = image.pack
        self.images.write(("," if image_id > 1 else "") + json.dumps(entry, ensure_ascii=False) + "\n")
        for box, mask in objects_of(image, annotations):
            category = self.category.get(box["LabelName"])
            if category is None:
                continue
            x, y, w, h = (round(value, 2) for value in _norm(box).pixels(image.width, image.height))
            self.box_count += 1
            segmentation: Any = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            area: float = round(w * h, 2)
            if mask is not None:
                segmentation, area = mask_rle(mask), mask_area(mask)
            annotation = {
                "id": self.box_count, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                "area": area, "iscrowd": 1 if box.get("IsGroupOf") == 1 else 0, "segmentation": segmentation,
                "label_name": box["LabelName"], "source": box.get("Source", ""),
                "confidence": box.get("Confidence", 1.0),
                **{key: box.get(flag, -1) for flag, key in _COCO_FLAGS.items()},
            }
            self.annotations.write(("," if self.box_count > 1 else "") + json.dumps(annotation) + "\n")
        for narrative in annotations.get("narratives", []):
            self.caption_count += 1
            caption = {"id": self.caption_count, "image_id": image_id, "caption": narrative["caption"]}
            self.captions.write(("," if self.caption_count > 1 else "") + json.dumps(caption, ensure_ascii=False)
                                + "\n")

    def close(self) -> None:
        for part in (self.images, self.annotations, self.captions):
            part.close()
        categories = [{"id": cls.index, "name": cls.name, "supercategory": "object", "label_name": cls.mid}
                      for cls in self.classes]
        info = {"description": f"Open Images, {self.subset}: the images of this store", "version": "1.0"}
        head = '{"info": ' + json.dumps(info) + ', "licenses": [], '
        self._join("instances.json", head + '"categories": ' + json.dumps(categories, ensure_ascii=False),
                   ".annotations.part")
        if self.caption_count:
            self._join("captions.json", head.rstrip(", "), ".captions.part")
        else:
            (self.folder / ".captions.part").unlink()
        (self.folder / ".images.part").unlink()

    def _join(self, name: str, head: str, annotations: str) -> None:
        """``{head, "images": [...], "annotations": [...]}`` from the parts."""
        with open(self.folder / name, "w", encoding="utf-8") as out:
            out.write(head + ',\n"images": [\n')
            for part, closing in ((".images.part", '],\n"annotations": [\n'), (annotations, "]}\n")):
                with open(self.folder / part, encoding="utf-8") as source:
                    shutil.copyfileobj(source, out)
                out.write(closing)
        (self.folder / annotations).unlink()


class YoloWriter:
    """Ultralytics layout: ``labels/{ImageID}.txt``, ``images/{ImageID}.{ext}``
    linking to the stored file (files outputs), ``classes.txt`` and
    ``data.yaml``. A label line is ``class x_center y_center width height``
    (fractions; task ``detect``) or ``class x1 y1 x2 y2 …`` (task ``segment``:
    the outline of the object's mask, its separate parts (the MAX_PARTS
    largest) joined into one polygon as Ultralytics' own converter joins them; an object without a
    mask is left out, counted in ``without_mask``: Ultralytics drops every
    outline of a dataset that mixes boxes and outlines)."""

    def __init__(self, target: LabelTarget) -> None:
        self.folder = target.folder
        self.final = target.final  # data.yaml names it, links are relative to it
        self.number = {cls.mid: number for number, cls in enumerate(target.classes)}
        self.classes = target.classes
        self.segment = target.task == "segment"
        (self.folder / "labels").mkdir(parents=True, exist_ok=True)
        self.linked = self.without_mask = 0

    def add(self, image: StoredImage, annotations: Annotations) -> None:
        lines = []
        for box, mask in objects_of(image, annotations) if self.segment else (
                (box, None) for box in objects_with_masks(annotations.get("boxes", []), annotations.get("masks"))[0]):
            number = self.number.get(box["LabelName"])
            if number is None:
                continue
            if self.segment:
                polygon = joined_polygon(mask_polygons(mask)[:MAX_PARTS]) if mask is not None else []
                if not polygon:
                    self.without_mask += 1
                    continue
                lines.append(f"{number} " + " ".join(f"{value:.6f}" for value in polygon) + "\n")
                continue
            norm = _norm(box)
            lines.append(f"{number} {(norm.xmin + norm.xmax) / 2:.6f} {(norm.ymin + norm.ymax) / 2:.6f} "
                         f"{norm.xmax - norm.xmin:.6f} {norm.ymax - norm.ymin:.6f}\n")
        (self.folder / "labels" / f"{image.image_id}.txt").write_text("".join(lines), encoding="utf-8")
        if not image.in_pack:
            images = self.folder / "images"
            images.mkdir(exist_ok=True)
            ext = image.path.rpartition(".")[2]
            os.symlink(f"../../{image.path}", images / f"{image.image_id}.{ext}")
            self.linked += 1

    def close(self) -> None:
        (self.folder / "classes.txt").write_text("".join(f"{cls.name}\n" for cls in self.classes), encoding="utf-8")
        if not self.linked:
            return  # images in packs: Ultralytics cannot read them, so no data.yaml points at them
        names = "".join(f"  {number}: {json.dumps(cls.name, ensure_ascii=False)}\n"
                        for number, cls in enumerate(self.classes))
        (self.folder / "data.yaml").write_text(
            "# Ultralytics dataset: images/ links to the stored images, labels/ holds their boxes\n"
            f"path: {json.dumps(str(self.final.resolve()))}\ntrain: images\nval: images\nnames:\n{names}",
            encoding="utf-8")


class VocWriter:
    """Pascal VOC: ``Annotations/{ImageID}.xml``, pixel boxes (1-based, inclusive)."""

    def __init__(self, target: LabelTarget) -> None:
        self.folder = target.folder / "Annotations"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names = {cls.mid: cls.name for cls in target.classes}

    def add(self, image: StoredImage, annotations: Annotations) -> None:
        boxes = objects_with_masks(annotations.get("boxes", []), annotations.get("masks"))[0]
        root = ElementTree.Element("annotation")
        _text(root, "folder", image.path.split("/", 1)[0])
        _text(root, "filename", image.path.rpartition("/")[2])
        _text(root, "path", f"../../{image.path}")
        _text(ElementTree.SubElement(root, "source"), "database", "Open Images")
        size = ElementTree.SubElement(root, "size")
        for name, value in (("width", image.width), ("height", image.height), ("depth", 3)):
            _text(size, name, value)
        _text(root, "segmented", 0)
        for box in boxes:
            name = self.names.get(box["LabelName"])
            if name is None:
                continue
            item = ElementTree.SubElement(root, "object")
            _text(item, "name", name)
            _text(item, "label_name", box["LabelName"])
            _text(item, "pose", "Unspecified")
            _text(item, "truncated", int(box.get("IsTruncated") == 1))
            _text(item, "occluded", int(box.get("IsOccluded") == 1))
            _text(item, "difficult", 0)
            norm = _norm(box)
            xmin, ymin = round(norm.xmin * image.width) + 1, round(norm.ymin * image.height) + 1
            bounds = ElementTree.SubElement(item, "bndbox")
            for key, value in (("xmin", xmin), ("ymin", ymin), ("xmax", max(xmin, round(norm.xmax * image.width))),
                               ("ymax", max(ymin, round(norm.ymax * image.height)))):
                _text(bounds, key, value)
        ElementTree.ElementTree(root).write(self.folder / f"{image.image_id}.xml", encoding="utf-8",
                                            xml_declaration=True)

    def close(self) -> None:
        """Every file is complete when written."""


def _text(parent: ElementTree.Element, tag: str, value: object) -> None:
    ElementTree.SubElement(parent, tag).text = str(value)
