"""Everything the crawler knows about Open Images file formats, in one place."""

from __future__ import annotations

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

# Subset folder used for rows that carry no Subset and no -a subset was given.
UNKNOWN_SUBSET: Final = "unknown"
