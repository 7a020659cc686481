"""``scrapy pack``: a store's output, or any tree of images, into WebDataset,
Parquet or TFRecord packs, with the crawl's manifest, numbering and resume
(``imaging.pack``, ``outputs.containers``). No network."""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.utils.log import configure_logging

from openimages_crawler.commands.setting_names import refuse_unknown_settings
from openimages_crawler.imaging.pack import PackOptions, read_metadata
from openimages_crawler.monitor.progress import ProgressDisplay
from openimages_crawler.outputs.formats import PACKED_CONTAINERS
from openimages_crawler.run.pack import TreePack
from openimages_crawler.store.local import LocalStore

logger = logging.getLogger(__name__)


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return f"-i STORE_OR_TREE -o OUT --container {'|'.join(PACKED_CONTAINERS)} [--shard-size N] [options]"

    def short_desc(self) -> str:
        return "Pack a store's output or a tree of images into WebDataset, Parquet or TFRecord packs"

    def long_desc(self) -> str:
        return ("Pack every image under -i (a store's output folder such as STORE/train/crop224, or any "
                "tree) into packs under -o: OUT/000000.tar|.parquet|.tfrecord, OUT/shards.csv and "
                "OUT/.index/. The key of a sample is the file's stem. Every file is decoded before it is "
                "packed; files that cannot be are reported (--log) and left out. A rerun packs only "
                "what is not in a pack yet.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-i", "--input", dest="in_dir", required=True, help="folder of images (required)")
        parser.add_argument("-o", "--output", dest="out_dir", required=True, help="folder for the packs (required)")
        parser.add_argument("--container", required=True, choices=PACKED_CONTAINERS,
                            help="the packs' format (required)")
        parser.add_argument("--shard-size", dest="pack_size", type=int, default=None,
                            help="images per pack (default: OPENIMAGES_SHARD_SIZE, 10000)")
        parser.add_argument("--metadata", help="a CSV with an ImageID column (a store's images-success.csv): "
                            "each sample's metadata (default: its ImageID and path)")
        parser.add_argument("-j", "--threads", type=int, default=0, help="decoding threads (default: one per CPU)")
        parser.add_argument("--log", dest="failure_log", help="CSV of the files left out (path, reason, details; "
                            "default: none, the log says them)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        if (refused := refuse_unknown_settings(self.settings)) is not None:  # a misspelled name: one line, exit 2
            self.exitcode = refused
            return
        configure_logging(settings)  # no crawler process does it for this command
        in_dir, out_dir = Path(opts.in_dir), Path(opts.out_dir)
        if args:
            raise UsageError(f"unexpected argument {args[0]!r}: give the folders with -i and -o")
        if not in_dir.is_dir():
            raise UsageError(f"-i {in_dir}: not a folder")
        if out_dir.resolve() == in_dir.resolve():
            raise UsageError("-o must be another folder than -i")
        pack_size = opts.pack_size if opts.pack_size is not None else settings.getint("OPENIMAGES_SHARD_SIZE")
        if pack_size < 1:
            raise UsageError(f"--shard-size {pack_size}: give 1 or more")
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
            packing = TreePack(in_dir, store, opts.container, pack_size, metadata, display)
            packing.run(options, opts.threads or os.cpu_count() or 1,
                        Path(opts.failure_log) if opts.failure_log else None)
        except KeyboardInterrupt:
            logger.warning("Interrupted: the packs published so far are whole; run again to finish")
            self.exitcode = 130
            return
        finally:
            store.close()
        self.exitcode = 0
