"""Labels for trainers (``outputs``) from the crawl's settings: at the end of
a crawl with ``-a export`` and by ``scrapy export``; and the folder store both
``scrapy export`` and ``scrapy db`` work on."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scrapy.exceptions import UsageError
from scrapy.settings import BaseSettings

from openimages_crawler.checkpoint.results import SuccessRow
from openimages_crawler.crawl.config import CrawlConfig, subset_feed_paths
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS
from openimages_crawler.outputs.export import DEFAULT_CLASS_ORDER, ExportError, ExportRequest, export_subset
from openimages_crawler.store.local import LocalStore

logger = logging.getLogger(__name__)


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
               folder: str, class_names: list[str] | None, class_order: str = DEFAULT_CLASS_ORDER,
               task: str = "detect") -> int:
    """Export every subset asked (``None``: every subset with annotations), YOLO's
    classes numbered in ``class_order``; the number of subsets that could not be
    exported (each said in one line)."""
    store = LocalStore(str(store_dir))
    if subsets is None:
        subsets = sorted({path.parent.name for kind in ("boxes", "masks")
                          for path in store_dir.glob(f"*/{ANNOTATION_KINDS[kind].file}")})
        if not subsets:
            logger.error("No subset of %s has annotations: crawl with -a classes=… or -a annotations=true",
                         store_dir)
            return 1
    layout = CrawlConfig.from_settings(settings).layout
    request = ExportRequest(formats, folder, class_names, class_order, task)
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
            if counts.masks or counts.captions:
                logger.info("%s/%s: %d masks (%d cut away by the crop, %d rows whose PNG the store lacks: "
                            "their objects keep a box), %d captions", subset, folder, counts.masks,
                            counts.masks_left_out, counts.masks_missing, counts.captions)
            if counts.without_mask:
                logger.warning("%s/%s: %d objects without a mask left out of YOLO's outlines (--task segment)",
                               subset, folder, counts.without_mask)
            if counts.no_geometry:
                logger.warning("%s/%s: %d images left out: they carry no record of how they were resized "
                               "(made by another tool or an older version); resize them again from the "
                               "originals to export them", subset, folder, counts.no_geometry)
            if counts.not_boxable:
                logger.warning("%s/%s: %d boxes of classes that are not boxable left out of YOLO (--class-order "
                               "%s numbers the boxable classes only)", subset, folder, counts.not_boxable,
                               class_order)
    finally:
        store.close()
    return failed
