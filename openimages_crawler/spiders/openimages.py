"""The ``openimages`` spider: metadata rows in, image requests and results out.

Rows are streamed and turned into work lazily (the documented back-out
pattern), so memory does not grow with the row count. Each row ends as
exactly one results row across any number of runs: rows already in the
results files are skipped, rows whose outputs are complete on disk are
recorded without a download, and stored originals are re-verified (through a
``file://`` request, so the check runs in the pipeline's worker pool) before
any download is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy import signals
from scrapy.exceptions import UsageError
from scrapy.http import Request, Response
from twisted.python.failure import Failure

from ..catalogue import (
    DEFAULT_CVDF_URL,
    DEFAULT_METADATA_URL,
    DOWNLOAD_COLUMNS,
    MetadataSource,
    cvdf_url,
    sources_for,
)
from ..config import CrawlConfig
from ..failures import INVALID_ROW
from ..feeds import subset_feed_paths
from ..items import FailureRow, FetchedImage, SuccessRow, with_download
from ..ledger import ResultsLedger
from ..metadata import MetadataFetcher
from ..rows import (
    SAFE_SUBSET,
    ImageRow,
    InvalidRow,
    MetadataError,
    iter_rows,
    read_header,
    validate_row,
)
from ..selection import Selection, SelectionError, Shard, read_exclusions, read_id_list
from ..storage import file_size, nonempty

# Rows handled between two returns to the event loop while skipping done rows.
_YIELD_EVERY = 256


class OpenImagesSpider(scrapy.Spider):
    name = "openimages"

    def __init__(
        self,
        metadata: str | None = None,
        subset: str | None = None,
        limit: str | int | None = None,
        version: str | int | None = None,
        download_metadata: str | bool = True,
        ids: str | None = None,
        exclude: str | None = None,
        offset: str | int | None = None,
        shard: str | None = None,
        source: str = "original",
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if subset is not None and (not SAFE_SUBSET.fullmatch(subset) or subset in (".", "..")):
            raise UsageError(f"-a subset={subset!r} is not a plain subset name")
        try:
            self.selection = Selection(
                ids=read_id_list(Path(ids)) if ids else None,
                exclude=read_exclusions(Path(exclude)) if exclude else None,
                shard=Shard.parse(shard) if shard else None,
                offset=_parse_count("offset", offset) or 0,
                limit=_parse_count("limit", limit),
            )
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        self.download_metadata = _parse_bool("download_metadata", download_metadata)
        if source not in ("original", "cvdf"):
            raise UsageError(f"-a source={source!r} is not original or cvdf")
        self.source = source
        self.sources: list[MetadataSource] = []
        self.metadata_files: list[Path] = []
        if metadata and version:
            raise UsageError("give -a metadata=PATH or -a version=N, not both")
        if version:
            if not subset:
                raise UsageError("-a version=N needs -a subset=train|validation|test|all")
            try:
                self.sources = sources_for(_parse_version(version), subset)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            subset = None if subset == "all" else subset  # "all": rows keep their own Subset
        elif metadata:
            self.metadata_files = [Path(metadata)]
            if not self.metadata_files[0].is_file():
                raise UsageError(f"metadata file {metadata} does not exist")
            self.header = self._read_headers()
        else:
            raise UsageError(
                "give the metadata: scrapy crawl openimages -a version=N -a subset=NAME, "
                "or -a metadata=PATH"
            )
        self.subset = subset
        self.selection.subset = subset

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> OpenImagesSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        settings = crawler.settings
        spider.config = CrawlConfig.from_settings(settings)
        spider.download_300k = settings.getbool("OPENIMAGES_DOWNLOAD_300K", False)
        spider.cvdf_base = str(settings.get("OPENIMAGES_CVDF_URL") or DEFAULT_CVDF_URL)
        if urlsplit(spider.cvdf_base).scheme not in ("http", "https"):
            raise UsageError(f"OPENIMAGES_CVDF_URL must be http(s), not {spider.cvdf_base!r}")
        # Results name the URL used whenever it may not be OriginalURL.
        spider.record_download = spider.download_300k or spider.source == "cvdf"
        if spider.sources:
            spider.fetch_metadata()
        spider.load_ledger()
        return spider

    def load_ledger(self) -> None:
        """What earlier runs recorded; before the crawl, so a store that does not
        fit this metadata is a clear error (and a non-zero exit)."""
        settings = self.crawler.settings
        files = {
            "success": subset_feed_paths(settings, SuccessRow),
            "failure": subset_feed_paths(settings, FailureRow),
        }
        try:
            self.ledger = ResultsLedger.load(files, self.result_header)
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc

    @property
    def result_header(self) -> list[str]:
        """The columns of the results files (failure files add FAILURE_COLUMNS)."""
        return self.header + (list(DOWNLOAD_COLUMNS) if self.record_download else [])

    def result_fields(self, fields: dict[str, str]) -> dict[str, str]:
        """A row's fields as a result without a download."""
        return with_download(fields) if self.record_download else fields

    def download_source(self, row: ImageRow) -> tuple[str, bool]:
        """The URL to fetch and whether the metadata's size and MD5 apply to it."""
        if self.source == "cvdf":
            return cvdf_url(self.cvdf_base, row.subset, row.image_id), False
        if self.download_300k and row.thumbnail_url:
            return row.thumbnail_url, False
        return row.url, True

    def fetch_metadata(self) -> None:
        """The version's CSVs, from ``{IMAGES_STORE}/metadata/`` or downloaded there."""
        settings = self.crawler.settings
        try:
            fetcher = MetadataFetcher(
                self.config.layout.root / "metadata",
                settings.get("OPENIMAGES_METADATA_URL") or DEFAULT_METADATA_URL,
                verify=settings.getbool("OPENIMAGES_METADATA_VERIFY", True),
                keep_archives=settings.getbool("OPENIMAGES_SAVE_TARBALLS", False),
                download=self.download_metadata,
            )
            self.metadata_files = fetcher.csv_paths(self.sources)
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        self.header = self._read_headers()

    def _read_headers(self) -> list[str]:
        """The common header of the metadata files."""
        try:
            headers = [read_header(path) for path in self.metadata_files]
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        if any(header != headers[0] for header in headers):
            raise UsageError("the metadata files do not share one header")
        return headers[0]

    async def start(self) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        handled = 0
        for fields, problem in self.selected_rows():
            handled += 1
            if handled % _YIELD_EVERY == 0:
                stats.set_value("openimages/rows_read", handled)
                await asyncio.sleep(0)
            work = self.work_for(validate_row(fields, problem, self.subset))
            if work is None:
                stats.inc_value("openimages/rows_skipped")
                continue
            if isinstance(work, Request):
                while self.crawler.engine.needs_backout():
                    await self.crawler.signals.wait_for(signals.scheduler_empty)
            yield work
        stats.set_value("openimages/rows_read", handled)

    def selected_rows(self) -> Iterator[tuple[dict[str, str], str | None]]:
        """Rows of every metadata file that the selection takes."""
        return self.selection.rows(
            row for path in self.metadata_files for row in iter_rows(path, self.header)
        )

    def work_for(self, row: ImageRow | InvalidRow) -> Request | SuccessRow | FailureRow | None:
        """What a row needs: nothing, a result straight away, or a request."""
        if isinstance(row, InvalidRow):
            image_id = row.fields.get("ImageID", "")
            if image_id and (image_id in self.ledger.failed or image_id in self.ledger.succeeded):
                return None
            return FailureRow(self.result_fields(row.fields), row.subset, INVALID_ROW, row.details)
        if row.image_id in self.ledger.failed:
            return None
        recorded = row.image_id in self.ledger.succeeded
        config = self.config
        layout = config.layout
        resized_done = config.resize is None or nonempty(
            layout.resized_path(row.subset, row.image_id, config.resize.format)
        )
        done = None if recorded else SuccessRow(self.result_fields(row.fields), row.subset)
        if resized_done and not config.save_originals:  # the common rerun: one stat a row
            return done
        url, verified = self.download_source(row)
        original = layout.original_path(row.subset, row.image_id, url)
        original_there = file_size(original) == row.size if verified else nonempty(original)
        original_done = not config.save_originals or (
            original_there and (recorded or not config.check_md5_if_exists)
        )
        if resized_done and original_done:
            return done
        download = self.image_request(row, url, verified, recorded=recorded)
        if original_there:
            return self.image_request(
                row, url, verified, recorded=recorded, stored=original, fallback=download
            )
        return download

    def image_request(
        self,
        row: ImageRow,
        url: str,
        verified: bool,
        *,
        recorded: bool,
        stored: Path | None = None,
        fallback: Request | None = None,
    ) -> Request:
        """The request for a row's image: from ``url``, or from its stored copy."""
        return Request(
            stored.resolve().as_uri() if stored is not None else url,
            callback=self.parse_image,
            errback=self.image_failed,
            dont_filter=True,
            meta={
                "row": row,
                "recorded": recorded,
                "from_store": stored is not None,
                "fallback": fallback,
                "verified": verified,
                "download_url": url if self.record_download else None,
                "dont_redirect": True,
                "handle_httpstatus_all": True,
            },
        )

    def parse_image(self, response: Response) -> Iterator[FetchedImage]:
        yield self.fetched(response.meta, response=response)

    def image_failed(self, failure: Failure) -> Iterator[FetchedImage]:
        yield self.fetched(failure.request.meta, failure=failure)

    @staticmethod
    def fetched(meta: dict[str, Any], **outcome: Any) -> FetchedImage:
        return FetchedImage(
            meta["row"],
            from_store=meta["from_store"],
            recorded=meta["recorded"],
            fallback=meta["fallback"],
            verified=meta["verified"],
            download_url=meta["download_url"],
            **outcome,
        )


def _parse_version(version: str | int) -> int:
    try:
        return int(version)
    except ValueError:
        raise UsageError(f"-a version={version!r} is not a version number") from None


def _parse_bool(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise UsageError(f"-a {name}={value!r} is not true or false")


def _parse_count(name: str, value: str | int | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"-a {name}={value!r} is not a whole number") from None
    if count < 0:
        raise UsageError(f"-a {name}={value!r} must be 0 or more")
    return count
