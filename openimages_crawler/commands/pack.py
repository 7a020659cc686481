"""``scrapy pack``: a store's output, or any tree of images, into WebDataset,
Parquet or TFRecord shards, with the crawl's manifest, numbering and resume
(``imaging.pack``, ``outputs.containers``). No network."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.log import configure_logging

from openimages_crawler.dataset.rows import ImageRow
from openimages_crawler.imaging.pack import (
    Checked,
    PackOptions,
    checked_in_order,
    find_images,
    read_metadata,
    sample_row,
)
from openimages_crawler.monitor.progress import Counts, ProgressDisplay, ProgressMeter
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import exclusive
from openimages_crawler.outputs.containers import ShardSink, scratch_folder
from openimages_crawler.outputs.formats import SHARD_CONTAINERS

logger = logging.getLogger(__name__)

DUPLICATE = "duplicate_key"  # a second file with a stem already packed in this run


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return f"-i STORE_OR_TREE -o OUT --container {'|'.join(SHARD_CONTAINERS)} [--shard-size N] [options]"

    def short_desc(self) -> str:
        return "Pack a store's output or a tree of images into WebDataset, Parquet or TFRecord shards"

    def long_desc(self) -> str:
        return ("Pack every image under -i (a store's output folder such as STORE/train/crop224, or any "
                "tree) into shards under -o: OUT/000000.tar|.parquet|.tfrecord, OUT/shards.csv and "
                "OUT/.index/. The key of a sample is the file's stem. Every file is decoded before it is "
                "packed; files that cannot be are reported (--log) and left out. A rerun packs only "
                "what is not in a shard yet.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-i", "--input", dest="in_dir", required=True, help="folder of images (required)")
        parser.add_argument("-o", "--output", dest="out_dir", required=True, help="folder for the shards (required)")
        parser.add_argument("--container", required=True, choices=SHARD_CONTAINERS,
                            help="the shards' format (required)")
        parser.add_argument("--shard-size", type=int, default=None,
                            help="images per shard (default: OPENIMAGES_SHARD_SIZE, 10000)")
        parser.add_argument("--metadata", help="a CSV with an ImageID column (a store's images-success.csv): "
                            "each sample's metadata (default: its ImageID and path)")
        parser.add_argument("-j", "--threads", type=int, default=0, help="decoding threads (default: one per CPU)")
        parser.add_argument("--log", dest="failure_log", help="CSV of the files left out (path, reason, details; "
                            "default: none, the log says them)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        configure_logging(settings)  # no crawler process does it for this command
        in_dir, out_dir = Path(opts.in_dir), Path(opts.out_dir)
        if args:
            raise UsageError(f"unexpected argument {args[0]!r}: give the folders with -i and -o")
        if not in_dir.is_dir():
            raise UsageError(f"-i {in_dir}: not a folder")
        if out_dir.resolve() == in_dir.resolve():
            raise UsageError("-o must be another folder than -i")
        shard_size = opts.shard_size if opts.shard_size is not None else settings.getint("OPENIMAGES_SHARD_SIZE")
        if shard_size < 1:
            raise UsageError(f"--shard-size {shard_size}: give 1 or more")
        if opts.threads < 0:
            raise UsageError(f"-j {opts.threads}: give 1 or more threads (0: one per CPU)")
        metadata = None
        if opts.metadata:
            try:
                metadata = read_metadata(Path(opts.metadata))
            except (OSError, KeyError, csv.Error, UnicodeDecodeError) as exc:
                raise UsageError(f"--metadata {opts.metadata}: cannot be read as a CSV with an ImageID column "
                                 f"({exc})") from None
        options = PackOptions(max_pixels=settings.getint("OPENIMAGES_MAX_PIXELS"),
                              max_decode_bytes=settings.getint("OPENIMAGES_MAX_DECODE_BYTES"),
                              max_bytes=settings.getint("DOWNLOAD_MAXSIZE") or 1 << 62)
        display = ProgressDisplay(str(settings["OPENIMAGES_PROGRESS"]).lower(),
                                  settings.getfloat("LOGSTATS_INTERVAL"), unit="files")
        out_dir.mkdir(parents=True, exist_ok=True)
        store = LocalStore(str(out_dir))
        store.open()
        try:
            packing = TreePack(in_dir, store, opts.container, shard_size, metadata, display)
            packing.run(options, opts.threads or os.cpu_count() or 1,
                        Path(opts.failure_log) if opts.failure_log else None)
        except KeyboardInterrupt:
            logger.warning("Interrupted: the shards published so far are whole; run again to finish")
            self.exitcode = 130
            return
        finally:
            store.close()
        self.exitcode = 0


class TreePack:
    """One run of the command: the walk, the checks in threads, the shards."""

    def __init__(self, in_dir: Path, store: LocalStore, container: str, shard_size: int,
                 metadata: dict[str, dict[str, str]] | None, display: ProgressDisplay) -> None:
        self.in_dir = in_dir
        self.store = store
        self.sink = ShardSink(store, scratch_folder(store.root), "", container, shard_size,
                              lambda name: exclusive(store.root, name))
        self.metadata = metadata
        self.display = display
        self.meter = ProgressMeter()
        self.started = time.monotonic()
        self.tally: Counter[str] = Counter()
        self.bytes_in = 0
        self.writer: Any = None  # the failure log's csv writer, if asked for

    def run(self, options: PackOptions, threads: int, failure_log: Path | None) -> None:
        logger.info("Packing %s into %s as %s shards of %d", self.in_dir, self.store.root, self.sink.format.name,
                    self.sink.shard_size)
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
        logger.info("Packed %d, skipped %d (in a shard already), left out %d%s", self.tally["ok"],
                    self.tally["skipped"], failed, f"; listed in {failure_log}" if failed and failure_log else "")

    def to_pack(self) -> Iterator[Path]:
        """The images not in a published shard yet; a second file with a stem already seen is left out."""
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
