"""Results CSVs through Scrapy's feed exports, one file per subset, crash-safe.

Stock feed exports write one file per feed, append a second header on every
run and lose a buffered tail on kill -9. Here a FEEDS URI may contain
``%(subset)s`` (a file per subset, opened when the first row of that subset
arrives), an existing file keeps its header and gets rows appended, every row
is flushed to the OS as one write, and a torn last line from a crash is cut
off before anything reads or appends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from scrapy import Spider
from scrapy.exporters import CsvItemExporter
from scrapy.extensions.feedexport import FeedExporter, FeedSlot, FileFeedStorage
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import threads
from twisted.internet.defer import Deferred

from openimages_crawler.checkpoint.csvfiles import read_csv_header, repair_tail
from openimages_crawler.crawl.config import SUBSET_PARAM, local_path, subset_uri
from openimages_crawler.crawl.run import CrawlRun
from openimages_crawler.store.layout import part_path

logger = logging.getLogger(__name__)

class ResumableFileFeedStorage(FileFeedStorage):
    """A local feed file that is repaired and appended to, never truncated."""

    def open(self, spider: Spider) -> IO[bytes]:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)  # other processes may make it at once
        repair_tail(path)
        return super().open(spider)


class ResultsCsvItemExporter(CsvItemExporter):
    """CSV rows flushed one by one; an existing file's header is reused, not repeated."""

    def __init__(self, file: Any, **kwargs: Any) -> None:
        name = getattr(file, "name", None)
        header = read_csv_header(Path(name)) if isinstance(name, str) else None
        if header:
            kwargs["include_headers_line"] = False
            kwargs["fields_to_export"] = header
        super().__init__(file, **kwargs)
        self._file = file

    def export_item(self, item: Any) -> None:
        super().export_item(item)
        self._file.flush()


class SubsetFeedExporter(FeedExporter):
    """FeedExporter that opens one file per subset for URIs with ``%(subset)s``.

    Rows go to this process's part of each file (``checkpoint.parts``; the
    run's ``part`` label), merged into the file when the run ends, and the
    parts are sent to the store's copy every OPENIMAGES_RESULTS_FLUSH_SECONDS
    (``Store.send_copy``: nothing moves for a folder). Items say their subset
    with a ``subset`` attribute; other FEEDS entries keep the stock behaviour.
    """

    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.subset_uris = [uri for uri in self.feeds if SUBSET_PARAM in uri]
        self.subset_slots: dict[tuple[str, str], FeedSlot] = {}
        self.flush_seconds = crawler.settings.getfloat("OPENIMAGES_RESULTS_FLUSH_SECONDS")
        self.part_files: set[Path] = set()
        self.uploading: Deferred[None] | None = None
        self.uploads = create_looping_call(self.tick)

    def open_spider(self, spider: Spider) -> None:
        self.run = CrawlRun.of(self.crawler)
        self.store, self.records = self.run.store, self.run.records
        subset_feeds = {uri: self.feeds.pop(uri) for uri in self.subset_uris}
        try:
            super().open_spider(spider)
        finally:
            self.feeds.update(subset_feeds)
        if self.flush_seconds > 0:
            self.uploads.start(self.flush_seconds, now=False)

    def tick(self) -> None:
        self.upload_parts()

    def upload_parts(self) -> Deferred[None] | None:
        """This process's parts to the store's copy, in a thread, one upload at a time."""
        if self.uploading is not None or not self.part_files:
            return self.uploading
        if self.run.lost_lock:
            return None  # another run may own this shard's parts in the bucket now
        self.uploading = threads.deferToThread(self.send_parts, sorted(self.part_files))
        self.uploading.addErrback(lambda failure: logger.warning(
            "Cannot upload the results parts to %s (tried again later): %s", self.store.uri, failure.value))
        self.uploading.addBoth(self._uploaded)
        return self.uploading

    def send_parts(self, parts: list[Path]) -> None:
        for path in parts:
            if path.is_file():
                self.store.send_copy(self.records, path)

    def _uploaded(self, _: object) -> None:
        self.uploading = None

    def item_scraped(self, item: Any, spider: Spider) -> None:
        subset = getattr(item, "subset", None)
        if subset is not None:
            for uri_template in self.subset_uris:
                if not self.filters[uri_template].accepts(item):
                    continue
                slot = self.subset_slots.get((uri_template, subset))
                if slot is None:
                    slot = self._start_new_batch(
                        batch_id=1,
                        uri=self.file_uri(subset_uri(uri_template, str(self.records.root), subset)),
                        feed_options=self.feeds[uri_template],
                        spider=spider,
                        uri_template=uri_template,
                    )
                    self.subset_slots[(uri_template, subset)] = slot
                slot.start_exporting()
                assert slot.exporter is not None
                slot.exporter.export_item(item)
                slot.itemcount += 1
        super().item_scraped(item, spider)

    def file_uri(self, uri: str) -> str:
        """Where this process appends: its own part of the results file."""
        path = part_path(Path(local_path(uri)), self.run.part)
        self.part_files.add(path)
        return str(path)

    async def close_spider(self, spider: Spider) -> None:
        self.slots.extend(self.subset_slots.values())
        self.subset_slots.clear()
        await super().close_spider(spider)
        if self.uploads.running:
            self.uploads.stop()
        if self.uploading is not None:  # started before the files closed
            await maybe_deferred_to_future(self.uploading)
        last = self.upload_parts()
        if last is not None:
            await maybe_deferred_to_future(last)
