"""``scrapy pack``'s run (the command parses its options): a tree of images
walked, each checked in a thread pool (``imaging.pack``), and written into packs
with the crawl's manifest, numbering and resume (``outputs.containers``)."""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.imaging.pack import (
    Checked,
    PackOptions,
    checked_in_order,
    find_images,
    sample_row,
)
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.outputs.containers import PackSink, scratch_folder
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import exclusive

logger = logging.getLogger(__name__)

DUPLICATE = "duplicate_key"  # a second file with a stem already packed in this run


class TreePack:
    """One run of the command: the walk, the checks in threads, the packs."""

    def __init__(self, in_dir: Path, store: LocalStore, container: str, pack_size: int,
                 metadata: dict[str, dict[str, str]] | None, display: ProgressDisplay) -> None:
        self.in_dir = in_dir
        self.store = store
        self.sink = PackSink(store, scratch_folder(store.root), "", container, pack_size,
                             lambda name: exclusive(store.root, name))
        self.metadata = metadata
        self.display = display
        self.meter = ProgressMeter()
        self.started = time.monotonic()
        self.tally: Counter[str] = Counter()
        self.bytes_in = 0
        self.writer: Any = None  # the failure log's csv writer, if asked for

    def run(self, options: PackOptions, threads: int, failure_log: Path | None) -> None:
        logger.info("Packing %s into %s as %s packs of %d", self.in_dir, self.store.root, self.sink.format.name,
                    self.sink.pack_size)
        with ExitStack() as stack:
            if failure_log is not None:
                failure_log.parent.mkdir(parents=True, exist_ok=True)
                self.writer = csv.writer(stack.enter_context(open(failure_log, "w", newline="", encoding="utf-8")))
                self.writer.writerow(["Path", "FailureReason", "FailureDetails"])
            last_show = 0.0
            for checked in checked_in_order(self.to_pack(), options, threads):
                self.add(checked)
                if time.monotonic() - last_show >= 1.0:
                    last_show = time.monotonic()
                    self.show()
            self.sink.close()
        self.show(final=True)
        failed = self.tally.total() - self.tally["ok"] - self.tally["skipped"]
        logger.info("Packed %d, skipped %d (in a pack already), left out %d%s", self.tally["ok"],
                    self.tally["skipped"], failed, f"; listed in {failure_log}" if failed and failure_log else "")

    def to_pack(self) -> Iterator[Path]:
        """The images not in a published pack yet; a second file with a stem already seen is left out."""
        seen: set[str] = set()
        for path in find_images(self.in_dir, self.store.root):
            key = path.stem
            if self.sink.holds(ImageRow(fields={}, image_id=key, url="", size=0, md5=b"", subset=""), ""):
                self.tally["skipped"] += 1
            elif key in seen:
                self.fail(path, DUPLICATE, f"another file with the stem {key!r} was packed in this run")
            else:
                seen.add(key)
                yield path

    def add(self, checked: Checked) -> None:
        if checked.status != "ok":
            self.fail(checked.path, checked.status, checked.details)
            return
        self.sink.write(sample_row(checked, self.in_dir, self.metadata), checked.ext, checked.data, checked.size)
        self.tally["ok"] += 1
        self.bytes_in += len(checked.data)

    def fail(self, path: Path, reason: str, details: str) -> None:
        self.tally[reason] += 1
        logger.warning("Left out %s: %s: %s", path, reason, details)
        if self.writer is not None:
            self.writer.writerow([str(path), reason, details])

    def show(self, final: bool = False) -> None:
        failures = {k: v for k, v in self.tally.items() if k not in ("ok", "skipped")}
        self.meter.add(Counts(time=time.monotonic() - self.started, done=self.tally.total(), ok=self.tally["ok"],
                              failed=sum(failures.values()), bytes_in=self.bytes_in, bytes_out=0,
                              failures=failures, downloading=None, working=0,
                              total=self.tally.total() if final else None))
        self.display.show(self.meter, final=final)
