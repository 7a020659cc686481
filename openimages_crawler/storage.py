"""Where files go in the store, and how they get there atomically.

Every file is first written under ``{store}/.tmp/{host}-{pid}/`` and then
renamed into place, so a kill -9 never leaves a partial file under a final
name. A new run removes the staging folders of dead processes of this host.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

STAGING_DIR = ".tmp"


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """The store's folder names: ``{root}/{subset}/{dir}/{prefix}/{ImageID}.{ext}``."""

    root: Path
    originals_dir: str = "images-original"
    subdir_chars: int = 3

    def image_path(self, subset: str, folder: str, image_id: str, ext: str) -> Path:
        parent = self.root / subset / folder
        if self.subdir_chars > 0:
            parent = parent / image_id[: self.subdir_chars]
        return parent / f"{image_id}.{ext}"

    def original_path(self, subset: str, image_id: str, url: str) -> Path:
        return self.image_path(subset, self.originals_dir, image_id, original_extension(url))



def original_extension(url: str) -> str:
    """``png`` when the URL's path names a PNG, else ``jpg`` (Flickr originals)."""
    return "png" if urlsplit(url).path.lower().endswith(".png") else "jpg"


class AtomicWriter:
    """Writes whole files via a private staging folder and ``os.replace``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = staging_folder(root)
        self._made_dirs: set[Path] = set()

    def open(self) -> None:
        remove_dead_staging(self.root)
        self.staging.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.parent.rmdir()  # only when no other process stages here
        except OSError:
            pass

    def write(self, path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` so that it appears complete or not at all."""
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)
        temp = self.staging / f"{uuid.uuid4().hex}.part"
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


def staging_folder(root: Path, purpose: str = "") -> Path:
    """A staging folder of this process in the store (``purpose`` keeps users
    apart); the next run removes it if the process died."""
    suffix = f"-{purpose}" if purpose else ""
    return root / STAGING_DIR / f"{_host_tag()}-{os.getpid()}{suffix}"


@contextmanager
def atomic_text_file(root: Path, path: Path) -> Iterator[IO[str]]:
    """A text file streamed into a staging folder of its own (the pipeline's
    may be removed at close while this runs) and renamed to ``path`` only
    when the ``with`` block completes."""
    staging = staging_folder(root, "text")
    staging.mkdir(parents=True, exist_ok=True)
    temp = staging / f"{uuid.uuid4().hex}.part"
    try:
        with open(temp, "w", encoding="utf-8", newline="") as handle:
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


def _host_tag() -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_staging(root: Path) -> list[Path]:
    """Delete staging folders left by processes of this host that no longer run."""
    removed: list[Path] = []
    staging_root = root / STAGING_DIR
    if not staging_root.is_dir():
        return removed
    prefix = f"{_host_tag()}-"
    for entry in staging_root.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def nonempty(path: Path) -> bool:
    """True when ``path`` is a file with at least one byte."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def file_size(path: Path) -> int | None:
    """Size of ``path`` in bytes, ``None`` when it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return None
