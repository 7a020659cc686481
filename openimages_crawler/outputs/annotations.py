"""``{Subset}/annotations-*.csv``: the official annotation rows of the images
a crawl selected, added to what earlier runs into the store wrote there."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from openimages_crawler.dataset.annotations import (
    CopyStopped,
    header_only,
    merge_selected_rows,
)
from openimages_crawler.dataset.catalogue import ANNOTATION_FILES, CLASS_NAMES_FILE
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.store.base import Store, writing_text
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import StoreLocked

logger = logging.getLogger(__name__)


class AnnotationOutput:
    """Collects the selected ImageIDs per split while the rows are read, then
    copies their rows (of ``label_names`` only, unless ``None``)."""

    def __init__(
        self,
        store: Store,
        records: LocalStore,
        sources: dict[tuple[str, str], Path],
        label_names: frozenset[str] | None,
        class_names: Path | None = None,
    ) -> None:
        self.store = store  # its copies are fetched into ``records``, added to there and sent back
        self.records = records
        self.class_names = class_names  # the version's class descriptions, copied beside the annotations
        self.sources = sources  # (kind, split) -> the version's annotation CSV
        self.label_names = label_names
        self.selected: dict[str, set[str]] = {}  # split -> ImageIDs
        self.stopping = threading.Event()  # set at close: a copy in progress gives up

    def add(self, split: str, image_id: str) -> None:
        self.selected.setdefault(split, set()).add(image_id)

    def write(self) -> int:
        """Write every file (blocking: run it in a thread); the number of files
        that could not be written."""
        logger.info("Writing the annotations of %d selected images",
                    sum(len(ids) for ids in self.selected.values()))
        errors = 0
        for (kind, split), source in self.sources.items():
            key = f"{split}/{ANNOTATION_FILES[kind]}"
            target = self.records.path(key)
            image_ids = self.selected.get(split, set())
            if not image_ids and target.exists():
                continue  # nothing to add
            try:
                with self.store.shared(self.records.root, "annotations", self.stopping):
                    self.store.fetch_copy(self.records, key)  # the store's copy is the one that counts
                    with writing_text(self.records, key) as out:
                        if image_ids:
                            added = merge_selected_rows(source, target, out, image_ids, self.label_names,
                                                        self.stopping)
                        else:
                            added = 0
                            header_only(source, out)
                    self.store.send_copy(self.records, target)
            except (CopyStopped, StoreLocked):
                logger.info("Stopping: %s is left for the next run", target)
                return errors
            except (MetadataError, OSError) as exc:
                logger.error("Cannot write %s: %s", target, exc)
                errors += 1
                continue
            logger.info("Wrote %s: %d rows added for %d selected images", target, added, len(image_ids))
        return errors + self.write_class_names()

    def write_class_names(self) -> int:
        """``{split}/class-descriptions.csv``: what the label ids in the annotation
        files mean (``scrapy export`` reads it); the number of copies that failed."""
        if self.class_names is None:
            return 0
        try:
            data = self.class_names.read_bytes()
        except OSError as exc:
            logger.error("Cannot read %s: %s", self.class_names, exc)
            return 1
        errors = 0
        for split in sorted({split for _, split in self.sources}):
            key = f"{split}/{CLASS_NAMES_FILE}"
            try:
                for copy in (self.records, self.store):  # one file in a folder store: written once
                    if not _holds(copy, key, data):
                        copy.write(key, data)
            except OSError as exc:
                logger.error("Cannot write %s: %s", key, exc)
                errors += 1
        return errors


def _holds(store: Store, key: str, data: bytes) -> bool:
    try:
        return store.read(key) == data
    except OSError:
        return False
