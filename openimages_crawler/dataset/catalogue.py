"""Everything the crawler knows about Open Images versions and file formats, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# images.csv of V1 (2016_08 v5) to V3 (2017_11).
IMAGES_CSV_COLUMNS: Final = (
    "ImageID",
    "Subset",
    "OriginalURL",
    "OriginalLandingURL",
    "License",
    "AuthorProfileURL",
    "Author",
    "Title",
    "OriginalSize",
    "OriginalMD5",
    "Thumbnail300KURL",
)

# V4+ image-info files (2018_04 *-with-rotation.csv): the same plus Rotation.
IMAGE_INFO_COLUMNS: Final = (*IMAGES_CSV_COLUMNS, "Rotation")

# Columns the crawler cannot work without; the others are carried through.
REQUIRED_COLUMNS: Final = ("ImageID", "OriginalURL", "OriginalSize", "OriginalMD5")

# Columns the failure results add after the input's own.
FAILURE_COLUMNS: Final = ("FailureReason", "FailureDetails")

# Columns the results add when images may come from elsewhere than OriginalURL
# (300K thumbnails, the CVDF mirror): the URL used and the bytes actually stored.
DOWNLOAD_COLUMNS: Final = ("DownloadURL", "DownloadSize", "DownloadMD5")

# The CVDF mirror of the boxable subset: rescaled copies, no OriginalSize/MD5.
DEFAULT_CVDF_URL: Final = "https://open-images-dataset.s3.amazonaws.com"


# Columns every results file adds after the input's (and DOWNLOAD_COLUMNS): the stored
# original's pixel size once upright, then one column per OPENIMAGES_HASHES name (the hex
# digest of the original's bytes, named as hashlib names it: sha256).
IMAGE_SIZE_COLUMNS: Final = ("OriginalWidth", "OriginalHeight")


def cvdf_url(base: str, split: str, image_id: str) -> str:
    return f"{base.rstrip('/')}/{split}/{image_id}.jpg"


# Subset folder used for rows that carry no Subset and no -a subset was given.
UNKNOWN_SUBSET: Final = "unknown"


# --- Versions: where each split's image metadata lives -------------------------
# Paths are relative to OPENIMAGES_METADATA_URL (the official bucket by default).
# Sizes and MD5s (hex) are the published ones, where there are any.

DEFAULT_METADATA_URL: Final = "https://storage.googleapis.com/openimages/"


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """A file on the metadata server, with its published size and MD5 if known."""

    path: str  # relative to the metadata URL, and where it is cached
    size: int | None = None
    md5: str | None = None
    url: str | None = None  # relative to the metadata URL, when not ``path`` (a bucket beside it)

    @property
    def url_path(self) -> str:
        return self.url or self.path


@dataclass(frozen=True, slots=True)
class MetadataSource:
    """Where one split's image metadata comes from: a file, or a member of an archive."""

    file: RemoteFile  # the catalogue file (an archive, or the CSV itself) this source is read from
    member: str | None = None  # path inside the .tar.gz, also the local path

    @property
    def local_path(self) -> str:
        """Where the CSV lives under ``{IMAGES_STORE}/metadata/``."""
        return self.member or self.file.path


# One split's files of one kind of annotation: usually one, the train narratives ten.
Parts = tuple[MetadataSource, ...]


@dataclass(frozen=True, slots=True)
class Annotations:
    """Where a version's class names and per-split annotations live.

    ``files`` maps a kind of ``ANNOTATION_KINDS`` to its files per split: a
    split missing has no such annotations in that version. ``mask_archives``
    holds the instance masks' zips per split and first hex digit of the
    ImageID; ``extras`` the files that explain a kind (its classes,
    attributes or triplets), copied beside its annotations.
    """

    class_names: MetadataSource
    files: dict[str, dict[str, Parts]]
    mask_archives: dict[str, dict[str, RemoteFile]] = field(default_factory=dict)
    extras: dict[str, tuple[MetadataSource, ...]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> dict[str, Parts]:
        return self.files.get(kind, {})


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    sources: dict[str, MetadataSource]  # split (or "all") -> source
    annotations: Annotations
    # Smaller image metadata holding every image that has boxes, where the
    # split's full file is much bigger (V4+ train: 0.64 GB instead of 3.35 GB).
    boxable_sources: dict[str, MetadataSource] = field(default_factory=dict)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self.sources if name != "all")


def _members(remote: RemoteFile, folder: str, name: str, splits: tuple[str, ...]) -> dict[str, MetadataSource]:
    """One archive holding ``{folder}/{split}/{name}`` per split."""
    return {split: MetadataSource(remote, f"{folder}/{split}/{name}") for split in splits}


