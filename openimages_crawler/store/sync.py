"""An object store's copy of the results, synced with the local work folder
where runs write them (``ObjectStore.fetch_results`` and ``send_results``).

The ledger, the results parts and their merge work on local files
(``checkpoint/ledger.py``, ``checkpoint/parts.py``). With an object store those files
live in the work folder (OPENIMAGES_WORK_DIR) and the bucket holds the copies
that count:

- ``pull``, before a run: the bucket's results files and parts replace the
  work folder's, once a merge that a kill interrupted is finished or undone;
- while a process runs (every OPENIMAGES_RESULTS_FLUSH_SECONDS) and when it
  ends, its parts go up whole (``send_copy``, from ``crawl/feeds.py``: they
  only grow, so the last copy holds every earlier one);
- ``push_results``, after a run's merge: a journal naming the merged parts, the
  results files (tagged with the journal's id), then the merged parts are deleted.

Rows finished after a process's last upload are not lost to a kill -9: their
images are in the bucket, where the next run's planner finds them (one listing
per folder) and records them without a download.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import uuid
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from openimages_crawler.store.layout import (
    ATTRIBUTION_CSV,
    ATTRIBUTION_MD,
    JOURNAL_SUFFIX,
    PARTS_DIR,
    final_of,
    owned_by,
    part_pattern,
)
from openimages_crawler.store.local import LocalStore

if TYPE_CHECKING:
    from openimages_crawler.store.objects import ObjectEntry, ObjectStore

logger = logging.getLogger(__name__)

# The bucket's merge journal of a results file: {dir}/.parts/{name}.merge.json
BUCKET_JOURNAL_SUFFIX = ".merge.json"
# The results file's metadata entry naming the journal it was written under.
MERGE_ID = "merge-id"


def relative(local: LocalStore, pattern: str) -> str:
    """A work-folder glob pattern as a key pattern of the bucket."""
    return PurePosixPath(os.path.relpath(pattern, local.root)).as_posix()


def glob_keys(store: ObjectStore, pattern: str) -> dict[str, ObjectEntry]:
    """Objects whose key matches ``pattern`` (``*`` within one folder level),
    listed folder by folder, never the millions of images beside them."""
    *folders, name = pattern.split("/")
    current = [""]
    for part in folders:
        if glob.has_magic(part):
            current = [_join(folder, sub) for folder in current for sub in store.entries(folder)[1]
                       if fnmatch(sub, part)]
        else:
            current = [_join(folder, part) for folder in current]
    return {_join(folder, found): entry for folder in current
            for found, entry in store.entries(folder)[0].items() if fnmatch(found, name)}


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _journal_key(final_key: str) -> str:
    final = PurePosixPath(final_key)
    return str(final.parent / PARTS_DIR / f"{final.name}{BUCKET_JOURNAL_SUFFIX}").removeprefix("./")


def _local_copies(final_patterns: Iterable[str]) -> list[Path]:
    """The work folder's results files, parts and merge leftovers."""
    found = []
    for pattern in final_patterns:
        parts = Path(pattern).parent / PARTS_DIR
        for each in (pattern, part_pattern(pattern), str(parts / f"*{JOURNAL_SUFFIX}"), str(parts / "*.merging-*")):
            found += [Path(name) for name in glob.glob(each)]
    return found


def recover(store: ObjectStore, final_key: str) -> None:
    """Finish or undo a bucket merge a kill interrupted: when the results file
    carries the journal's id its merged parts are deleted, else they stay."""
    journal_key = _journal_key(final_key)
    try:
        record = json.loads(store.read(journal_key))
    except OSError:
        return  # no journal (a read error of a journal that exists is retried by the next pull)
    except ValueError:
        record = {}
    if (store.metadata(final_key) or {}).get(MERGE_ID) == record.get("id"):
        parts = glob_keys(store, str(PurePosixPath(journal_key).parent / "*"))
        for key, etag in record.get("parts", {}).items():
            if key in parts and parts[key].etag == etag:  # not written again since
                store.delete(key)
    store.delete(journal_key)


def pull(store: ObjectStore, local: LocalStore, final_patterns: list[str]) -> int:
    """Make the work folder's results those of the bucket; the files fetched.
    Callers hold the store's ``shared`` ``results`` lock."""
    for path in _local_copies(final_patterns):
        path.unlink(missing_ok=True)
    fetched = refresh_finals(store, local, final_patterns)
    parts = [key for pattern in final_patterns for key in glob_keys(store, relative(local, part_pattern(pattern)))]
    for key in parts:
        store.download(key, local.path(key))
    return fetched + len(parts)


def refresh_finals(store: ObjectStore, local: LocalStore, final_patterns: list[str]) -> int:
    """The bucket's results files (not its parts) into the work folder, once a
    merge that a kill interrupted is finished or undone; the files fetched."""
    for pattern in final_patterns:
        for name in glob.glob(pattern):
            Path(name).unlink()
    finals = [key for pattern in final_patterns for key in glob_keys(store, relative(local, pattern))]
    for key in finals:
        recover(store, key)  # may delete parts, never a results file
    for key in finals:
        store.download(key, local.path(key))
    return len(finals)


def send_results(store: ObjectStore, local: LocalStore, files: dict[str, list[str]], index: int = 1,
                 count: int = 1) -> None:
    """The merged results files up (``push_results``), with each subset's attribution files."""
    push_results(store, local, files["success"] + files["failure"], index, count)
    for success in (Path(name) for pattern in files["success"] for name in sorted(glob.glob(pattern))):
        for name in (ATTRIBUTION_CSV, ATTRIBUTION_MD):
            if (success.parent / name).is_file():  # not written below the free-space floor
                store.send_copy(local, success.parent / name)


def push_results(store: ObjectStore, local: LocalStore, final_patterns: list[str],
                 index: int = 1, count: int = 1) -> int:
    """After a run's merge: each results file up, and the bucket's parts of
    shard ``index`` of ``count`` (now in those files) deleted; the files sent."""
    sent = 0
    for pattern in final_patterns:
        for name in sorted(glob.glob(pattern)):
            path = Path(name)
            key = relative(local, name)
            merged = {part: entry.etag for part, entry in glob_keys(store, relative(local, part_pattern(name))).items()
                      if owned_by(final_of(Path(part))[1], index, count)}
            merge_id = uuid.uuid4().hex
            journal_key = _journal_key(key)
            store.write(journal_key, json.dumps({"id": merge_id, "parts": merged}).encode())
            store.upload(path, key, {MERGE_ID: merge_id})
            for part in merged:
                store.delete(part)
            store.delete(journal_key)
            sent += 1
    return sent
