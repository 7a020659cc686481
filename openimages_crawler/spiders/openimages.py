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
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy import signals
from scrapy.exceptions import UsageError
from scrapy.http import Request, Response
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import threads
from twisted.python.failure import Failure

from ..annotations import (
    ClassFilter,
    ClassNames,
    CopyStopped,
    header_only,
    merge_selected_rows,
    parse_class_list,
)
from ..catalogue import (
    ANNOTATION_FILES,
    DEFAULT_CVDF_URL,
    DEFAULT_METADATA_URL,
    DOWNLOAD_COLUMNS,
    MetadataSource,
    cvdf_url,
    sources_for,
    splits_for,
    version_of,
)
from ..config import CrawlConfig
from ..failures import INVALID_ROW
from ..feeds import subset_feed_paths
from ..items import FailureRow, FetchedImage, SuccessRow, with_download
from ..ledger import IdSet, ResultsLedger
from ..metadata import MetadataFetcher
from ..rows import (
    SAFE_SUBSET,
    ImageRow,
    InvalidRow,
    MetadataError,
    count_lines,
    iter_rows,
    read_header,
    validate_row,
)
from ..selection import (
    IdList,
    MetadataRecord,
    Selection,
    SelectionError,
    Shard,
    read_exclusions,
    read_id_list,
)
from ..storage import atomic_text_file, file_size, nonempty