def _files(pattern: str, splits: tuple[str, ...]) -> dict[str, MetadataSource]:
    """One plain file per split, ``pattern`` formatted with ``split`` (and
    ``short``, V7's ``val`` for validation)."""
    return {split: MetadataSource(RemoteFile(pattern.format(split=split, short=_SHORT.get(split, split))))
            for split in splits}


def _one_each(files: dict[str, MetadataSource]) -> dict[str, Parts]:
    return {split: (source,) for split, source in files.items()}


_IMAGE_INFO_2018 = {
    "train": MetadataSource(RemoteFile("2018_04/image_ids_and_rotation.csv")),
    "validation": MetadataSource(
        RemoteFile(
            "2018_04/validation/validation-images-with-rotation.csv",
            15245485,
            "643a54e43b0bab8acce8817b4a569780",
        )
    ),
    "test": MetadataSource(
        RemoteFile(
            "2018_04/test/test-images-with-rotation.csv",
            45227339,
            "d832feb775b3cb78077bf8ae350adce5",
        )
    ),
    # every split in one file (filtered by its Subset column)
    "all": MetadataSource(RemoteFile("2018_04/image_ids_and_rotation.csv")),
}
_BOXABLE_2018 = {
    "train": MetadataSource(
        RemoteFile(
            "2018_04/train/train-images-boxable-with-rotation.csv",
            638407721,
            "a4ac0bcedb5c2df4d1b1230dc6b41b8f",
        )
    ),
}

_SPLITS = ("train", "validation", "test")
_SHORT = {"validation": "val"}  # V7's file names say val


def _tarball_version(
    number: int,
    folder: str,
    images: RemoteFile,
    boxes: RemoteFile,
    labels: RemoteFile,
    classes: RemoteFile,
) -> Version:
    """V2 and V3: one archive each for images, boxes, human labels, classes."""
    return Version(
        number,
        _members(images, folder, "images.csv", _SPLITS),
        Annotations(
            MetadataSource(classes, f"{folder}/class-descriptions.csv"),
            {"boxes": _one_each(_members(boxes, folder, "annotations-human-bbox.csv", _SPLITS)),
             "labels": _one_each(_members(labels, folder, "annotations-human.csv", _SPLITS))},
        ),
    )


# V5+ validation and test boxes and labels (V6 and V7 reuse them).
_V5_BOXES = _files("v5/{split}-annotations-bbox.csv", ("validation", "test"))
_V5_LABELS = _files("v5/{split}-annotations-human-imagelabels.csv", _SPLITS)
_V6_BOXES = {"train": MetadataSource(RemoteFile("v6/oidv6-train-annotations-bbox.csv")), **_V5_BOXES}

# V5's instance masks (V6 and V7 reuse them): the rows, and the PNGs in 16
# zips per split by the ImageID's first hex digit.
_MASKS = _one_each(_files("v5/{split}-annotations-object-segmentation.csv", _SPLITS))
_MASK_ARCHIVES = {split: {digit: RemoteFile(f"v5/{split}-masks/{split}-masks-{digit}.zip") for digit in "0123456789abcdef"}
                  for split in _SPLITS}
_MASK_EXTRAS = (MetadataSource(RemoteFile("v5/classes-segmentation.txt")),)

# The boxable classes beside the boxes of V4-V7 (``scrapy export yolo --class-order
# ultralytics`` numbers classes by them): V5's file for all four, the one FiftyOne
# reads for V6 and V7 and Ultralytics' open-images-v7.yaml was sorted from. V4's own
# (2018_04) has the same 601 label ids under older names ("Organ", "Asparagus", ...)
# that sort elsewhere.
BOXABLE_CLASSES_FILE: Final = "class-descriptions-boxable.csv"  # LabelName,DisplayName; no header
_BOX_EXTRAS = (MetadataSource(RemoteFile(f"v5/{BOXABLE_CLASSES_FILE}")),)

# V6's visual relationships (V7 reuses them), with the attribute names
# (LabelName2 may be an attribute) and the relationship triplets.
_RELATIONSHIPS = _one_each(_files("v6/oidv6-{split}-annotations-vrd.csv", _SPLITS))
ATTRIBUTE_NAMES_FILE: Final = "oidv6-attributes-description.csv"  # the attributes' display names
_RELATIONSHIP_EXTRAS = (MetadataSource(RemoteFile(f"v6/{ATTRIBUTE_NAMES_FILE}")),
                        MetadataSource(RemoteFile("v6/oidv6-relationship-triplets.csv")))


