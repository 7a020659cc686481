"""FailureReason codes: the contract of images-failure.csv. No Scrapy import:
the imaging and dataset stages name their failures with these."""

from __future__ import annotations

from typing import Final

INVALID_ROW: Final = "invalid_row"
UNAVAILABLE: Final = "unavailable"
HTTP_ERROR: Final = "http_error"
TIMEOUT: Final = "timeout"
CONNECTION: Final = "connection"
SIZE_MISMATCH: Final = "size_mismatch"
MD5_MISMATCH: Final = "md5_mismatch"
NOT_IMAGE: Final = "not_image"
CORRUPT: Final = "corrupt"
TOO_LARGE: Final = "too_large"
IO_ERROR: Final = "io_error"
BLOCKED_HOST: Final = "blocked_host"
# Not errors: the image was fine, and the crawl chose to leave it out.
OPTED_OUT: Final = "opted_out"  # its X-Robots-Tag says no (OPENIMAGES_DISALLOWED_DIRECTIVES): final
FILTERED: Final = "filtered"  # outside OPENIMAGES_MIN_IMAGE_SIDE, _MAX_IMAGE_AREA or _MAX_ASPECT_RATIO

FAILURE_REASONS: Final = (
    INVALID_ROW,
    UNAVAILABLE,
    HTTP_ERROR,
    TIMEOUT,
    CONNECTION,
    SIZE_MISMATCH,
    MD5_MISMATCH,
    NOT_IMAGE,
    CORRUPT,
    TOO_LARGE,
    IO_ERROR,
    BLOCKED_HOST,
    OPTED_OUT,
    FILTERED,
)
# The reasons the report and the summary count apart from the errors ("left out").
POLICY_REASONS: Final = (OPTED_OUT, FILTERED)

# Stats key prefix of the failure counts: openimages/failure/{FailureReason}.
FAILURE_STAT_PREFIX: Final = "openimages/failure/"