logger = logging.getLogger(__name__)

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
        classes: str | None = None,
        match: str | None = None,
        labels: str | None = None,
        all_labels: str | bool | None = None,
        annotations: str | bool | None = None,
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
            self.classes = parse_class_list(classes) if classes is not None else []
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        given = [f"-a {name}" for name, value in
                 (("match", match), ("labels", labels), ("all_labels", all_labels)) if value is not None]
        if given and not self.classes:
            raise UsageError(f"{', '.join(given)} only apply with -a classes")
        if match not in (None, "any", "all"):
            raise UsageError(f"-a match={match!r} is not any or all")
        if labels not in (None, "boxes", "verified"):
            raise UsageError(f"-a labels={labels!r} is not boxes or verified")
        self.match_all = match == "all"
        self.label_kind = "labels" if labels == "verified" else "boxes"  # catalogue kinds
        self.all_labels = _parse_bool("all_labels", all_labels) if all_labels is not None else False
        # Annotations are written by default when classes select the images (an
        # id list or a shard would otherwise fetch gigabytes nobody asked for).
        self.write_annotations = (
            bool(self.classes) if annotations is None else _parse_bool("annotations", annotations)
        )
        self.download_metadata = _parse_bool("download_metadata", download_metadata)
        if source not in ("original", "cvdf"):
            raise UsageError(f"-a source={source!r} is not original or cvdf")
        self.source = source
        self.sources: list[MetadataSource] = []
        self.metadata_files: list[Path] = []
        self.version: int | None = None
        self.splits: tuple[str, ...] = ()
        if metadata and version:
            raise UsageError("give -a metadata=PATH or -a version=N, not both")
        if self.classes and not version:
            raise UsageError("-a classes needs -a version=N (the catalogue knows its annotations)")
        if annotations is not None and self.write_annotations and not version:
            raise UsageError("-a annotations=true needs -a version=N (the catalogue knows its annotations)")
        if not version:
            self.write_annotations = False  # -a metadata=PATH: no catalogue, no annotations
        if version:
            if not subset:
                raise UsageError("-a version=N needs -a subset=train|validation|test|all")
            try:
                self.version = _parse_version(version)
                self.splits = splits_for(self.version, subset)
                # Images with boxes of a class, and the CVDF mirror's images, are all
                # in the (smaller) boxable files.
                boxed_only = (bool(self.classes) and self.label_kind == "boxes") or source == "cvdf"
                self.sources = sources_for(self.version, subset, boxed_only=boxed_only)
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
        self.class_filter: ClassFilter | None = None
        self.annotation_files: dict[tuple[str, str], Path] = {}  # (kind, split) -> CSV
        self.annotated: dict[str, set[str]] = {}  # split -> selected ImageIDs
        self.file_subsets: list[str] = [""]  # per metadata file: its split, if it has one
        self.stopping = threading.Event()  # set at close: an annotation copy gives up
        self.rows_total: int | None = None  # rows the crawl will handle, estimated (progress)

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> OpenImagesSpider:
        started = time.perf_counter()
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.arguments = dict(kwargs)  # the -a arguments, for the report
        settings = crawler.settings
        spider.config = CrawlConfig.from_settings(settings)
        spider.download_300k = settings.getbool("OPENIMAGES_DOWNLOAD_300K", False)
        spider.cvdf_base = str(settings.get("OPENIMAGES_CVDF_URL") or DEFAULT_CVDF_URL)
        if urlsplit(spider.cvdf_base).scheme not in ("http", "https"):
            raise UsageError(f"OPENIMAGES_CVDF_URL must be http(s), not {spider.cvdf_base!r}")
        # Results name the URL used whenever it may not be OriginalURL.
        spider.record_download = spider.download_300k or spider.source == "cvdf"
        if spider.classes:  # first: an unknown class name must stop before big downloads
            spider.resolve_classes()
        if spider.sources:
            spider.fetch_metadata()
        if spider.classes or spider.write_annotations:
            spider.fetch_annotations()
        spider.load_ledger()
        spider.prepare_seconds = time.perf_counter() - started  # metadata and selection work
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

    def metadata_paths(self, sources: list[MetadataSource]) -> list[Path]:
        """Local CSVs of ``sources``, from ``{IMAGES_STORE}/metadata/`` or downloaded there."""
        settings = self.crawler.settings
        try:
            fetcher = MetadataFetcher(
                self.config.layout.root / "metadata",
                settings.get("OPENIMAGES_METADATA_URL") or DEFAULT_METADATA_URL,
                verify=settings.getbool("OPENIMAGES_METADATA_VERIFY", True),
                keep_archives=settings.getbool("OPENIMAGES_SAVE_TARBALLS", False),
                download=self.download_metadata,
            )
            return fetcher.csv_paths(sources)
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc

    def fetch_metadata(self) -> None:
        """The version's image CSVs."""
        self.metadata_files = self.metadata_paths(self.sources)
        # One file per split: rows without a Subset belong to their file's split.
        one_each = len(self.sources) == len(self.splits)
        self.file_subsets = list(self.splits) if one_each else [""] * len(self.sources)
        self.header = self._read_headers()

    def resolve_classes(self) -> None:
        """``-a classes`` as label ids, from the version's class descriptions."""
        assert self.version is not None
        annotations = version_of(self.version).annotations
        for split in self.splits:
            if split not in annotations.of_kind(self.label_kind):
                other = "labels" if self.label_kind == "boxes" else "boxes"
                hint = "another subset"
                if split in annotations.of_kind(other):
                    hint = f"-a labels={_LABELS_ARGUMENT[other]} or {hint}"
                raise UsageError(
                    f"version {self.version} has no {_KIND_NAMES[self.label_kind]} for {split}: try {hint}"
                )
        (path,) = self.metadata_paths([annotations.class_names])
        try:
            resolved = ClassNames.load(path).resolve(self.classes)
        except (MetadataError, SelectionError) as exc:
            raise UsageError(str(exc)) from None
        for name, mids in resolved.items():
            logger.info("Class %r is %s", name, ", ".join(sorted(mids)))
        self.class_filter = ClassFilter(
            resolved, match_all=self.match_all, confirmed_only=self.label_kind == "labels"
        )

    def fetch_annotations(self) -> None:
        """The annotation files the class selection and the annotation output need,
        then the images carrying the classes, split by split."""
        assert self.version is not None
        annotations = version_of(self.version).annotations
        kinds = [self.label_kind] if self.class_filter else []
        if self.write_annotations:
            kinds = list(ANNOTATION_FILES)
        wanted = {
            (kind, split): annotations.of_kind(kind)[split]
            for kind in kinds
            for split in self.splits
            if split in annotations.of_kind(kind)
        }
        self.annotation_files = dict(zip(wanted, self.metadata_paths(list(wanted.values())), strict=True))
        if self.class_filter is None:
            return
        by_split = {}
        for split in self.splits:
            path = self.annotation_files[(self.label_kind, split)]
            logger.info("Finding the images of %s in %s", ", ".join(self.classes), path)
            try:
                by_split[split] = IdSet(self.class_filter.images(path))
            except (MetadataError, OSError) as exc:
                raise UsageError(f"cannot read {path}: {exc}") from exc
            level = logging.INFO if by_split[split] else logging.WARNING
            logger.log(level, "%d %s images carry %s %s", len(by_split[split]), split,
                       "all of" if self.match_all else "any of", ", ".join(self.classes))
        self.selection.classes = IdList(by_split=by_split)

    def _read_headers(self) -> list[str]:
        """The common header of the metadata files."""
        try:
            headers = [read_header(path) for path in self.metadata_files]
        except MetadataError as exc:
            raise UsageError(str(exc)) from exc
        if any(header != headers[0] for header in headers):
            raise UsageError("the metadata files do not share one header")
        return headers[0]

    def count_rows(self) -> None:
        """``rows_total`` for the progress display: the selection's estimate
        over the metadata's line count (a few seconds for GBs, in a thread)."""
        try:
            rows = sum(count_lines(path) for path in self.metadata_files)
        except Exception as exc:  # noqa: BLE001 - a broken .gz, say: progress goes without a total
            logger.debug("Cannot count the metadata rows: %s", exc)
            return
        self.rows_total = self.selection.estimate(rows)

    async def start(self) -> AsyncIterator[Any]:
        stats = self.crawler.stats
        stats.set_value("openimages/time/prepare_s", round(self.prepare_seconds, 2))
        threading.Thread(target=self.count_rows, name="openimages-count-rows", daemon=True).start()
        handled = 0
        for fields, problem, file_subset in self.selected_rows():
            subset = self.subset or file_subset
            handled += 1
            if handled % _YIELD_EVERY == 0:
                stats.set_value("openimages/rows_read", handled)
                await asyncio.sleep(0)
            if self.write_annotations:
                split = fields.get("Subset") or subset
                self.annotated.setdefault(split, set()).add(fields.get("ImageID", ""))
            work = self.work_for(validate_row(fields, problem, subset or None))
            if work is None:
                stats.inc_value("openimages/rows_skipped")
                continue
            if isinstance(work, Request):
                while self.crawler.engine.needs_backout():
                    await self.crawler.signals.wait_for(signals.scheduler_empty)
            yield work
        stats.set_value("openimages/rows_read", handled)
        if self.annotation_files and self.write_annotations:
            await maybe_deferred_to_future(threads.deferToThread(self.write_annotation_files))

    def write_annotation_files(self) -> None:
        """``{IMAGES_STORE}/{Subset}/annotations-*.csv``: the official rows of the
        selected images (of the requested classes only, unless all_labels),
        added to what earlier runs into this store wrote there."""
        root = self.config.layout.root
        label_names = None
        if self.class_filter is not None and not self.all_labels:
            label_names = self.class_filter.label_names
        logger.info("Writing the annotations of %d selected images",
                    sum(len(ids) for ids in self.annotated.values()))
        for (kind, split), source in self.annotation_files.items():
            target = root / split / ANNOTATION_FILES[kind]
            image_ids = self.annotated.get(split, set())
            if not image_ids and target.exists():
                continue  # nothing to add
            try:
                with atomic_text_file(root, target) as out:
                    if image_ids:
                        added = merge_selected_rows(source, target, out, image_ids, label_names, self.stopping)
                    else:
                        added = 0
                        header_only(source, out)
            except CopyStopped:
                logger.info("Stopping: %s is left for the next run", target)
                return
            except (MetadataError, OSError) as exc:
                logger.error("Cannot write %s: %s", target, exc)
                self.crawler.stats.inc_value("openimages/annotation_errors")
                continue
            logger.info("Wrote %s: %d rows added for %d selected images", target, added, len(image_ids))

    def closed(self, reason: str) -> None:
        self.stopping.set()

    def selected_rows(self) -> Iterator[MetadataRecord]:
        """Rows of every metadata file that the selection takes."""
        return self.selection.rows(
            (fields, problem, file_subset)
            for path, file_subset in zip(self.metadata_files, self.file_subsets, strict=True)
            for fields, problem in iter_rows(path, self.header)
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
        missing = tuple(
            path
            for path in (config.output_path(output, row.subset, row.image_id) for output in config.outputs)
            if not nonempty(path)
        )
        resized_done = not missing
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
        download = self.image_request(row, url, verified, missing, recorded=recorded)
        if original_there:
            return self.image_request(
                row, url, verified, missing, recorded=recorded, stored=original, fallback=download
            )
        return download

    def image_request(
        self,
        row: ImageRow,
        url: str,
        verified: bool,
        missing: tuple[Path, ...],
        *,
        recorded: bool,
        stored: Path | None = None,
        fallback: Request | None = None,
    ) -> Request:
        """The request for a row's image (``missing``: the resized outputs to
        write): from ``url``, or from its stored copy."""
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
                "missing": missing,
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
            missing=meta["missing"],
            **outcome,
        )


_KIND_NAMES = {"boxes": "bounding boxes", "labels": "human-verified image labels"}
_LABELS_ARGUMENT = {"boxes": "boxes", "labels": "verified"}  # catalogue kind -> -a labels


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
