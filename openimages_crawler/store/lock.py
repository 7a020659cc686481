"""One crawl at a time per store: an OS lock on ``{store}/.lock``.

The lock is ``flock`` on an open file, so the kernel releases it when the
process ends however it ends (kill -9 included): there is never a stale lock
to clean up by hand. The file keeps the holder's host, pid and start time
for the message a second crawl gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".lock"


class StoreLocked(Exception):
    """Another process holds the store's lock."""


class StoreLock:
    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StoreLocked`` naming its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise StoreLocked(f"{self.path.parent} is in use by another crawl ({describe(holder)}); "
                              "wait for it to end or use another IMAGES_STORE") from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def describe(holder: str) -> str:
    try:
        found = json.loads(holder)
        return f"host {found['host']}, pid {found['pid']}, since {found['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
