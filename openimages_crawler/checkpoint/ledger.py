"""What earlier runs already recorded, read back from the results CSVs.

The results files are the crawl's checkpoint: a row found in either of them
is accounted for and is not recorded again. ImageIDs are kept as IdSets
(8 bytes an id), so millions of them fit in tens of megabytes.
"""

from __future__ import annotations

import glob
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import IO

from openimages_crawler.checkpoint.csvfiles import (
    iter_records,
    read_csv_header,
    record_fields,
    repair_tail,
)
from openimages_crawler.checkpoint.parts import all_results, merge_owned
from openimages_crawler.dataset.catalogue import FAILURE_COLUMNS
from openimages_crawler.dataset.idset import CHUNK_ROWS, IdSet, read_id_column
from openimages_crawler.dataset.retry import RetryFilter
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.outputs.attribution import write_attribution
from openimages_crawler.store.base import has_room
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import exclusive

logger = logging.getLogger(__name__)


def read_ids(path: Path) -> IdSet:
    """ImageIDs of one results CSV (repaired first if a crash tore its tail)."""
    repair_tail(path)
    if not read_csv_header(path):
        return IdSet()
    return read_id_column(path)


def read_failures(path: Path, retry: RetryFilter | None) -> tuple[IdSet, IdSet, int]:
    """ImageIDs of one failure file: those kept as failures, those ``retry``
    takes, and the number of rows (more than the ids: an image recorded twice)."""
    repair_tail(path)
    if not read_csv_header(path):
        return IdSet(), IdSet(), 0
    import pandas as pd  # noqa: PLC0415 (only with results to read: a fresh store's crawl starts faster)

    columns = ["ImageID", *FAILURE_COLUMNS] if retry is not None else ["ImageID"]
    kept, retried, rows = [], [], 0
    with pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, na_filter=False,
                     chunksize=CHUNK_ROWS) as reader:
        for chunk in reader:
            rows += len(chunk)
            chosen = retry.mask(chunk[FAILURE_COLUMNS[0]], chunk[FAILURE_COLUMNS[1]]) if retry else None
            if chosen is None:
                kept.append(IdSet(chunk["ImageID"].tolist()))
            else:
                kept.append(IdSet(chunk["ImageID"][~chosen].tolist()))
                retried.append(IdSet(chunk["ImageID"][chosen].tolist()))
    return IdSet.union(kept), IdSet.union(retried), rows


def reconcile_failures(path: Path, succeeded: IdSet, writing: Callable[[], AbstractContextManager[IO[bytes]]]) -> int:
    """Rewrite a failure file (through ``writing``, atomically) without the rows
    of images that are now in a success file and, for an image recorded twice,
    without all but its last row; returns the rows dropped."""
    import pandas as pd  # noqa: PLC0415

    ids = pd.read_csv(path, usecols=["ImageID"], dtype=str, keep_default_na=False, na_filter=False)["ImageID"]
    counts = Counter(ids)
    dropping = sum(1 for image_id in ids if image_id in succeeded) + sum(n - 1 for n in counts.values() if n > 1)
    if not dropping:
        return 0
    left = {image_id: n for image_id, n in counts.items() if n > 1}
    with open(path, "rb") as source, writing() as out:
        records = iter_records(source)
        header = next(records)
        out.write(header)
        index = record_fields(header).index("ImageID")
        for record in records:
            image_id = record_fields(record)[index]
            if image_id in left:
                left[image_id] -= 1
                if left[image_id]:
                    continue  # a later row of this image follows
            if image_id not in succeeded:
                out.write(record)
    return dropping


def reconcile(files: dict[str, list[str]], store: LocalStore) -> int:
    """``reconcile_failures`` for every failure file of the store; the rows dropped."""
    succeeded = IdSet.union([read_ids(path) for path in all_results(files["success"])])
    dropped = 0
    for path in existing(files["failure"]):
        try:
            key = path.resolve().relative_to(store.root.resolve()).as_posix()
        except ValueError:
            logger.warning("%s is outside IMAGES_STORE: not rewritten", path)
            continue
        removed = reconcile_failures(path, succeeded, partial(store.writing, key))
        if removed:
            logger.info("%s: %d rows removed (images stored since, or recorded again)", path, removed)
        dropped += removed
    return dropped


