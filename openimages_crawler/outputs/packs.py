"""Packs, the files of a packed container: the writer and the reader of each
container's file format (WebDataset tar, Parquet, TFRecord), one ``Sample``
per image. Which name stands for which is ``outputs.formats``; numbering and
publishing packs is ``outputs.containers``. pyarrow and tfrecord are
imported only by the formats that need them; no Scrapy import.
"""

from __future__ import annotations

import functools
import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from openimages_crawler.imaging.placement import (
    BOX_COORDINATES,
    MASK_BOX,
    mask_png_at,
    objects_with_masks,
)

IMAGE_EXTENSIONS = ("jpg", "png", "webp")  # the formats an image is stored in
PARQUET_ROW_GROUP = 1000  # images per row group: ~1000 rows stream well and keep the footer small
PARQUET_READ_BATCH = 256  # rows read at once
ANNOTATION_KEYS = ("labels", "boxes", "masks", "points", "relationships", "narratives")
BOX_FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
_TF_FLAGS = {"IsOccluded": "occluded", "IsTruncated": "truncated", "IsGroupOf": "group_of",
             "IsDepiction": "depiction"}  # the TF Object Detection API's names

# (ImageID, extension, image bytes) of one sample, as a pack's reader gives it.
StoredSample = tuple[str, str, bytes]


