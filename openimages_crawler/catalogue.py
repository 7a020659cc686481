"""Everything the crawler knows about Open Images versions and file formats, in one place."""

from __future__ import annotations

from dataclasses import dataclass
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

    path: str
    size: int | None = None
    md5: str | None = None


@dataclass(frozen=True, slots=True)
class MetadataSource:
    """Where one split's image metadata comes from: a file, or a member of an archive."""

    remote: RemoteFile
    member: str | None = None  # path inside the .tar.gz, also the local path

    @property
    def local_path(self) -> str:
        """Where the CSV lives under ``{IMAGES_STORE}/metadata/``."""
        return self.member or self.remote.path


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    sources: dict[str, MetadataSource]  # split (or "all") -> source

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(name for name in self.sources if name != "all")


def _tarball_version(number: int, remote: RemoteFile, folder: str, splits: tuple[str, ...]) -> Version:
    return Version(
        number, {split: MetadataSource(remote, f"{folder}/{split}/images.csv") for split in splits}
    )


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

VERSIONS: Final[dict[int, Version]] = {
    1: _tarball_version(
        1,
        RemoteFile("2016_08/images_2016_08_v5.tar.gz", 1038144161, "0e47566d03759f0b69cf4a3fba29592c"),
        "images_2016_08",
        ("train", "validation"),
    ),
    2: _tarball_version(
        2,
        RemoteFile("2017_07/images_2017_07.tar.gz", 1038132176, "9c7d7d1b9c19f72c77ac0fa8e2695e00"),
        "2017_07",
        ("train", "validation", "test"),
    ),
    3: _tarball_version(
        3,
        RemoteFile("2017_11/images_2017_11.tar.gz", 1038133015, "d840296342470becab9db7228bda86cc"),
        "2017_11",
        ("train", "validation", "test"),
    ),
    # V5-V7 reuse the 2018_04 image information (new annotations only).
    **{number: Version(number, _IMAGE_INFO_2018) for number in (4, 5, 6, 7)},
}


def sources_for(version: int, subset: str) -> list[MetadataSource]:
    """The metadata sources of ``subset`` (a split or ``all``) of ``version``."""
    if version not in VERSIONS:
        raise ValueError(f"version {version} is not one of {', '.join(map(str, VERSIONS))}")
    known = VERSIONS[version]
    if subset in known.sources:
        return [known.sources[subset]]
    if subset == "all":
        return [known.sources[split] for split in known.splits]
    raise ValueError(
        f"version {version} has no subset {subset!r}; it has {', '.join(known.splits)} and all"
    )
