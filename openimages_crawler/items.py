"""What flows from the spider through the pipeline to the results feeds."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from scrapy.http import Request, Response
from twisted.python.failure import Failure

from .catalogue import DOWNLOAD_COLUMNS, FAILURE_COLUMNS
from .rows import ImageRow


class ResultRow(dict[str, str]):
    """One results-CSV row (the input's columns, in order) and its subset folder.

    A dict so that the feed exporter writes exactly the input's columns; the
    folder rides along as an attribute, outside the exported fields.
    """

    __slots__ = ("subset",)

    def __init__(self, fields: dict[str, str], subset: str) -> None:
        super().__init__(fields)
        self.subset = subset


def with_download(
    fields: dict[str, str], url: str = "", size: int | None = None, md5: bytes | None = None
) -> dict[str, str]:
    """The input's fields plus DOWNLOAD_COLUMNS (empty where not known)."""
    values = (url, "" if size is None else str(size), base64.b64encode(md5).decode() if md5 else "")
    return {**fields, **dict(zip(DOWNLOAD_COLUMNS, values, strict=True))}


class SuccessRow(ResultRow):
    """A row whose outputs are stored and verified: goes to images-success.csv."""


class FailureRow(ResultRow):
    """A row that failed: goes to images-failure.csv with reason and details."""

    def __init__(self, fields: dict[str, str], subset: str, reason: str, details: str) -> None:
        super().__init__(fields, subset)
        self[FAILURE_COLUMNS[0]] = reason
        self[FAILURE_COLUMNS[1]] = details

    @property
    def reason(self) -> str:
        return self[FAILURE_COLUMNS[0]]


@dataclass(slots=True)
class FetchedImage:
    """A download's outcome on its way to the pipeline (never exported).

    ``missing`` lists the resized outputs not on disk when the row was read
    (the spider looked; the pipeline does not look again). ``verified`` is False for bytes that are not the original (300K
    thumbnails, CVDF copies): only the decode check applies to them.

    ``from_store`` marks bytes read back from a stored original; ``fallback``
    is the request to make if those bytes turn out bad. ``recorded`` marks a
    row already in the results, being repaired, so it is not recorded twice.
    """

    row: ImageRow
    response: Response | None = None
    failure: Failure | None = None
    from_store: bool = False
    recorded: bool = False
    fallback: Request | None = None
    verified: bool = True  # the metadata's size and MD5 apply to these bytes
    download_url: str | None = None  # set when the results record the URL used
    missing: tuple[Path, ...] = ()  # resized outputs still to write (found by the spider)


@dataclass(slots=True)
class Unrecorded:
    """A row that ends this run without a result line (interrupted, repaired,
    or retried from the network); no feed accepts it."""

    image_id: str
    why: str