def recorded_rows(files: dict[str, list[str]]) -> dict[str, int]:
    """The images the store's results files and parts account for, by kind."""
    return {f"{kind} rows": len(IdSet.union([read_ids(path) for path in all_results(patterns)]))
            for kind, patterns in files.items()}


def settle(files: dict[str, list[str]], store: LocalStore, index: int = 1, count: int = 1, *,
           reconcile_failures: bool = True, locked: bool = False, min_free_bytes: int = 0) -> None:
    """End a run of shard ``index`` of ``count``: merge its results parts into
    the results files and, when asked, ``reconcile`` the failure files, then
    write each subset's attribution from its success file (under the store's
    ``results`` lock, unless the caller holds it; not below ``min_free_bytes``)."""
    with nullcontext() if locked else exclusive(store.root, "results"):
        merge_owned(files["success"] + files["failure"], index, count)
        if reconcile_failures:
            reconcile(files, store)
        successes = list(existing(files["success"]))
        if not has_room(store, min_free_bytes, sum(path.stat().st_size for path in successes)):  # at most as large
            return
        for success in successes:
            write_attribution(success)


def existing(patterns: list[str]) -> Iterator[Path]:
    for pattern in patterns:
        for name in sorted(glob.glob(pattern)):
            yield Path(name)


class ResultsLedger:
    """The ImageIDs already in a success file and in a failure file."""

    def __init__(self, succeeded: IdSet, failed: IdSet, retrying: IdSet | None = None,
                 *, needs_reconcile: bool = False) -> None:
        self.succeeded = succeeded
        self.failed = failed  # recorded failures, less those this run retries
        self.retrying = retrying or IdSet()  # recorded failures this run tries again
        # An image in both files, or twice in the failure files: a retry run was
        # stopped before it rewrote them (reconcile_failures mends that).
        self.needs_reconcile = needs_reconcile

    @classmethod
    def load(cls, files: dict[str, list[str]], header: list[str], retry: RetryFilter | None = None) -> ResultsLedger:
        """Read the results files; ``files`` maps ``"success"``/``"failure"`` to
        glob patterns. Each file must have the input's ``header`` (failure
        files plus FailureReason and FailureDetails)."""
        succeeded, failed, retrying, failure_rows = [], [], [], 0
        for kind, path in result_files(files, header):
            if kind == "success":
                succeeded.append(read_ids(path))
                continue
            kept, retried, rows = read_failures(path, retry)
            failed.append(kept)
            retrying.append(retried)
            failure_rows += rows
        ledger = cls(IdSet.union(succeeded), IdSet.union(failed), IdSet.union(retrying))
        recorded_failures = len(IdSet.union([ledger.failed, ledger.retrying]))
        ledger.needs_reconcile = failure_rows > recorded_failures or ledger.succeeded.overlaps(
            IdSet.union([ledger.failed, ledger.retrying]))
        return ledger

    def described(self, retrying: bool) -> str:
        """``Already recorded: 15 successes, 16 failures``; ``""`` when nothing is."""
        if not (self.succeeded or self.failed or self.retrying):
            return ""
        failures = len(IdSet.union([self.failed, self.retrying]))
        tried = f" ({len(self.retrying)} of them tried again)" if retrying else ""
        return f"Already recorded: {len(self.succeeded)} successes, {failures} failures{tried}"


def result_files(files: dict[str, list[str]], header: list[str]) -> Iterator[tuple[str, Path]]:
    """``(kind, path)`` of every existing results file and part, each checked
    to have the columns this metadata gives."""
    for kind, patterns in files.items():
        wanted = header + (list(FAILURE_COLUMNS) if kind == "failure" else [])
        for path in all_results(patterns):
            found = read_csv_header(path)
            if found and found != wanted:
                raise MetadataError(
                    f"{path} has the columns {','.join(found)} but this metadata "
                    f"gives {','.join(wanted)}: use another IMAGES_STORE or the "
                    "metadata this store was built from"
                )
            yield kind, path