def _narrative(name: str) -> MetadataSource:
    """Localized narratives live in a bucket of their own beside ``openimages/``."""
    return MetadataSource(RemoteFile(f"localized-narratives/{name}", url=f"../localized-narratives/annotations/{name}"))


# Localized narratives of Open Images (V6 and V7): train in ten parts.
_NARRATIVES = {
    "train": tuple(_narrative(f"open_images_train_v6_localized_narratives-{part:05d}-of-00010.jsonl")
                   for part in range(10)),
    "validation": (_narrative("open_images_validation_localized_narratives.jsonl"),),
    "test": (_narrative("open_images_test_localized_narratives.jsonl"),),
}

VERSIONS: Final[dict[int, Version]] = {
    1: Version(
        1,
        _members(
            RemoteFile("2016_08/images_2016_08_v5.tar.gz", 1038144161, "0e47566d03759f0b69cf4a3fba29592c"),
            "images_2016_08",
            "images.csv",
            ("train", "validation"),
        ),
        Annotations(
            # V1 labels use the same MIDs; its names list (dict.csv) is not in the
            # bucket, so V1 takes the names of V3's classes archive.
            MetadataSource(
                RemoteFile("2017_11/classes_2017_11.tar.gz", 303055, "3937f6dddf777ca912c816d5f6ffe06f"),
                "2017_11/class-descriptions.csv",
            ),
            # V1 has no boxes, and human labels for validation only
            {"labels": _one_each(_members(
                RemoteFile("2016_08/human_ann_2016_08_v3.tar.gz", 9718729, "ac549b4cc3179309a7b41b81e96c07dc"),
                "human_ann_2016_08",
                "labels.csv",
                ("validation",),
            ))},
        ),
    ),
    2: _tarball_version(
        2,
        "2017_07",
        RemoteFile("2017_07/images_2017_07.tar.gz", 1038132176, "9c7d7d1b9c19f72c77ac0fa8e2695e00"),
        RemoteFile("2017_07/annotations_human_bbox_2017_07.tar.gz", 38732419, "3c57bff20c56e50025e16562c4c0d709"),
        RemoteFile("2017_07/annotations_human_2017_07.tar.gz", 69263638, "27610fb9d349b728448507beec244e9f"),
        RemoteFile("2017_07/classes_2017_07.tar.gz", 300021, "a51205f02faf3867ae2d3e8dc968fd6d"),
    ),
    3: _tarball_version(
        3,
        "2017_11",
        RemoteFile("2017_11/images_2017_11.tar.gz", 1038133015, "d840296342470becab9db7228bda86cc"),
        RemoteFile("2017_11/annotations_human_bbox_2017_11.tar.gz", 102011131, "427faa2f208ab358bed6a7f380a99493"),
        RemoteFile("2017_11/annotations_human_2017_11.tar.gz", 144102834, "cdcbb5e9aba900530c85cb370564f599"),
        RemoteFile("2017_11/classes_2017_11.tar.gz", 303055, "3937f6dddf777ca912c816d5f6ffe06f"),
    ),
    # V5-V7 reuse the 2018_04 image information; they differ in annotations.
    4: Version(
        4,
        _IMAGE_INFO_2018,
        boxable_sources=_BOXABLE_2018,
        annotations=Annotations(
            MetadataSource(RemoteFile("2018_04/class-descriptions.csv")),
            {"boxes": _one_each(_files("2018_04/{split}/{split}-annotations-bbox.csv", _SPLITS)),
             "labels": _one_each(_files("2018_04/{split}/{split}-annotations-human-imagelabels.csv", _SPLITS))},
            extras={"boxes": _BOX_EXTRAS},
        ),
    ),
    5: Version(
        5,
        _IMAGE_INFO_2018,
        boxable_sources=_BOXABLE_2018,
        annotations=Annotations(
            MetadataSource(RemoteFile("v5/class-descriptions.csv")),
            {"boxes": _one_each({"train": MetadataSource(RemoteFile("2018_04/train/train-annotations-bbox.csv")),
                                 **_V5_BOXES}),
             "labels": _one_each(_V5_LABELS),
             "masks": _MASKS},
            _MASK_ARCHIVES,
            {"boxes": _BOX_EXTRAS, "masks": _MASK_EXTRAS},
        ),
    ),
    6: Version(
        6,
        _IMAGE_INFO_2018,
        boxable_sources=_BOXABLE_2018,
        annotations=Annotations(
            MetadataSource(RemoteFile("v6/oidv6-class-descriptions.csv")),
            {"boxes": _one_each(_V6_BOXES),
             "labels": _one_each({"train": MetadataSource(RemoteFile("v6/oidv6-train-annotations-human-imagelabels.csv")),
                                  **{split: _V5_LABELS[split] for split in ("validation", "test")}}),
             "masks": _MASKS,
             "relationships": _RELATIONSHIPS,
             "narratives": _NARRATIVES},
            _MASK_ARCHIVES,
            {"boxes": _BOX_EXTRAS, "masks": _MASK_EXTRAS, "relationships": _RELATIONSHIP_EXTRAS},
        ),
    ),
    7: Version(
        7,
        _IMAGE_INFO_2018,
        boxable_sources=_BOXABLE_2018,
        annotations=Annotations(
            MetadataSource(RemoteFile("v7/oidv7-class-descriptions.csv")),  # has a header row
            {"boxes": _one_each(_V6_BOXES),
             "labels": _one_each(_files("v7/oidv7-{short}-annotations-human-imagelabels.csv", _SPLITS)),
             "masks": _MASKS,
             "relationships": _RELATIONSHIPS,
             "narratives": _NARRATIVES,
             "points": _one_each(_files("v7/oidv7-{short}-annotations-point-labels.csv", _SPLITS))},
            _MASK_ARCHIVES,
            {"boxes": _BOX_EXTRAS, "masks": _MASK_EXTRAS, "relationships": _RELATIONSHIP_EXTRAS},
        ),
    ),
}


