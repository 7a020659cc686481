"""A store in a local folder, and how files get there atomically.

Every file is first written under ``{store}/.tmp/{host}-{pid}/`` and then
renamed into place, so a kill -9 never leaves a partial file under a final
name. A new run removes the staging folders of dead processes of this host.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from openimages_crawler.store.base import StoreOptions, within
from openimages_crawler.store.layout import STAGING_DIR
from openimages_crawler.store.lock import StoreLock, exclusive, pid_alive


class LocalStore:
    """A folder on a local disk or a shared filesystem (``IMAGES_STORE=DIR`` or
    ``file://DIR``). Writes go through a staging folder of this process and
    ``os.replace``."""

    write_threads = 0  # a write is a local file operation, done in the worker itself

    def __init__(self, uri: str, options: StoreOptions | None = None) -> None:
        """``options`` are an object store's; a folder needs none."""
        self.uri = uri
        self.root = Path(uri.removeprefix("file://"))
        self.staging = staging_folder(self.root)
        self._made_dirs: set[Path] = set()

    def path(self, key: str) -> Path:
        """The local file of ``key``. A key that is absolute or has a ``..``
        part is refused (``ValueError``): keys can come from files that anyone
        who writes to the store wrote, and none may name a file outside it."""
        parts = key.split("/")
        if key.startswith("/") or ".." in parts:
            raise ValueError(f"{key!r} is not a key inside the store {self.uri}")
        return self.root.joinpath(*parts)

    def open(self) -> None:
        remove_dead_staging(self.root)
        self.staging.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.parent.rmdir()  # only when no other process stages here
        except OSError:
            pass

    def stat(self, key: str) -> int | None:
        try:
            return os.stat(self.path(key)).st_size
        except OSError:
            return None

    def read(self, key: str, most: int | None = None) -> bytes:
        with open(self.path(key), "rb") as handle:
            return within(key, handle.read(-1 if most is None else most + 1), most)

    def write(self, key: str, data: bytes) -> None:
        path = self.path(key)
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)
        temp = self.staging / f"{uuid.uuid4().hex}.part"
        if not self.staging.is_dir():  # another object of this folder in this process closed it: staged again
            self.staging.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            try:
                os.replace(temp, path)
            except FileNotFoundError:  # the folder was removed under us: make it again
                parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    @contextmanager
    def writing(self, key: str) -> Iterator[IO[bytes]]:
        """Streamed through a staging folder of its own (the crawl's may be
        removed at close while this runs), renamed when the block completes."""
        path = self.path(key)
        staging = staging_folder(self.root, "stream")
        staging.mkdir(parents=True, exist_ok=True)
        temp = staging / f"{uuid.uuid4().hex}.part"
        try:
            with open(temp, "wb") as handle:
                yield handle
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
            for folder in (staging, staging.parent):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break

    def list(self, prefix: str) -> Iterator[str]:
        for folder, _, files in os.walk(self.path(prefix)):
            relative = Path(folder).relative_to(self.root).as_posix()
            for name in files:
                yield name if relative == "." else f"{relative}/{name}"

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.root).free
        except OSError:
            return None

    def request_uri(self, key: str) -> str:
        return self.path(key).resolve().as_uri()

    def check(self) -> None:
        """Nothing to prove before a crawl: a folder that cannot be written says so at the first write."""

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def publish(self, path: Path, key: str) -> None:
        """A finished local file becomes ``key``: a rename (same filesystem)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def exclusive(self, name: str, stop: threading.Event | None = None,
                  wait: bool = True) -> AbstractContextManager[None]:
        """The folder's OS lock ``.locks/{name}``."""
        return exclusive(self.root, name, stop, wait)

    def shared(self, records: Path, name: str, stop: threading.Event | None = None) -> AbstractContextManager[None]:
        """``name`` over the files runs share: they are the folder's own (``records`` is this folder)."""
        return exclusive(records, name, stop)

    def run_lock(self, records: Path, index: int = 1, count: int = 1,
                 on_lost: Callable[[str], None] | None = None) -> StoreLock:
        """One run of shard ``index`` of ``count`` at a time (an OS lock never lapses: ``on_lost`` is not called)."""
        return StoreLock(records, index, count)

    def records(self, work: str) -> LocalStore:
        """The folder of the crawl's records: this one (``work`` is an object store's)."""
        return self

    def trusted_hosts(self) -> frozenset[str]:
        """No host: a folder is not read over the network."""
        return frozenset()

    def fetch_results(self, local: LocalStore, final_patterns: list[str], whole: bool = False) -> int | None:
        """``None``: a folder's results are in its records folder, itself; there is no other copy."""
        return None

    def send_results(self, local: LocalStore, files: dict[str, list[str]], index: int = 1, count: int = 1) -> None:
        """Nothing to send: the merge wrote the folder's own results files."""

    def fetch_copy(self, records: LocalStore, key: str) -> bool:
        """Nothing moves (``records`` is this folder): whether ``key`` is there."""
        return records.path(key).is_file()

    def send_copy(self, records: LocalStore, path: Path) -> None:
        """Nothing to send: the file in the records folder is the folder's own."""


def staging_folder(root: Path, purpose: str = "") -> Path:
    """A staging folder of this process in the store (``purpose`` keeps users
    apart); the next run removes it if the process died."""
    suffix = f"-{purpose}" if purpose else ""
    return root / STAGING_DIR / f"{host_tag()}-{os.getpid()}{suffix}"


def host_tag() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())


def remove_dead_staging(root: Path) -> list[Path]:
    """Delete staging folders left by processes of this host that no longer run."""
    removed: list[Path] = []
    staging_root = root / STAGING_DIR
    if not staging_root.is_dir():
        return removed
    prefix = f"{host_tag()}-"
    for entry in staging_root.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
