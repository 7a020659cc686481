"""``scrapy export coco|yolo|voc``: labels for the images a store holds, in
the coordinates of the stored output they point at (``exports``). No network."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings
from scrapy.utils.log import configure_logging

from openimages_crawler.crawl.config import CrawlConfig
from openimages_crawler.crawl.feeds import subset_feed_paths
from openimages_crawler.dataset.annotations import parse_class_list
from openimages_crawler.dataset.arguments import ArgumentError, parse_export_formats
from openimages_crawler.dataset.catalogue import ANNOTATION_FILES
from openimages_crawler.store.layout import is_subset_name
from openimages_crawler.dataset.selection import SelectionError
from openimages_crawler.exports.run import ExportError, ExportRequest, export_subset
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.results import SuccessRow

logger = logging.getLogger(__name__)


def parse_formats(text: str) -> tuple[str, ...]:
    """``coco,yolo``: the formats, each once, checked."""
    try:
        return parse_export_formats(text)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def folder_store(given: str | None, settings: BaseSettings, not_a_bucket: str) -> Path:
    """``--store`` (default IMAGES_STORE) as a folder that exists, made the
    run's IMAGES_STORE (the results feeds' paths follow it); a bucket is
    refused with ``not_a_bucket``."""
    value = str(given or settings["IMAGES_STORE"] or "")
    if "://" in value and not value.startswith("file://"):
        raise UsageError(f"--store {value}: {not_a_bucket}")
    folder = Path(value.removeprefix("file://"))
    if not folder.is_dir():
        raise UsageError(f"--store {folder}: not a folder")
    settings.set("IMAGES_STORE", str(folder), priority="cmdline")
    return folder


def default_output(settings: BaseSettings) -> str:
    """The first resized output, or the originals when there is none."""
    config = CrawlConfig.from_settings(settings)
    return config.outputs[0].dir if config.outputs else config.layout.originals_dir


def run_export(store_dir: Path, settings: BaseSettings, formats: tuple[str, ...], subsets: list[str] | None,
               folder: str, class_names: list[str] | None) -> int:
    """Export every subset asked (``None``: every subset with annotations); the
    number of subsets that could not be exported (each said in one line)."""
    store = LocalStore(str(store_dir))
    if subsets is None:
        subsets = sorted(path.parent.name for path in store_dir.glob(f"*/{ANNOTATION_FILES['boxes']}"))
        if not subsets:
            logger.error("No subset of %s has annotations: crawl with -a classes=… or -a annotations=true",
                         store_dir)
            return 1
    layout = CrawlConfig.from_settings(settings).layout
    request = ExportRequest(formats, folder, class_names)
    failed = 0
    store.open()
    try:
        for subset in subsets:
            started = time.monotonic()
            success = Path(subset_feed_paths(settings, SuccessRow, subset)[0])
            try:
                counts = export_subset(store, layout, subset, success, request)
            except (ExportError, OSError) as exc:
                logger.error("Cannot export %s: %s", subset, exc)
                failed += 1
                continue
            logger.info("Exported %s/%s as %s in %.1f s: %d images, %d boxes (%d cut away by the crop), "
                        "%d recorded images not in %s", subset, folder, ", ".join(counts.formats),
                        time.monotonic() - started, counts.images, counts.boxes, counts.boxes_left_out,
                        counts.not_found, folder)
            if counts.no_geometry:
                logger.warning("%s/%s: %d images left out: they carry no record of how they were resized "
                               "(made by another tool or an older version); resize them again from the "
                               "originals to export them", subset, folder, counts.no_geometry)
    finally:
        store.close()
    return failed


class Command(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False  # it never crawls
    default_settings = {"LOG_LEVEL": "INFO"}

    def syntax(self) -> str:
        return "coco|yolo|voc[,…] --store STORE [--subset NAME|all] [--output DIR_NAME] [--classes NAMES]"

    def short_desc(self) -> str:
        return "Write COCO, YOLO or Pascal VOC labels for the images a store holds"

    def long_desc(self) -> str:
        return ("Labels for the stored images of one output, from the store's annotations-bbox.csv and "
                "class-descriptions.csv (a crawl with -a classes=… or -a annotations=true writes them), in "
                "the coordinates of each stored image: STORE/{Subset}/coco/instances.json, "
                "STORE/{Subset}/yolo/ (labels/, images/ linking to the stored files, classes.txt, data.yaml), "
                "STORE/{Subset}/voc/Annotations/. A rerun replaces the previous export whole.")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--store", help="the store's folder (default: IMAGES_STORE)")
        parser.add_argument("--subset", default="all", help="a subset, or all: every subset with annotations "
                            "(default: all)")
        parser.add_argument("--output", dest="folder", help="the output the labels point at (default: the first "
                            "resized output of the settings, or the originals)")
        parser.add_argument("--classes", help="only these classes, comma-separated display names or label ids "
                            "(default: every class of the store's annotations)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        settings = self.settings
        configure_logging(settings)  # no crawler process does it for this command
        if len(args) != 1:
            raise UsageError("give one format list: scrapy export coco|yolo|voc[,…] --store STORE")
        formats = parse_formats(args[0])
        store_dir = folder_store(opts.store, settings, "exports are written into a folder store, not an object store")
        if opts.subset != "all" and not is_subset_name(opts.subset):
            raise UsageError(f"--subset {opts.subset!r} is not a plain subset name")
        try:
            class_names = parse_class_list(opts.classes) if opts.classes is not None else None
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        subsets = None if opts.subset == "all" else [opts.subset]
        failed = run_export(store_dir, settings, formats, subsets, opts.folder or default_output(settings),
                            class_names)
        self.exitcode = 1 if failed else 0
