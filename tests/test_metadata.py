"""Versions: metadata fetched from a local metadata mirror, verified, unpacked
safely, reused; end to end with -a version=N."""

from __future__ import annotations

import csv
import hashlib
import io
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openimages_crawler.dataset.catalogue import (
    IMAGE_INFO_COLUMNS,
    IMAGES_CSV_COLUMNS,
    MetadataSource,
    RemoteFile,
    sources_for,
)
from openimages_crawler.dataset.fetch import MetadataFetcher
from openimages_crawler.dataset.rows import MetadataError
from openimages_crawler.testing.mirror import Mirror, MirrorServer, Route, build_mirror
from tests.conftest import FAST_SETTINGS, ROOT, outcomes

SPLITS = ("train", "validation", "test")


def csv_bytes(rows: list[dict[str, str]], columns: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(name, "") for name in columns])
    return out.getvalue().encode()


def tarball(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


@dataclass
class MetadataMirror:
    server: MirrorServer
    images: Mirror
    base: str
    split_of: dict[str, str]  # ImageID -> split

    def publish(self, path: str, body: bytes) -> None:
        self.server.routes[(self.server.bases[0], "/openimages/" + path)] = Route(
            body=body, content_type="application/octet-stream"
        )

    def downloads(self, path: str) -> int:
        return self.server.counter.requests["/openimages/" + path]

    def rows(self, split: str) -> list[dict[str, str]]:
        return [row.fields | {"Subset": split} for row in self.images.rows
                if self.split_of[row.fields["ImageID"]] == split]


@pytest.fixture
def metadata_mirror() -> Iterator[MetadataMirror]:
    """Image hosts plus, on the first one, an Open Images bucket of our own."""
    server = MirrorServer()
    images = build_mirror(server.bases, faults=False)
    split_of = {row.fields["ImageID"]: SPLITS[i % 3] for i, row in enumerate(images.rows)}
    server.serve(images)
    yield MetadataMirror(server, images, server.bases[0] + "/openimages/", split_of)
    server.close()


def publish_v3(mirror: MetadataMirror, **extra: bytes) -> bytes:
    members = {f"2017_11/{split}/images.csv": csv_bytes(mirror.rows(split), IMAGES_CSV_COLUMNS)
               for split in SPLITS}
    body = tarball({**members, **extra})
    mirror.publish("2017_11/images_2017_11.tar.gz", body)
    return body


def version_crawl(store: Path, settings: dict[str, str], **args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "scrapy", "crawl", "openimages"]
    for name, value in args.items():
        command += ["-a", f"{name}={value}"]
    for name, value in {**FAST_SETTINGS, "IMAGES_STORE": str(store), **settings}.items():
        command += ["-s", f"{name}={value}"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.mark.e2e
def test_v3_tarball_is_fetched_unpacked_crawled_and_reused(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    publish_v3(metadata_mirror, **{"../../escape.csv": b"x", "/tmp/absolute-escape.csv": b"x"})
    store = tmp_path / "data" / "store"
    settings = {"OPENIMAGES_METADATA_URL": metadata_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False"}
    done = version_crawl(store, settings, version="3", subset="train")
    assert done.returncode == 0, done.stderr[-3000:]
    train = {row["ImageID"] for row in metadata_mirror.rows("train")}
    assert outcomes(store) == {image_id: ["success"] for image_id in train}
    assert (store / "metadata" / "2017_11" / "train" / "images.csv").is_file()
    assert not (store / "metadata" / "2017_11" / "validation" / "images.csv").exists()
    assert not list((store / "metadata").rglob("*.tar.gz"))  # archives are not kept
    assert not list(tmp_path.rglob("escape.csv")) and not Path("/tmp/absolute-escape.csv").exists()
    assert metadata_mirror.downloads("2017_11/images_2017_11.tar.gz") == 1
    # A rerun uses the cache; only a split not unpacked yet needs the archive again.
    again = version_crawl(store, settings, version="3", subset="train", download_metadata="false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert metadata_mirror.downloads("2017_11/images_2017_11.tar.gz") == 1
    assert version_crawl(store, settings, version="3", subset="all").returncode == 0
    assert metadata_mirror.downloads("2017_11/images_2017_11.tar.gz") == 2
    for split in SPLITS:  # rows are filed under their own Subset, each once
        rows = metadata_mirror.rows(split)
        assert outcomes(store, split) == {row["ImageID"]: ["success"] for row in rows}


@pytest.mark.e2e
def test_v4_image_info_file_and_its_rotation_column(metadata_mirror: MetadataMirror, tmp_path: Path) -> None:
    path = "2018_04/validation/validation-images-with-rotation.csv"
    metadata_mirror.publish(path, csv_bytes(metadata_mirror.rows("validation"), IMAGE_INFO_COLUMNS))
    store = tmp_path / "store"
    settings = {"OPENIMAGES_METADATA_URL": metadata_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False"}
    done = version_crawl(store, settings, version="4", subset="validation")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {row["ImageID"] for row in metadata_mirror.rows("validation")}
    assert set(outcomes(store, "validation")) == expected
    header = (store / "validation" / "images-success.csv").read_text().splitlines()[0]
    assert header.endswith(",Rotation,OriginalWidth,OriginalHeight")  # the input's columns, then the recorded size
    assert (store / "metadata" / path).is_file()


@pytest.mark.e2e
def test_checksum_mismatch_is_a_clear_error_and_keeps_nothing(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    publish_v3(metadata_mirror)
    store = tmp_path / "store"
    done = version_crawl(store, {"OPENIMAGES_METADATA_URL": metadata_mirror.base}, version="3",
                         subset="validation")
    assert done.returncode != 0
    assert "the catalogue says 1038133015" in done.stderr
    assert "OPENIMAGES_METADATA_VERIFY=False" in done.stderr
    assert not [p for p in (store / "metadata").rglob("*") if p.is_file()]
    assert not (store / "validation").exists()


@pytest.mark.e2e
def test_missing_cache_without_download_and_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = version_crawl(store, {}, version="3", subset="train", download_metadata="false")
    assert done.returncode != 0 and "download_metadata=false" in done.stderr
    for args, message in (
        ({"version": "8", "subset": "train"}, "version 8 is not one of"),
        ({"version": "1", "subset": "test"}, "version 1 has no subset 'test'"),
        ({"version": "3"}, "needs -a subset="),
        ({"version": "3", "subset": "train", "metadata": "x.csv"}, "not both"),
    ):
        done = version_crawl(store, {}, **args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr[-1500:])


# --- the fetcher on its own -----------------------------------------------------


def test_v1_layout_and_published_checksums_are_checked(metadata_mirror: MetadataMirror, tmp_path: Path) -> None:
    members = {f"images_2016_08/{split}/images.csv": csv_bytes(metadata_mirror.rows(split), IMAGES_CSV_COLUMNS)
               for split in ("train", "validation")}
    body = tarball(members)
    metadata_mirror.publish("2016_08/images_2016_08_v5.tar.gz", body)
    remote = RemoteFile("2016_08/images_2016_08_v5.tar.gz", len(body), hashlib.md5(body).hexdigest())
    sources = [MetadataSource(remote, source.member) for source in sources_for(1, "all")]
    fetcher = MetadataFetcher(tmp_path / "metadata", metadata_mirror.base)
    paths = fetcher.csv_paths(sources)
    assert [p.relative_to(tmp_path / "metadata").as_posix() for p in paths] == [
        "images_2016_08/train/images.csv", "images_2016_08/validation/images.csv"]
    assert paths[1].read_bytes() == members["images_2016_08/validation/images.csv"]
    wrong_md5 = RemoteFile(remote.path, remote.size, "0" * 32)
    with pytest.raises(MetadataError, match="MD5"):
        MetadataFetcher(tmp_path / "other", metadata_mirror.base).fetch(wrong_md5)
    assert not list((tmp_path / "other").rglob("*.part"))


def test_kept_archive_serves_later_splits_without_a_download(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    publish_v3(metadata_mirror)
    fetcher = MetadataFetcher(tmp_path, metadata_mirror.base, verify=False, keep_archives=True)
    fetcher.csv_paths(sources_for(3, "train"))
    fetcher.csv_paths(sources_for(3, "test"))
    assert (tmp_path / "2017_11" / "images_2017_11.tar.gz").is_file()
    assert metadata_mirror.downloads("2017_11/images_2017_11.tar.gz") == 1
    assert (tmp_path / "2017_11" / "test" / "images.csv").is_file()


def test_a_wanted_member_that_is_a_link_is_refused(metadata_mirror: MetadataMirror, tmp_path: Path) -> None:
    body = tarball({"2017_11/train/images.csv": b"ImageID\n"},
                   links={"2017_11/validation/images.csv": "/etc/passwd"})
    metadata_mirror.publish("2017_11/images_2017_11.tar.gz", body)
    fetcher = MetadataFetcher(tmp_path, metadata_mirror.base, verify=False)
    with pytest.raises(MetadataError, match="not a regular file"):
        fetcher.csv_paths(sources_for(3, "validation"))
    assert not (tmp_path / "2017_11" / "validation" / "images.csv").exists()
    with pytest.raises(MetadataError, match="has no member 2017_11/test/images.csv"):
        fetcher.csv_paths(sources_for(3, "test"))


def test_only_http_metadata_urls() -> None:
    with pytest.raises(MetadataError, match="must be http"):
        MetadataFetcher(Path("x"), "file:///etc/")


def fetch_fixture(metadata_mirror: MetadataMirror, route: Route, tmp_path: Path,
                  **options: object) -> tuple[MetadataFetcher, RemoteFile]:
    metadata_mirror.server.routes[(metadata_mirror.server.bases[0], "/openimages/big.csv")] = route
    body = route.body
    remote = RemoteFile("big.csv", len(body), hashlib.md5(body).hexdigest())
    return MetadataFetcher(tmp_path / "metadata", metadata_mirror.base, **options), remote  # type: ignore[arg-type]


def test_a_cut_download_is_resumed_with_a_range_request_and_checked_whole(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    route = Route(body=body, cut_after=300_000, content_type="text/csv")
    fetcher, remote = fetch_fixture(metadata_mirror, route, tmp_path)
    with pytest.raises(MetadataError, match="run again to resume"):
        fetcher.fetch(remote)
    part = tmp_path / "metadata" / "big.csv.part"
    assert part.read_bytes() == body[: part.stat().st_size] and part.stat().st_size > 0
    route.cut_after, route.ranges = None, True
    assert fetcher.fetch(remote).read_bytes() == body  # size and MD5 of the whole file checked
    assert not part.exists()
    assert metadata_mirror.downloads("big.csv") == 2


def test_metadata_redirects_stay_on_http_and_sizes_are_bounded(metadata_mirror: MetadataMirror, tmp_path: Path) -> None:
    away = Route(status=302, location="ftp://127.0.0.1/big.csv")
    fetcher, remote = fetch_fixture(metadata_mirror, away, tmp_path)
    with pytest.raises(MetadataError, match="redirect to 'ftp://127.0.0.1/big.csv' refused"):
        fetcher.fetch(RemoteFile("big.csv"))
    bigger = Route(body=b"x" * 500_000, content_type="text/csv")
    fetcher, _ = fetch_fixture(metadata_mirror, bigger, tmp_path)
    with pytest.raises(MetadataError, match="larger than the catalogue's 1,000 bytes"):
        fetcher.fetch(RemoteFile("big.csv", 1000, "0" * 32))
    assert not (tmp_path / "metadata" / "big.csv.part").exists()


def test_a_stop_ends_a_download_within_seconds_and_keeps_it_for_the_next_run(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    import threading
    import time

    from openimages_crawler.dataset.fetch import FetchStopped

    slow = Route(body=b"y" * 400_000, bytes_per_second=50_000, content_type="text/csv")  # 8 s in all
    stop = threading.Event()
    fetcher, remote = fetch_fixture(metadata_mirror, slow, tmp_path, stop=stop)
    threading.Timer(1.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(FetchStopped, match="resumed by the next run"):
        fetcher.fetch(remote)
    assert time.monotonic() - started < 5
    assert 0 < (tmp_path / "metadata" / "big.csv.part").stat().st_size < 400_000


@pytest.mark.e2e
def test_a_signal_during_a_slow_metadata_download_stops_it_and_the_rerun_resumes(
    metadata_mirror: MetadataMirror, tmp_path: Path
) -> None:
    stop, status = signal.SIGTERM, 143  # SIGINT's 130 is checked during a crawl (test_crawl)
    path = "2018_04/validation/validation-images-with-rotation.csv"
    rows = csv_bytes(metadata_mirror.rows("validation"), IMAGE_INFO_COLUMNS)
    body = rows + rows.split(b"\n", 1)[1].replace(b",validation,", b",elsewhere,") * 800  # ~1 MB: 20 s at this rate
    route = Route(body=body, content_type="text/csv", bytes_per_second=50_000, ranges=True)
    metadata_mirror.server.routes[(metadata_mirror.server.bases[0], "/openimages/" + path)] = route
    store = tmp_path / "store"
    settings = {"OPENIMAGES_METADATA_URL": metadata_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False"}
    command = [sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", "version=4", "-a", "subset=validation"]
    for name, value in {**FAST_SETTINGS, "IMAGES_STORE": str(store), **settings}.items():
        command += ["-s", f"{name}={value}"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    part = store / "metadata" / (path + ".part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 100_000) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(stop)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 6
    assert process.returncode == status, stderr[-2000:]
    assert f"stopped by {signal.Signals(stop).name} before the crawl started" in stderr.splitlines()[-1]
    kept = part.stat().st_size
    assert 100_000 < kept < len(body)
    route.bytes_per_second = None  # the rerun resumes from the part, at full speed
    done = version_crawl(store, settings, version="4", subset="validation")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming after {kept:,} bytes" in done.stderr
    assert (store / "metadata" / path).read_bytes() == body
    assert set(outcomes(store, "validation")) == {row["ImageID"] for row in metadata_mirror.rows("validation")}


@pytest.mark.e2e
def test_a_crawl_that_fails_before_its_first_request_leaves_nothing(tmp_path: Path) -> None:
    offline = {"OPENIMAGES_METADATA_URL": "http://127.0.0.1:9/openimages/"}  # nothing listens: as with no internet
    store = tmp_path / "store"
    done = version_crawl(store, offline, version="3", subset="train")
    assert done.returncode != 0 and "ERROR:" in done.stderr
    assert not store.exists()  # the folder it would have made
    # A store that was there keeps what it had and gets no empty cache folders.
    (store / "train").mkdir(parents=True)
    (store / "train" / "images-success.csv").write_text("ImageID\n")
    again = version_crawl(store, offline, version="3", subset="train")
    assert again.returncode != 0
    assert (store / "train" / "images-success.csv").read_text() == "ImageID\n"
    cache = store / "metadata"
    assert not cache.exists() or not any(path.is_dir() for path in cache.rglob("*"))  # no empty 2017_11/
