"""The store interface, and the store chosen by the scheme of IMAGES_STORE.

As Scrapy's FilesPipeline does with ``STORE_SCHEMES``, the scheme of the
store URI picks the class: a local folder (no scheme, or ``file://``) today;
object stores plug in next to it. An unsupported scheme is a clear error
before anything is downloaded.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from openimages_crawler.store.local import LocalStore

logger = logging.getLogger(__name__)


class UnsupportedStore(ValueError):
    """IMAGES_STORE names a scheme no store class serves."""


class ObjectTooLarge(OSError):
    """An object over the size its reader allows (``Store.read``'s ``most``)."""


@dataclass(frozen=True)
class StoreOptions:
    """How to reach an object store: Scrapy's AWS_* settings, all optional
    (``None`` leaves the value to boto3's own chain: environment, config files,
    instance role). A local folder needs none of them."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None
    region_name: str | None = None
    use_ssl: bool | None = None
    verify: bool | str | None = None
    acl: str | None = None  # a canned ACL for every object; None = the bucket's default
    concurrency: int = 32  # simultaneous requests (the connection pool is sized to it)
    multipart_bytes: int = 64 * 1024 * 1024  # larger objects go up in parts
    attempts: int = 5  # per request, with backoff, on throttling, 5xx and connection errors
    unsafe_leases: bool = False  # leases on a server that does not enforce conditional writes


class Store(Protocol):
    """What the crawl needs of a store. Keys are POSIX paths relative to its root.
    A store class is made with ``(uri, options: StoreOptions | None)``."""

    uri: str
    # Threads the crawl gives the store's writes beyond the CPU workers: 0 when a write is a
    # local file operation (done in the worker itself); an object store's StoreOptions.concurrency.
    write_threads: int

    def open(self) -> None:
        """Before the first write: make it writable, clean up after a dead run."""

    def close(self) -> None:
        """After the last write."""

    def stat(self, key: str) -> int | None:
        """Size in bytes of the object at ``key``, ``None`` when there is none."""

    def read(self, key: str, most: int | None = None) -> bytes:
        """The whole object at ``key`` (``OSError`` when it cannot be read;
        ``ObjectTooLarge``, having read no more than ``most`` + 1 bytes, when
        it is larger than ``most``: a file anyone may write is read bounded)."""

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` so that it appears complete or not at all."""

    def writing(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """A file to stream into; it appears at ``key`` only when the block completes."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` (a folder key), in no particular order."""

    def free_bytes(self) -> int | None:
        """Room left for writes, ``None`` when the store has no such limit."""

    def request_uri(self, key: str) -> str:
        """A URI a Scrapy request can read the object at ``key`` from."""

    def check(self) -> None:
        """Before a crawl: prove the store can be used (``OSError`` saying why not)."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` is there now (asked of the store, not of a cache)."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (gone already is fine)."""

    def publish(self, path: Path, key: str) -> None:
        """A finished local file becomes ``key``, whole or not at all (the file is gone after)."""

    def exclusive(self, name: str, stop: threading.Event | None = None,
                  wait: bool = True) -> AbstractContextManager[None]:
        """The store's lock ``name`` held for the block, waiting for it (a set
        ``stop`` gives up), or, not ``wait``, ``StoreLocked`` at once when held."""

    def shared(self, records: Path, name: str, stop: threading.Event | None = None) -> AbstractContextManager[None]:
        """``name`` held over the files runs share (results, annotations,
        pack manifests), whose local copies are in the ``records`` folder."""

    def run_lock(self, records: Path, index: int = 1, count: int = 1,
                 on_lost: Callable[[str], None] | None = None) -> RunLock:
        """The lock of one run of shard ``index`` of ``count`` (``on_lost``: it lapsed)."""

    def records(self, work: str) -> LocalStore:
        """The local folder of the crawl's records (``work``: OPENIMAGES_WORK_DIR)."""

    def trusted_hosts(self) -> frozenset[str]:
        """Hosts the crawl reads the store through: not refused as private addresses."""

    def fetch_results(self, local: LocalStore, final_patterns: list[str], whole: bool = False) -> int | None:
        """The store's copy of the results files (``whole``: and their parts)
        into the records folder ``local``; the files fetched, ``None`` when the
        records folder is the store's only copy."""

    def send_results(self, local: LocalStore, files: dict[str, list[str]], index: int = 1, count: int = 1) -> None:
        """The records folder's merged results back into the store's copy
        (shard ``index`` of ``count``'s parts there deleted)."""

    def fetch_copy(self, records: LocalStore, key: str) -> bool:
        """The store's copy of ``key`` into the records folder (``records.path(key)``),
        replacing what is there; False (and no local file left) when the store has
        none. A folder store's records folder is the store: nothing moves, the
        answer is whether the file exists."""

    def send_copy(self, records: LocalStore, path: Path) -> None:
        """The records folder's file ``path`` up to its key (its path relative to
        ``records.root``); nothing for a folder store."""


class RunLock(Protocol):
    """What a run holds for its whole length (``Store.run_lock``)."""

    def acquire(self) -> None:
        """Take it, or ``StoreLocked`` naming its holder."""

    def inheritable(self) -> list[int]:
        """File descriptors a supervised process inherits to hold it too."""

    def release(self) -> None:
        """Give it up."""


def store_scheme(uri: str) -> str:
    """The scheme of a store URI; an absolute local path has none to speak of."""
    if Path(uri).is_absolute():
        return "file"
    return urlsplit(uri).scheme


def open_store(uri: str, schemes: dict[str, type[Store]], options: StoreOptions | None = None) -> Store:
    """The store for ``uri``, from the classes registered by scheme."""
    scheme = store_scheme(uri)
    store_class = schemes.get(scheme)
    if store_class is None:
        served = ", ".join(f"{name}://" for name in sorted(schemes) if name) or "none"
        raise UnsupportedStore(
            f"IMAGES_STORE={uri!r}: the {scheme}:// scheme is not supported "
            f"(stores: a local folder, {served})"
        )
    return store_class(uri, options)  # type: ignore[call-arg]


def within(key: str, data: bytes, most: int | None) -> bytes:
    """``data`` read from ``key``, unless it is over ``most`` bytes."""
    if most is not None and len(data) > most:
        raise ObjectTooLarge(f"{key} is larger than {most:,} bytes")
    return data


@contextmanager
def writing_text(store: Store, key: str) -> Iterator[IO[str]]:
    """``store.writing`` as UTF-8 text with the line endings written as given."""
    with store.writing(key) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            yield text
        finally:
            text.flush()
            text.detach()


_FLOOR_SAID: list[bool] = []  # the warning below, once said in this process


def has_room(store: Store, floor: int, needed: int) -> bool:
    """Whether an end-of-run extra (the database, the report, the attribution
    files) of about ``needed`` bytes may be written without going below
    OPENIMAGES_MIN_FREE_BYTES, which the crawl itself stopped at. The first
    refusal is said once; the next run or ``scrapy db`` brings the extras up to date."""
    free = store.free_bytes() if floor > 0 else None
    if free is None or free >= floor + needed:
        return True
    if not _FLOOR_SAID:
        _FLOOR_SAID.append(True)
        logger.warning("%s has %s bytes free, under OPENIMAGES_MIN_FREE_BYTES (%s): the database, report and "
                       "attribution files are not updated (the next run or scrapy db brings them up to date)",
                       store.uri, f"{free:,}", f"{floor:,}")
    return False
