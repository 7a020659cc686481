"""The results around a run, whatever the store: read from the store's copy
before it, merged and sent back after it, under the store's ``results`` lock
(``Store.fetch_results``/``send_results``: a bucket syncs its copy with the
records folder, ``store.sync``; a folder's records folder is the store)."""

from __future__ import annotations

import logging
import threading

from openimages_crawler.checkpoint.ledger import settle
from openimages_crawler.store.base import Store
from openimages_crawler.store.local import LocalStore

logger = logging.getLogger(__name__)


def pull_results(store: Store, local: LocalStore, final_patterns: list[str],
                 stop: threading.Event | None = None) -> None:
    """The store's copy of the results (files and parts) into the records folder
    before a run, under the ``results`` lock (another shard may be merging);
    ``OSError`` or ``StoreLocked`` when it cannot. A folder store has no other copy."""
    with store.shared(local.root, "results", stop):
        fetched = store.fetch_results(local, final_patterns, whole=True)
    if fetched is not None:
        logger.info("Results read from %s: %d files", store.uri, fetched)


def settle_results(store: Store, local: LocalStore, files: dict[str, list[str]], index: int = 1, count: int = 1,
                   *, reconcile_failures: bool = True, whole: bool = False, min_free_bytes: int = 0) -> None:
    """End a run of shard ``index`` of ``count``, whatever the store, under its
    ``results`` lock: the store's results as they are now (other shards may
    have merged since this run began; ``whole``: every part too, a fleet's last
    merge), this shard's parts merged in (``ledger.settle``), and the results
    sent back (a folder store's records folder is the store: nothing moves)."""
    with store.shared(local.root, "results"):
        store.fetch_results(local, files["success"] + files["failure"], whole)
        settle(files, local, index, count, reconcile_failures=reconcile_failures, locked=True,
               min_free_bytes=min_free_bytes)
        store.send_results(local, files, index, count)
