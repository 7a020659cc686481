"""Which URL a row's image is fetched from, and whether the metadata's size
and MD5 describe those bytes."""

from __future__ import annotations

from dataclasses import dataclass

from openimages_crawler.dataset.catalogue import cvdf_url
from openimages_crawler.dataset.rows import ImageRow

SOURCES = ("original", "cvdf")  # -a source=


@dataclass(frozen=True, slots=True)
class ImageSource:
    """``original`` (OriginalURL, or Thumbnail300KURL with ``thumbnails_300k``)
    or ``cvdf`` (the CVDF mirror's rescaled copies under ``cvdf_base``)."""

    kind: str = "original"
    cvdf_base: str = ""
    thumbnails_300k: bool = False

    @property
    def records_download(self) -> bool:
        """Whether the results name the URL used and the bytes stored: whenever
        they may not be OriginalURL's."""
        return self.thumbnails_300k or self.kind == "cvdf"

    def url_for(self, row: ImageRow) -> tuple[str, bool]:
        """The URL to fetch and whether the metadata's size and MD5 apply to it."""
        if self.kind == "cvdf":
            return cvdf_url(self.cvdf_base, row.subset, row.image_id), False
        if self.thumbnails_300k and row.thumbnail_url:
            return row.thumbnail_url, False
        return row.url, True
