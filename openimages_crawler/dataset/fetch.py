"""Fetching a version's metadata: download, verify, unpack, reuse.

Files are streamed to disk (never held in memory) with their MD5 computed on
the way, checked against the catalogue's published size and MD5, and
renamed into ``{IMAGES_STORE}/metadata/`` only when complete. From archives
only the catalogue's members are unpacked, each to the path the catalogue
names, and only if it is a regular file: no member can write outside the
folder. A later run finds the CSVs there and downloads nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from openimages_crawler.dataset.catalogue import MetadataSource, RemoteFile
from openimages_crawler.dataset.rows import MetadataError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_PROGRESS_EVERY = 10.0  # seconds between progress lines


class FetchStopped(MetadataError):
    """The crawl was asked to stop during a download; the part stays for the next run."""


class TooLarge(MetadataError):
    """A download grew past the catalogue's published size."""


class MetadataFetcher:
    """Makes a version's metadata CSVs available under ``root``."""

    def __init__(
        self,
        root: Path,
        base_url: str,
        *,
        verify: bool = True,
        keep_archives: bool = False,
        download: bool = True,
        timeout: float = 60.0,
        stop: threading.Event | None = None,
        user_agent: str = "",
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise MetadataError(f"OPENIMAGES_METADATA_URL must be http(s), not {base_url!r}")
        self.root = root
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.verify = verify
        self.keep_archives = keep_archives
        self.download = download
        self.timeout = timeout
        self.stop = stop or threading.Event()  # set: a download in progress gives up (Ctrl-C)
        self.opener = urllib.request.build_opener(_HttpRedirectsOnly)
        if user_agent:  # as the image requests: who crawls, and how to reach them
            self.opener.addheaders = [("User-Agent", user_agent)]

    def csv_paths(self, sources: Iterable[MetadataSource]) -> list[Path]:
        """Local CSVs of ``sources``, fetching and unpacking what is not cached."""
        sources = list(sources)
        by_remote: dict[RemoteFile, list[MetadataSource]] = {}
        for source in sources:
            if not (self.root / source.local_path).is_file():
                by_remote.setdefault(source.file, []).append(source)
        for remote, missing in by_remote.items():
            if not self.download:
                names = ", ".join(str(self.root / source.local_path) for source in missing)
                raise MetadataError(
                    f"{names} not in the metadata cache and -a download_metadata=false"
                )
            fetched = self.fetch(remote)
            members = [source.member for source in missing if source.member]
            if members:
                self.unpack(fetched, members)
                if not self.keep_archives:
                    fetched.unlink()
        return [self.root / source.local_path for source in sources]

    def fetch(self, remote: RemoteFile) -> Path:
        """``remote`` downloaded (or kept from before) and verified."""
        target = self.root / remote.path
        if target.is_file():
            self.check(target, remote, *_digest_file(target))
            logger.info("Using the metadata file %s already downloaded", target)
            return target
        url = urljoin(self.base_url, remote.url_path)
        part = target.with_name(target.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            size, md5 = self.download_to(url, part, remote.size if self.verify else None)
        except OSError as exc:  # URLError, HTTPError, timeouts, disk errors: the part is kept
            raise MetadataError(f"cannot download {url}: {exc} (run again to resume)") from exc
        except TooLarge:
            part.unlink(missing_ok=True)
            raise
        try:
            self.check(part, remote, size, md5)
        except MetadataError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, target)
        return target

    def download_to(self, url: str, part: Path, expected: int | None) -> tuple[int, str]:
        """Stream ``url`` into ``part``, resuming what an earlier run left there
        with a Range request; the size and MD5 of the whole file. ``expected``
        bounds the size (``TooLarge``); a stop raises ``FetchStopped``, keeping
        the part for the next run."""
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            response = self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:  # 416: the part is whole already, or not this file's
                raise
            part.unlink()
            return self.download_to(url, part, expected)
        with response:
            resumed = offset and response.status == 206
            logger.info("Downloading %s to %s%s", url, part.with_suffix(""),
                        f" (resuming after {offset:,} bytes)" if resumed else "")
            digest, size = hashlib.md5(), 0
            if resumed:
                size, _ = _digest_file(part, digest)
            with open(part, "ab" if resumed else "wb") as out:
                return _copy_with_digest(response, out, url, expected, digest, size, self.stop)

    def check(self, path: Path, remote: RemoteFile, size: int, md5: str) -> None:
        if not self.verify:
            return
        if remote.size is not None and size != remote.size:
            raise MetadataError(
                f"{path}: {size} bytes, the catalogue says {remote.size} for {remote.path} "
                "(point OPENIMAGES_METADATA_URL at the official files, or set "
                "OPENIMAGES_METADATA_VERIFY=False for a mirror with other files)"
            )
        if remote.md5 is not None and md5 != remote.md5:
            raise MetadataError(
                f"{path}: MD5 {md5}, the catalogue says {remote.md5} for {remote.path} "
                "(set OPENIMAGES_METADATA_VERIFY=False for a mirror with other files)"
            )

    def unpack(self, archive: Path, members: list[str]) -> None:
        """Stream the wanted regular-file members out of ``archive``. A member
        stored without the catalogue's top folder (``train/x.csv`` for
        ``2017_11/train/x.csv``) is accepted and written to the catalogue's path."""
        wanted = set(members)
        names = {name: name for name in members}
        names.update({name.split("/", 1)[1]: name for name in members if "/" in name})
        logger.info("Unpacking %s from %s", ", ".join(members), archive)
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    name = names.get(posixpath.normpath(member.name))
                    if name not in wanted:
                        continue
                    if not member.isfile():
                        raise MetadataError(f"{archive}: {member.name} is not a regular file")
                    self._write_member(tar, member, self.root / name)
                    wanted.discard(name)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise MetadataError(f"{archive}: not a readable tar archive: {exc}") from exc
        if wanted:
            raise MetadataError(f"{archive} has no member {', '.join(sorted(wanted))}")

    @staticmethod
    def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        source = tar.extractfile(member)
        assert source is not None  # a regular file
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        with source, open(part, "wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(part, target)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Metadata comes over http(s) only, redirects included (urllib would follow ftp://)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.URLError(f"redirect to {newurl!r} refused: metadata comes over http(s) only")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _copy_with_digest(
    source: IO[bytes], out: IO[bytes], url: str, expected: int | None, md5: Any, size: int, stop: threading.Event
) -> tuple[int, str]:
    last = time.monotonic()
    # read1: whatever has arrived, so a stop is seen between packets, not after a whole chunk.
    while chunk := source.read1(_CHUNK):  # type: ignore[attr-defined]
        if stop.is_set():
            raise FetchStopped(f"stopped while downloading {url} ({size:,} bytes kept, resumed by the next run)")
        if expected is not None and size + len(chunk) > expected:
            raise TooLarge(f"{url} is larger than the catalogue's {expected:,} bytes")
        out.write(chunk)
        md5.update(chunk)
        size += len(chunk)
        if time.monotonic() - last >= _PROGRESS_EVERY:
            last = time.monotonic()
            total = f" of {expected / 1e6:.0f}" if expected else ""
            logger.info("%s: %.0f%s MB", url, size / 1e6, total)
    remaining = getattr(source, "length", None)  # what Content-Length still promised
    if remaining:
        raise ConnectionError(f"the connection closed {remaining:,} bytes before the end")
    return size, md5.hexdigest()


def _digest_file(path: Path, md5: Any = None) -> tuple[int, str]:
    md5 = md5 or hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            md5.update(chunk)
    return path.stat().st_size, md5.hexdigest()
