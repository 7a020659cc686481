"""Who may write what in a bucket: leases under ``{prefix}/.locks/``.

A bucket has no ``flock``, so a lock there is an object written only if it is
absent and renewed only if nobody replaced it (the store's conditional writes:
S3's ``If-None-Match: *`` and ``If-Match`` its ETag, GCS's generation
preconditions), every RENEW_S by a thread of its holder. The store proves,
before the first lease, that its server refuses a second create; a write whose
first attempt committed unseen (botocore retried it, and the retry was refused)
is told by the record's ``token``, which only its holder writes. A holder
that stops renewing (killed, its machine gone) loses the lease LEASE_S after
its last renewal, by the server's clock; on the holder's own host a dead
process frees it at once. A holder that cannot renew in time (a partition)
is told (``on_lost``) and must stop writing: another may have taken over.

The locks follow ``store.lock``'s: ``shard-{K}of{N}`` for a run of shard K of
N (refused while a run of another sharding holds one), and short exclusive
ones (``results`` around a merge of the bucket's results files, ``annotations``
around an addition to its annotation files, ``fleet`` around a change of fleet.json).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from openimages_crawler.store.lock import (
    LOCKS_DIR,
    StoreLock,
    StoreLocked,
    describe,
    exclusive,
    holder_gone,
    new_holder,
)

if TYPE_CHECKING:
    from openimages_crawler.store.objects import ObjectStore

logger = logging.getLogger(__name__)

LEASE_S = 60.0  # a lease not renewed for this long is free
RENEW_S = 15.0  # how often its holder renews it
_POLL_S = 1.0  # between two tries of a lease another holds
_SHARD = re.compile(r"shard-(\d+)of(\d+)")


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and how long ago they last renewed it."""

    record: str  # the lease's body: host, pid, started
    age: float

    def __str__(self) -> str:
        return describe(self.record)


