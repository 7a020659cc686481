"""Every output format, named once with the code that writes and reads it:
the containers an output's images are stored in (``"container"`` of an
output, ``OPENIMAGES_*_CONTAINER``, ``scrapy pack --container``) and the
label formats of an export (``-a export=…``, ``scrapy export``). Whatever
checks or dispatches on a format name asks this table. No Scrapy import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

from openimages_crawler.outputs.labels import CocoWriter, LabelTarget, LabelWriter, VocWriter, YoloWriter
from openimages_crawler.outputs.packs import (
    PackWriter,
    ParquetPack,
    Sample,
    StoredSample,
    TarPack,
    TfRecordPack,
    parquet_samples,
    tar_samples,
    tfrecord_samples,
)


class UnknownFormat(ValueError):
    """A name that is not a format of the kind asked for (the known ones are in the message)."""


@dataclass(frozen=True, slots=True)
class ContainerFormat:
    """How an output's images are stored: ``files`` is one file per image in
    the store's layout (``outputs.sinks.FilesSink``)."""

    kind: ClassVar[str] = "container"  # what an unknown name is not, in its error
    name: str


@dataclass(frozen=True, slots=True)
class PackFormat(ContainerFormat):
    """A container that stores the images in packs, files of many images each (``outputs.containers``)."""

    kind: ClassVar[str] = "packed container"
    suffix: str  # a pack's, which tells a stored pack's format
    writer: Callable[[Path, Sample], PackWriter]  # opens a pack; its first sample sets a Parquet schema
    reader: Callable[[Path], Iterator[StoredSample]]


@dataclass(frozen=True, slots=True)
class LabelFormat:
    """Labels for detection trainers: a folder ``{Subset}/{name}/`` that ``outputs.export`` fills."""

    kind: ClassVar[str] = "label format"
    name: str
    writer: Callable[[LabelTarget], LabelWriter]


FILES = "files"  # the container of one file per image, in the layout
FORMATS: tuple[ContainerFormat | LabelFormat, ...] = (
    ContainerFormat(FILES),
    PackFormat("webdataset", ".tar", TarPack, tar_samples),
    PackFormat("parquet", ".parquet", ParquetPack, parquet_samples),
    PackFormat("tfrecord", ".tfrecord", TfRecordPack, tfrecord_samples),
    LabelFormat("coco", CocoWriter),
    LabelFormat("yolo", YoloWriter),
    LabelFormat("voc", VocWriter),
)
PACK_FORMATS = tuple(one for one in FORMATS if isinstance(one, PackFormat))
CONTAINERS = tuple(one.name for one in FORMATS if isinstance(one, ContainerFormat))
PACKED_CONTAINERS = tuple(one.name for one in PACK_FORMATS)
LABEL_FORMATS = tuple(one.name for one in FORMATS if isinstance(one, LabelFormat))

_Format = TypeVar("_Format", ContainerFormat, PackFormat, LabelFormat)


def _lookup(kind: type[_Format], name: str) -> _Format:
    found = next((one for one in FORMATS if one.name == name), None)
    if not isinstance(found, kind):
        known = ", ".join(one.name for one in FORMATS if isinstance(one, kind))
        raise UnknownFormat(f"{name!r} is not a {kind.kind}: give {known}")
    return found


def container(name: str) -> ContainerFormat:
    return _lookup(ContainerFormat, name)


def pack_format(name: str) -> PackFormat:
    """A container that writes packs (not ``files``)."""
    return _lookup(PackFormat, name)


def pack_format_of(pack: str) -> PackFormat:
    """The format of a stored pack, by its file name's suffix."""
    suffix = Path(pack).suffix
    found = next((one for one in PACK_FORMATS if one.suffix == suffix), None)
    if found is None:
        known = ", ".join(one.suffix for one in PACK_FORMATS)
        raise UnknownFormat(f"{pack!r} is not a pack of a known format: its suffix is not {known}")
    return found


def labels(name: str) -> LabelFormat:
    return _lookup(LabelFormat, name)