# Labels and boxes of a sample, when annotations are written (see
# dataset.annotation_index.SampleAnnotations; boxes in the stored image's fractions).
Annotations = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One image as a pack stores it."""

    image_id: str
    data: bytes
    ext: str  # jpg, png, webp (the stored bytes' format)
    width: int
    height: int
    fields: dict[str, str]  # the metadata row
    annotations: Annotations | None = None  # None: the crawl writes no annotations

    def metadata(self) -> dict[str, Any]:
        """What a sample carries beside its bytes (WebDataset's ``.json``): each
        mask names its PNG member (``mask{n}.png``, ``None`` when it could not be had)."""
        annotations = dict(self.annotations or {})
        if "masks" in annotations:
            annotations["masks"] = [{**{key: value for key, value in mask.items() if key != "png"},
                                     "file": f"mask{number}.png" if mask["png"] is not None else None}
                                    for number, mask in enumerate(annotations["masks"])]
        return {**self.fields, "width": self.width, "height": self.height, **annotations}

    def captions(self) -> list[str]:
        """The image's narratives' captions (a caption model's text)."""
        return [narrative["caption"] for narrative in (self.annotations or {}).get("narratives", [])]


class PackWriter(Protocol):
    """One open pack."""

    def add(self, sample: Sample) -> None: ...

    def close(self) -> None: ...


class TarPack:
    """WebDataset: ``{ImageID}.{ext}`` and ``{ImageID}.json`` per sample, in order;
    with masks ``{ImageID}.mask{n}.png`` (the ``.json``'s n-th mask), with
    narratives ``{ImageID}.txt`` (the captions, one per line: what caption
    loaders read)."""

    def __init__(self, path: Path, first: Sample) -> None:
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.mtime = int(time.time())

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, sample: Sample) -> None:
        self._member(f"{sample.image_id}.{sample.ext}", sample.data)
        self._member(f"{sample.image_id}.json", json.dumps(sample.metadata(), ensure_ascii=False).encode())
        annotations = sample.annotations or {}
        for number, mask in enumerate(annotations.get("masks", [])):
            if mask["png"] is not None:
                self._member(f"{sample.image_id}.mask{number}.png", mask["png"])
        if "narratives" in annotations:
            self._member(f"{sample.image_id}.txt", "\n".join(sample.captions()).encode())

    def close(self) -> None:
        self.tar.close()


class ParquetPack:
    """One row per image: ImageID, the bytes, format, width, height, the
    metadata columns (as strings) and, when annotations are written, ``labels``
    and ``boxes`` as list-of-struct columns; in row groups of PARQUET_ROW_GROUP."""

    def __init__(self, path: Path, first: Sample) -> None:
        import pyarrow as pa  # noqa: PLC0415 (only parquet outputs need it)
        import pyarrow.parquet as pq  # noqa: PLC0415

        self.pa = pa
        names = ["ImageID", "image", "format", "width", "height", *ANNOTATION_KEYS]
        self.columns = [name for name in first.fields if name not in names]
        self.kinds = [kind for kind in ANNOTATION_KEYS if kind in (first.annotations or {})]
        types = _parquet_types(pa)
        self.schema = pa.schema(
            [("ImageID", pa.string()), ("image", pa.binary()), ("format", pa.string()),
             ("width", pa.int32()), ("height", pa.int32())]
            + [(name, pa.string()) for name in self.columns]
            + [(kind, pa.list_(pa.struct(types[kind]))) for kind in self.kinds])
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows: list[Sample] = []

    def add(self, sample: Sample) -> None:
        self.rows.append(sample)
        if len(self.rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        rows, self.rows = self.rows, []
        arrays = {
            "ImageID": [s.image_id for s in rows], "image": [s.data for s in rows],
            "format": [s.ext for s in rows], "width": [s.width for s in rows], "height": [s.height for s in rows],
            **{name: [s.fields.get(name, "") for s in rows] for name in self.columns},
        }
        for kind in self.kinds:
            arrays[kind] = [(s.annotations or {}).get(kind, []) for s in rows]
        self.writer.write_table(self.pa.table(arrays, schema=self.schema))

    def close(self) -> None:
        self._flush()
        self.writer.close()


def _parquet_types(pa: Any) -> dict[str, list[tuple[str, Any]]]:
    """Each kind's list-of-struct fields, as ``SampleAnnotations`` and ``placed_annotations`` make them."""
    named = [("LabelName", pa.string()), ("DisplayName", pa.string()), ("ClassIndex", pa.int32())]
    label = [*named, ("Source", pa.string()), ("Confidence", pa.float64())]
    return {
        "labels": label,
        "boxes": label + [(name, pa.float64()) for name in BOX_COORDINATES] + [(name, pa.int8()) for name in BOX_FLAGS],
        "masks": [*named, ("MaskPath", pa.string()), ("BoxID", pa.string()),
                  *((name, pa.float64()) for name in MASK_BOX), ("PredictedIoU", pa.float64()),
                  ("Clicks", pa.list_(pa.struct([("X", pa.float64()), ("Y", pa.float64()), ("Inside", pa.int8())]))),
                  ("png", pa.binary())],
        "points": [*named, ("X", pa.float64()), ("Y", pa.float64()), ("EstimatedYesNo", pa.string()),
                   ("Source", pa.string()), ("YesVotes", pa.int32()), ("NoVotes", pa.int32()),
                   ("UnsureVotes", pa.int32()), ("TextLabel", pa.string())],
        "relationships": [(f"{name}{side}", kind) for side in "12" for name, kind in named[:2]]
                         + [("RelationshipLabel", pa.string())]
                         + [(f"{name}{side}", pa.float64()) for side in "12" for name in BOX_COORDINATES],
        "narratives": [("caption", pa.string()), ("annotator_id", pa.int64()),
                       ("timed_caption", pa.list_(pa.struct([("utterance", pa.string()), ("start_time", pa.float64()),
                                                             ("end_time", pa.float64())]))),
                       ("traces", pa.list_(pa.list_(pa.struct([("x", pa.float64()), ("y", pa.float64()),
                                                               ("t", pa.float64())]))))],
    }


class TfRecordPack:
    """One ``tf.train.Example`` per image with the conventional keys
    (``image/encoded``, ``image/format``, ``image/height``, ``image/width``,
    ``image/source_id``), the metadata as ``openimages/{column}`` and, when
    annotations are written, the TF Object Detection API's keys:
    ``image/object/bbox/{xmin,xmax,ymin,ymax}`` (fractions),
    ``image/object/class/{label,text}``, ``image/object/{occluded,truncated,
    group_of,depiction}`` and the image labels as ``image/class/{label,text,
    confidence}``; written by the ``tfrecord`` package (its own protobuf
    definitions, no TensorFlow)."""

    def __init__(self, path: Path, first: Sample) -> None:
        from tfrecord.writer import TFRecordWriter  # noqa: PLC0415 (only tfrecord outputs need it)

        self.writer = TFRecordWriter(str(path))

    def add(self, sample: Sample) -> None:
        self.writer.write({
            "image/encoded": (sample.data, "byte"),
            "image/format": (sample.ext.encode(), "byte"),
            "image/height": (sample.height, "int"),
            "image/width": (sample.width, "int"),
            "image/source_id": (sample.image_id.encode(), "byte"),
            **{f"openimages/{name}": (value.encode(), "byte") for name, value in sample.fields.items()},
            **(_tf_annotations(sample.annotations, (sample.width, sample.height))
               if sample.annotations is not None else {}),
        })

    def close(self) -> None:
        self.writer.close()


def _tf_annotations(annotations: Annotations, size: tuple[int, int]) -> dict[str, tuple[list[Any], str]]:
    """The TF Object Detection API's keys. Its objects are the boxes; with
    masks, ``image/object/mask`` holds one PNG per object: the box's mask
    (``objects_with_masks``), an empty mask for a box without one. Masks
    written without boxes are the objects themselves (their boxes)."""
    labels = annotations.get("labels", [])
    objects, masks = objects_with_masks(annotations.get("boxes", []), annotations.get("masks"))
    features: dict[str, tuple[list[Any], str]] = {
        **{f"image/object/bbox/{name.lower()}": ([box[name] for box in objects], "float") for name in BOX_COORDINATES},
        "image/object/class/label": ([box["ClassIndex"] for box in objects], "int"),
        "image/object/class/text": ([box["DisplayName"].encode() for box in objects], "byte"),
        **{f"image/object/{key}": ([box.get(flag, -1) for box in objects], "int") for flag, key in _TF_FLAGS.items()},
        "image/class/label": ([label["ClassIndex"] for label in labels], "int"),
        "image/class/text": ([label["DisplayName"].encode() for label in labels], "byte"),
        "image/class/confidence": ([label["Confidence"] for label in labels], "float"),
    }
    if masks is not None:
        # the API's masks are of the image's size (an original's official ones may not be)
        sized = [mask_png_at(png, size) if png is not None else None for png in masks]
        features["image/object/mask"] = ([png or _empty_png(size) for png in sized], "byte")
    if "points" in annotations:
        points = annotations["points"]
        features.update({"image/point/x": ([point["X"] for point in points], "float"),
                         "image/point/y": ([point["Y"] for point in points], "float"),
                         "image/point/class/text": ([point["DisplayName"].encode() for point in points], "byte"),
                         "image/point/yes_no": ([point["EstimatedYesNo"].encode() for point in points], "byte")})
    if "narratives" in annotations:
        features["image/caption"] = ([item["caption"].encode() for item in annotations["narratives"]], "byte")
    return features


@functools.lru_cache(maxsize=8)
def _empty_png(size: tuple[int, int]) -> bytes:
    """A mask with nothing inside, for a box without one (the API wants one PNG per object)."""
    out = io.BytesIO()
    Image.new("1", size, 0).save(out, "PNG")
    return out.getvalue()


def tar_samples(path: Path) -> Iterator[StoredSample]:
    """A WebDataset pack's samples: its image members (the ``.json`` ones carry the metadata)."""
    with tarfile.open(path) as tar:
        for member in tar:
            stem, _, ext = member.name.rpartition(".")
            if member.isfile() and ext in IMAGE_EXTENSIONS:
                handle = tar.extractfile(member)
                if handle is not None:
                    yield stem, ext, handle.read()


def parquet_samples(path: Path) -> Iterator[StoredSample]:
    """A Parquet pack's samples, PARQUET_READ_BATCH rows at a time (only the columns they need)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (only parquet outputs need it)

    columns = ["ImageID", "format", "image"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_READ_BATCH, columns=columns):
        yield from zip(*(batch.column(name).to_pylist() for name in columns), strict=True)


def tfrecord_samples(path: Path) -> Iterator[StoredSample]:
    """A TFRecord pack's samples, from each Example's ``image/*`` features."""
    from tfrecord import example_pb2  # noqa: PLC0415 (only tfrecord outputs need it)
    from tfrecord.reader import tfrecord_iterator  # noqa: PLC0415

    for raw in tfrecord_iterator(str(path)):
        example = example_pb2.Example()
        example.ParseFromString(raw)
        feature = example.features.feature
        yield (feature["image/source_id"].bytes_list.value[0].decode(),
               feature["image/format"].bytes_list.value[0].decode(),
               feature["image/encoded"].bytes_list.value[0])