class BucketLease:
    """``.locks/{name}`` in an object store, held by this process until ``release``."""

    def __init__(self, store: ObjectStore, name: str, on_lost: Callable[[str], None] | None = None,
                 lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> None:
        self.store = store
        self.name = name
        self.key = f"{LOCKS_DIR}/{name}"
        self.on_lost = on_lost
        self.lease_s, self.renew_s = lease_s, renew_s
        self.record = {**new_holder(), "token": secrets.token_hex(8)}
        self.version: str | None = None  # of the record last written (the store's ETag or generation)
        self.renewed = 0.0  # monotonic time of the last renewal
        self.stopping = threading.Event()
        self.renewer: threading.Thread | None = None

    def try_take(self) -> Holder | None:
        """Take the lease (``None``), or the holder that has it."""
        for _ in range(3):  # a lease released between two requests: try again
            if self._put(None):
                return None
            found = self.store.look(self.key)
            if found is None:
                continue
            record = found.body.decode("utf-8", "replace")
            if found.age <= self.lease_s and not holder_gone(record):
                return Holder(record, found.age)
            logger.info("Taking over %s/%s (%s, silent for %.0f s)", self.store.uri, self.key,
                        describe(record), found.age)
            if self._put(found.version):
                return None
        raise StoreLocked(f"{self.store.uri}/{self.key} keeps changing; try again")

    def _put(self, version: str | None) -> bool:
        self.record["renewals"] = int(self.record.get("renewals", 0)) + (version is not None)
        written = self.store.put_if(self.key, json.dumps(self.record).encode(), version) or self._own_version()
        if written is None:
            return False
        self.version, self.renewed = written, time.monotonic()
        if self.renewer is None:
            self.renewer = threading.Thread(target=self._renew, name=f"lease-{self.name}", daemon=True)
            self.renewer.start()
        return True

    def _own_version(self) -> str | None:
        """The lease's version when it holds this holder's record after all: a
        write botocore retried (a timeout) whose first attempt had committed is
        refused, as the lease no longer has the version it named."""
        found = self.store.look(self.key)
        if found is None:
            return None
        try:
            token = json.loads(found.body).get("token")
        except (ValueError, AttributeError):  # not a record of this code's
            return None
        return found.version if token == self.record["token"] else None

    def wait(self, stop: threading.Event | None = None) -> None:
        """Take the lease, waiting for its holder to end (or ``stop``)."""
        while (holder := self.try_take()) is not None:
            if stop is not None and stop.is_set():
                raise StoreLocked(f"stopped while waiting for {self.store.uri}/{self.key} ({holder})")
            time.sleep(_POLL_S)

    def _renew(self) -> None:
        """Every ``renew_s``: the lease again, on the condition nobody replaced it."""
        while not self.stopping.wait(self.renew_s):
            try:
                if self._put(self.version):
                    continue
                why = "another process took it over"
            except OSError as exc:
                if time.monotonic() - self.renewed < self.lease_s - self.renew_s:
                    logger.warning("Cannot renew %s/%s (tried again): %s", self.store.uri, self.key, exc)
                    continue
                why = f"it could not be renewed for {self.lease_s:.0f} s ({exc})"
            self.version = None
            message = f"lost the lock {self.store.uri}/{self.key}: {why}"
            logger.error("%s", message)
            if self.on_lost is not None:
                self.on_lost(message)
            return

    def release(self) -> None:
        self.stopping.set()
        if self.renewer is not None and self.renewer is not threading.current_thread():
            self.renewer.join()
        version, self.version = self.version, None
        if version is not None:
            try:
                self.store.delete_if(self.key, version)
            except OSError as exc:  # it expires by itself
                logger.warning("Cannot release %s/%s: %s", self.store.uri, self.key, exc)


@contextmanager
def bucket_exclusive(store: ObjectStore, name: str, stop: threading.Event | None = None) -> Iterator[None]:
    """Hold ``.locks/{name}`` of the bucket for the block, waiting for it."""
    lease = BucketLease(store, name)
    lease.wait(stop)
    try:
        yield
    finally:
        lease.release()


class BucketShardLock:
    """Shard ``index`` of ``count`` of an object store, for one run (as
    ``store.lock.StoreLock`` on a folder): one run per shard, and no run of
    another sharding at the same time."""

    def __init__(self, store: ObjectStore, index: int = 1, count: int = 1,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.index, self.count = index, count
        self.lease = BucketLease(store, f"shard-{index}of{count}", on_lost)

    def acquire(self) -> None:
        """Take the lease or raise ``StoreLocked`` naming its holder. A holder
        that has missed a renewal (a job on a node that died, which a fleet
        replaces) is waited for until the lease lapses."""
        deadline = time.monotonic() + self.lease.lease_s + self.lease.renew_s
        while (holder := self.lease.try_take()) is not None:
            if holder.age < self.lease.renew_s or time.monotonic() > deadline:
                what = "" if self.count == 1 else f"shard {self.index}/{self.count} of "
                raise StoreLocked(f"{what}{self.store.uri} is in use by another crawl ({holder}); "
                                  "wait for it to end or use another IMAGES_STORE")
            time.sleep(_POLL_S)
        try:
            self._refuse_other_shardings()
        except BaseException:
            self.lease.release()
            raise

    def _refuse_other_shardings(self) -> None:
        names = self.store.entries(LOCKS_DIR)[0]
        for name in sorted(names):
            match = _SHARD.fullmatch(name)
            if match is None or int(match[2]) == self.count:
                continue
            found = self.store.look(f"{LOCKS_DIR}/{name}")
            if found is None:
                continue
            record = found.body.decode("utf-8", "replace")
            if found.age <= self.lease.lease_s and not holder_gone(record):
                raise StoreLocked(
                    f"{self.store.uri} is in use by a crawl in {match[2]} shards ({describe(record)}); a crawl "
                    f"in {self.count} would overlap its rows: use the same number of shards or wait for it to end")

    def release(self) -> None:
        self.lease.release()


class RunLock:
    """The locks of a run of shard ``index`` of ``count`` on an object store:
    its records folder's (``StoreLock``) and the bucket's lease, taken in that
    order and released in the other."""

    def __init__(self, local: StoreLock, bucket: BucketShardLock) -> None:
        self.local, self.bucket = local, bucket

    def acquire(self) -> None:
        self.local.acquire()
        try:
            self.bucket.acquire()
        except BaseException:
            self.local.release()
            raise

    def inheritable(self) -> list[int]:
        return self.local.inheritable()

    def release(self) -> None:
        self.bucket.release()
        self.local.release()


@contextmanager
def records_and_bucket(store: ObjectStore, records: Path, name: str,
                       stop: threading.Event | None = None) -> Iterator[None]:
    """``name`` held on this machine (the records folder's lock) and in the
    bucket: runs on other machines change the same results and annotation files there."""
    with exclusive(records, name, stop), bucket_exclusive(store, name, stop):
        yield
