"""Results rows: what images-success.csv and images-failure.csv hold, one per metadata row."""

from __future__ import annotations

import base64

from openimages_crawler.dataset.catalogue import DOWNLOAD_COLUMNS, FAILURE_COLUMNS, IMAGE_SIZE_COLUMNS


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


def with_recorded(fields: dict[str, str], columns: tuple[str, ...], upright: tuple[int, int] | None = None,
                  hashes: dict[str, str] | None = None) -> dict[str, str]:
    """The fields plus ``columns`` (IMAGE_SIZE_COLUMNS and the hash names a
    run records): the stored original's upright size and digests, empty where
    not known (a failure, or an image found stored without processing it)."""
    known = dict(zip(IMAGE_SIZE_COLUMNS, (str(side) for side in upright), strict=True)) if upright else {}
    return {**fields, **{column: known.get(column, (hashes or {}).get(column, "")) for column in columns}}


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
