"""Who may write what in a store: OS locks under ``{store}/.locks/``.

Every lock is ``flock`` on an open file, so the kernel releases it when the
process ends however it ends (kill -9 included): there is never a stale lock
to clean up by hand. A crawl holds its shard's lock (an unsharded crawl is
shard 1/1) for its whole run, so two crawls of one shard never run at once,
while shards of one N (processes of one run, jobs of a fleet) share the
store. Short exclusive locks serialise what all shards share: the metadata
cache, the merged results files and the annotation files.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from openimages_crawler.store.layout import LOCKS_DIR

_POLL_S = 0.2
_PROBE_S = 1.0  # how long a probe of another sharding's lock may wait
# How long to wait for the processes of a killed run to stop (they hold its lock a few seconds).
_STOPPING_S = 30.0


class StoreLocked(Exception):
    """Another process holds the lock."""


class StoreLock:
    """Shard ``index`` of ``count`` of the store, for one run.

    Held as two locks: ``shard-{K}of{N}`` exclusively (one run per shard) and
    ``shards-{N}`` shared, and no ``shards-{M}`` of another M may be held (a
    crawl with another sharding would overlap this one's rows).
    """

    def __init__(self, root: Path, index: int = 1, count: int = 1) -> None:
        self.root = root
        self.folder = root / LOCKS_DIR
        self.index, self.count = index, count
        self.fds: list[int] = []

    @property
    def path(self) -> Path:
        return self.folder / f"shard-{self.index}of{self.count}"

    def acquire(self) -> None:
        """Take the locks or raise ``StoreLocked`` naming the holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        shards = _open(self.folder / f"shards-{self.count}")
        if not _try_lock(shards, fcntl.LOCK_SH):
            os.close(shards)
            raise StoreLocked(f"{self.root} is being changed; try again")
        self.fds.append(shards)
        try:
            self._refuse_other_shardings()
            fd = _open(self.path)
            if not _try_lock(fd, fcntl.LOCK_EX) and not (
                    holder_gone(_read_holder(fd)) and _wait_lock(fd, fcntl.LOCK_EX, _STOPPING_S)):
                holder = _read_holder(fd)
                os.close(fd)
                what = "" if self.count == 1 else f"shard {self.index}/{self.count} of "
                raise StoreLocked(f"{what}{self.root} is in use by another crawl ({describe(holder)}); "
                                  "wait for it to end or use another IMAGES_STORE")
            _write_holder(fd)
            self.fds.append(fd)
        except BaseException:
            self.release()
            raise

    def _refuse_other_shardings(self) -> None:
        for other in sorted(self.folder.glob("shards-*")):
            if other.name == f"shards-{self.count}":
                continue
            fd = _open(other)
            try:
                if not _wait_lock(fd, fcntl.LOCK_EX, _PROBE_S):  # another run's probe holds it briefly
                    count = other.name.removeprefix("shards-")
                    raise StoreLocked(
                        f"{self.root} is in use by a crawl in {count} shards; a crawl in {self.count} "
                        "would overlap its rows: use the same number of shards or wait for it to end")
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def inheritable(self) -> list[int]:
        """The locks' file descriptors, for child processes that share them (a
        lock then lasts until the last of them exits)."""
        for fd in self.fds:
            os.set_inheritable(fd, True)
        return list(self.fds)

    def release(self) -> None:
        for fd in reversed(self.fds):
            os.close(fd)  # closing the last descriptor releases the flock
        self.fds = []


@contextmanager
def exclusive(root: Path, name: str, stop: threading.Event | None = None, wait: bool = True) -> Iterator[None]:
    """Hold ``{store}/.locks/{name}`` for the block, waiting for it (unless
    not ``wait``); a set ``stop`` gives up waiting with ``StoreLocked``."""
    folder = root / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open(folder / name)
    try:
        while not _try_lock(fd, fcntl.LOCK_EX):
            if not wait:
                raise StoreLocked(f"{root} ({name}) is held by another process")
            if stop is not None and stop.is_set():
                raise StoreLocked(f"stopped while waiting for {root} ({name})")
            time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_lock(fd: int, kind: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _try_lock(fd, kind):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet
    reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_gone(holder: str) -> bool:
    """Whether the lock's taker, on this host, has died: the lock is then held by
    its child processes, which stop within seconds (they die with it)."""
    try:
        found = json.loads(holder)
        return found["host"] == socket.gethostname() and not pid_alive(int(found["pid"]))
    except (ValueError, KeyError, TypeError):
        return False


def new_holder() -> dict[str, object]:
    """Who takes a lock: this host and process, since now."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(UTC).isoformat(timespec="seconds")}


def _write_holder(fd: int) -> None:
    holder = new_holder()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _read_holder(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")


def describe(holder: str) -> str:
    try:
        found = json.loads(holder)
        return f"host {found['host']}, pid {found['pid']}, since {found['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
