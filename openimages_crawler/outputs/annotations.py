"""``{Subset}/annotations-*.csv`` and ``narratives.jsonl``: the official
annotation rows of the images a crawl selected, added to what earlier runs
into the store wrote there; with masks, the selected images' official mask
PNGs under ``{Subset}/masks/{originals folder}/``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from openimages_crawler.dataset.annotations import (
    AnnotationReader,
    CopyStopped,
    header_only,
    merge_selected_rows,
)
from openimages_crawler.dataset.catalogue import ANNOTATION_KINDS, CLASS_NAMES_FILE, MASK_COLUMN
from openimages_crawler.dataset.fetch import FetchStopped
from openimages_crawler.dataset.masks import MaskArchives, mask_name_ok
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.store.base import Store, writing_text
from openimages_crawler.store.layout import StoreLayout
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
        sources: dict[tuple[str, str], list[Path]],
        label_names: frozenset[str] | None,
        class_names: Path | None = None,
        *,
        extras: list[Path] | None = None,
        masks: MaskArchives | None = None,
        layout: StoreLayout | None = None,
    ) -> None:
        self.store = store  # its copies are fetched into ``records``, added to there and sent back
        self.records = records
        # the version's class descriptions and the files explaining the kinds, copied beside the annotations
        self.beside = ([(class_names, CLASS_NAMES_FILE)] if class_names else []) + [
            (path, path.name) for path in extras or ()]
        self.sources = sources  # (kind, split) -> the version's annotation file (in parts)
        self.label_names = label_names
        self.masks = masks
        self.layout = layout or StoreLayout()
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
        for (kind, split), sources in self.sources.items():
            key = f"{split}/{ANNOTATION_KINDS[kind].file}"
            target = self.records.path(key)
            image_ids = self.selected.get(split, set())
            if not image_ids and target.exists():
                continue  # nothing to add
            try:
                with self.store.shared(self.records.root, "annotations", self.stopping):
                    self.store.fetch_copy(self.records, key)  # the store's copy is the one that counts
                    with writing_text(self.records, key) as out:
                        if image_ids:
                            added = merge_selected_rows(ANNOTATION_KINDS[kind], sources, target, out, image_ids,
                                                        self.label_names, self.stopping)
                        else:
                            added = 0
                            header_only(ANNOTATION_KINDS[kind], sources[0], out)
                    self.store.send_copy(self.records, target)
                    if kind == "masks" and image_ids:
                        self.write_masks(split, target, image_ids)
            except (CopyStopped, FetchStopped, StoreLocked):
                logger.info("Stopping: %s is left for the next run", target)
                return errors
            except (MetadataError, OSError) as exc:
                logger.error("Cannot write %s: %s", target, exc)
                errors += 1
                continue
            logger.info("Wrote %s: %d rows added for %d selected images", target, added, len(image_ids))
        return errors + self.write_beside() + (len(self.masks.errors) if self.masks is not None else 0)

    def write_masks(self, split: str, rows: Path, image_ids: set[str]) -> None:
        """The official PNG of each mask row of ``image_ids`` not in the store
        yet (the crawl wrote those of the images it stored), under
        ``{split}/masks/{originals folder}/{prefix}/{MaskPath}``."""
        if self.masks is None:
            return
        layout, written, missing = self.layout, 0, []
        with AnnotationReader(rows, ("ImageID", MASK_COLUMN)) as reader:
            for _, (image_id, mask_path) in reader:
                if self.stopping.is_set():
                    raise CopyStopped(str(rows))
                if image_id not in image_ids:
                    continue
                if not mask_name_ok(mask_path, image_id):
                    missing.append(mask_path)
                    continue
                key = layout.mask_key(split, layout.originals_dir, image_id, mask_path)
                if self.store.exists(key):
                    continue
                data = self.masks.png(split, image_id, mask_path)
                if data is None:
                    missing.append(mask_path)
                    continue
                self.store.write(key, data)
                written += 1
        if missing:
            logger.warning("%d %s masks are not in their zips, or not usable PNGs: %s", len(missing), split,
                           ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        logger.info("Wrote %d %s masks", written, split)

    def write_beside(self) -> int:
        """``{split}/class-descriptions.csv`` (what the label ids in the annotation
        files mean; ``scrapy export`` reads it) and the files explaining the
        kinds written; the number of copies that failed."""
        errors = 0
        for path, name in self.beside:
            try:
                data = path.read_bytes()
            except OSError as exc:
                logger.error("Cannot read %s: %s", path, exc)
                errors += 1
                continue
            for split in sorted({split for _, split in self.sources}):
                key = f"{split}/{name}"
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