def version_of(number: int) -> Version:
    if number not in VERSIONS:
        raise ValueError(f"version {number} is not one of {', '.join(map(str, VERSIONS))}")
    return VERSIONS[number]


def splits_for(version: int, subset: str) -> tuple[str, ...]:
    """The splits ``subset`` (a split or ``all``) of ``version`` covers."""
    known = version_of(version)
    if subset == "all":
        return known.splits
    if subset in known.splits:
        return (subset,)
    raise ValueError(
        f"version {version} has no subset {subset!r}; it has {', '.join(known.splits)} and all"
    )


def sources_for(version: int, subset: str, *, boxed_only: bool = False) -> list[MetadataSource]:
    """The metadata sources of ``subset`` (a split or ``all``) of ``version``;
    with ``boxed_only`` (the crawl wants only images with boxes) the smaller
    boxable files where there are any."""
    splits = splits_for(version, subset)
    known = VERSIONS[version]
    if boxed_only and any(split in known.boxable_sources for split in splits):
        return [known.boxable_sources.get(split) or known.sources[split] for split in splits]
    if subset in known.sources:  # a split, or one file holding every split
        return [known.sources[subset]]
    return [known.sources[split] for split in splits]


# --- Annotations written next to the results of a selection ----------------------


@dataclass(frozen=True, slots=True)
class AnnotationKind:
    """One kind of annotation (``-a annotations=``): how its files name the
    image and the classes, and the file of ``{IMAGES_STORE}/{Subset}/`` that
    receives the selected images' rows (official columns, as they are)."""

    name: str
    file: str
    id_column: str
    label_columns: tuple[str, ...] = ()  # a row carries these classes; () for none (narratives)
    present: tuple[str, str] | None = None  # (column, value) for a row that says the class is there
    json_lines: bool = False  # one JSON object per line, no header


ANNOTATION_KINDS: Final = {kind.name: kind for kind in (
    AnnotationKind("boxes", "annotations-bbox.csv", "ImageID", ("LabelName",)),
    # human-verified image labels: Confidence 0 says verified absent
    AnnotationKind("labels", "annotations-labels.csv", "ImageID", ("LabelName",), ("Confidence", "1")),
    AnnotationKind("masks", "annotations-masks.csv", "ImageID", ("LabelName",)),
    # V7 point labels: ImageId, and EstimatedYesNo says whether the class is at the point
    AnnotationKind("points", "annotations-points.csv", "ImageId", ("Label",), ("EstimatedYesNo", "yes")),
    # a relationship carries both its classes (LabelName2 may be an attribute)
    AnnotationKind("relationships", "annotations-relationships.csv", "ImageID", ("LabelName1", "LabelName2")),
    AnnotationKind("narratives", "narratives.jsonl", "image_id", json_lines=True),
)}
# -a annotations=true: what it has always meant.
DEFAULT_KINDS: Final = ("boxes", "labels")
# The version's class descriptions, copied beside a store's annotation files.
CLASS_NAMES_FILE: Final = "class-descriptions.csv"
# MaskPath in the mask rows: {ImageID}_{LabelName without "/"}_{BoxID}.png
MASK_COLUMN: Final = "MaskPath"

# Columns every kind of annotation file with classes has (ImageID, LabelName; V7 points excepted).
ANNOTATION_ID_COLUMN: Final = "ImageID"
ANNOTATION_LABEL_COLUMN: Final = "LabelName"
