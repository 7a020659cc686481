"""The store's DuckDB database brought up to date from the crawl's settings
(``outputs.database`` does the work): at the end of every crawl
(OPENIMAGES_DATABASE) and by ``scrapy db``."""

from __future__ import annotations

import glob
import logging
import re
import time
from pathlib import Path

from scrapy.settings import BaseSettings

from openimages_crawler.checkpoint.results import FailureRow, SuccessRow
from openimages_crawler.crawl.config import CrawlConfig, records_store, subset_feed_paths
from openimages_crawler.outputs.database import (
    MainOutput,
    ResultsFile,
    pending_files,
    update_database,
)
from openimages_crawler.run.export import default_output
from openimages_crawler.store.base import has_room
from openimages_crawler.store.local import LocalStore

logger = logging.getLogger(__name__)

STORE_PLACEHOLDER = "{IMAGES_STORE}"
DATABASE_GROWTH = 2 * 1024**2  # bytes an update may add beyond a copy of the database


def database_path(settings: BaseSettings) -> Path | None:
    """OPENIMAGES_DATABASE with ``{IMAGES_STORE}`` resolved; ``None`` when off."""
    value = str(settings.get("OPENIMAGES_DATABASE") or "")
    if not value:
        return None
    return Path(value.replace(STORE_PLACEHOLDER, str(records_store(settings).root)))


def results_of(settings: BaseSettings) -> list[ResultsFile]:
    """Every subset's results files (the FEEDS patterns), then the pending lists."""
    found = []
    for item_class, status in ((SuccessRow, "stored"), (FailureRow, "failed")):
        for pattern in subset_feed_paths(settings, item_class):
            shape = re.compile(re.escape(pattern).replace(re.escape("*"), "([^/]+)") + "$")
            for name in sorted(glob.glob(pattern)):
                match = shape.search(name)
                found.append(ResultsFile(Path(name), match[1] if match else "", status))
    return found + pending_files(records_store(settings).root)


def database_room(path: Path) -> int:
    """About how much an update of the database at ``path`` writes: a staging
    copy of it, grown (a new database takes about a megabyte even when tiny)."""
    return (path.stat().st_size if path.is_file() else 0) + DATABASE_GROWTH


def run_database(settings: BaseSettings, min_free_bytes: int = 0) -> bool:
    """Update the database OPENIMAGES_DATABASE names (if any); False when it
    failed (logged). A crawl's update is skipped below its free-space floor
    (``min_free_bytes`` on the store's disk): ``scrapy db`` does it later."""
    path = database_path(settings)
    if path is None or not has_room(records_store(settings), min_free_bytes, database_room(path)):
        return True
    config = CrawlConfig.from_settings(settings)
    folder = default_output(settings)
    ext = next((output.spec.format for output in config.outputs if output.dir == folder), "jpg")
    records = records_store(settings)
    started = time.monotonic()
    try:
        counts = update_database(path, LocalStore(str(records.root)), config.layout, results_of(settings),
                                 MainOutput(folder, ext))
    except Exception as exc:  # noqa: BLE001 - duckdb's errors, a full disk: one line, the crawl's results stand
        logger.error("Cannot update the database %s: %s: %s", path, type(exc).__name__, exc)
        return False
    logger.info("Database %s: %d images (%d rows added from %d files) in %.1f s", path, counts.images,
                counts.rows_added, counts.files_read, time.monotonic() - started)
    return True
