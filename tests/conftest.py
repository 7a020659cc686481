"""Fixtures: a real mirror server on 127.x and real `scrapy crawl` processes."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from openimages_crawler.checkpoint.parts import all_results
from openimages_crawler.crawl.handlers import HANDLERS
from openimages_crawler.store.layout import ROOT_NAMES, ROOT_PATTERN
from openimages_crawler.testing.mirror import (
    Mirror,
    MirrorServer,
    build_mirror,
    refused_base,
)
from openimages_crawler.testing.objects import S3Server, start_s3_server

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# Short timeouts so the hanging host costs seconds, not minutes.
# No free-space floor: the tests' stores are tiny and the floor has tests of its own. The
# mirror's hosts are 127.x, which a real crawl refuses (OPENIMAGES_BLOCK_PRIVATE_HOSTS).
# One process: the behaviour of a crawl process is tested alone; runs of several processes
# (the default) have their own tests (test_processes.py, test_chaos.py).
FAST_SETTINGS = {"DOWNLOAD_TIMEOUT": "1.5", "RETRY_TIMES": "2", "LOG_LEVEL": "INFO", "OPENIMAGES_MIN_FREE_BYTES": "0",
                 "OPENIMAGES_BLOCK_PRIVATE_HOSTS": "False", "OPENIMAGES_PROCESSES": "1"}


@pytest.fixture(params=list(HANDLERS))
def handler(request: pytest.FixtureRequest) -> dict[str, str]:
    """Each download handler (OPENIMAGES_DOWNLOAD_HANDLER) in turn: the tests of what a handler
    does (every fault, the limits, the address guard, DOWNLOAD_MAXSIZE, a graceful stop) run with
    each, the rest of the suite with the default."""
    return {"OPENIMAGES_DOWNLOAD_HANDLER": request.param}


def project_settings(values: dict[str, object] | None = None) -> Settings:
    """The project's settings (settings.py holds every default) with ``values`` on top."""
    settings = Settings()
    settings.setmodule("openimages_crawler.settings", priority="project")
    settings.update(values or {}, priority="cmdline")
    return settings


@dataclass
class Served:
    server: MirrorServer
    mirror: Mirror
    metadata: Path


def serve(tmp_path: Path, addresses: tuple[str, ...] = ("127.0.0.1", "127.0.0.2"),
          **build_options: object) -> Served:
    server = MirrorServer(addresses)
    build_options.setdefault("refused_url", refused_base())
    build_options.setdefault("hang_seconds", 6.0)
    mirror = build_mirror(server.bases, **build_options)  # type: ignore[arg-type]
    metadata = mirror.write_metadata(tmp_path / "images.csv")
    server.serve(mirror)
    return Served(server, mirror, metadata)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Served]:
    served = serve(tmp_path)
    yield served
    served.server.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-protocol server (moto's) on 127.0.0.1 with a bucket ``data``;
    each test uses a prefix of its own."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    server.make_bucket("data")
    yield server
    server.stop()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium (Debian's chromium and chromium-driver, installed by
    .ci/run) driven by Selenium, 1280x1500; the test skips without them."""
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("Chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def clean_mirror(tmp_path: Path) -> Iterator[Served]:
    served = serve(tmp_path, faults=False)
    yield served
    served.server.close()


def crawl_command(metadata: Path, store: Path, settings: dict[str, str] | None = None,
                  **args: str) -> list[str]:
    command = [sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", f"metadata={metadata}"]
    for name, value in args.items():
        command += ["-a", f"{name}={value}"]
    merged = {**FAST_SETTINGS, "IMAGES_STORE": str(store), **(settings or {})}
    for name, value in merged.items():
        command += ["-s", f"{name}={value}"]
    return command


def run_crawl(metadata: Path, store: Path, settings: dict[str, str] | None = None,
              timeout: float = 120, **args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        crawl_command(metadata, store, settings, **args),
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def start_crawl(metadata: Path, store: Path, settings: dict[str, str] | None = None,
                **args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        crawl_command(metadata, store, settings, **args),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def summary_of(log: str) -> list[str]:
    """A crawl's closing summary in its log: from its first line (without the
    log prefix) to its Next: line."""
    lines = log.splitlines()
    start = next(number for number, line in enumerate(lines)
                 if re.search(r"\] INFO: (Finished after|Stopped after|Nothing new:)", line))
    end = next(number for number in range(start, len(lines)) if lines[number].startswith("Next: "))
    return [re.sub(r"^.*?\] INFO: ", "", lines[start]), *lines[start + 1:end + 1]]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.exists():
        return [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_results(path: Path) -> list[dict[str, str]]:
    """The rows of a results file and of its parts (what processes still
    running, or killed, have not merged yet): the union the ledger reads."""
    return [row for name in all_results([str(path)]) for row in read_csv(name)[1]]


def outcomes(store: Path, subset: str = "train") -> dict[str, list[str]]:
    """ImageID -> every outcome recorded for it ("success" or a FailureReason),
    in the results files and their parts."""
    found: dict[str, list[str]] = {}
    success = read_results(store / subset / "images-success.csv")
    failure = read_results(store / subset / "images-failure.csv")
    for row in success:
        found.setdefault(row["ImageID"], []).append("success")
    for row in failure:
        found.setdefault(row["ImageID"], []).append(row["FailureReason"])
    return found


def wait_for(condition, timeout: float = 60, interval: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def unlisted_root_names(names: Iterable[str], subsets: Iterable[str]) -> set[str]:
    """Names at a store's (or work folder's) root that are neither one of the
    run's subset folders nor in the layout's list of the store's own names."""
    return {name for name in names
            if name not in set(subsets) and name.lower() not in ROOT_NAMES and not ROOT_PATTERN.fullmatch(name)}


def count_rows(path: Path) -> int:
    """Rows of a results file and its parts."""
    return len(read_results(path))


def kill(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    os.killpg(process.pid, sig)


# --- an S3 bucket's contents, read with boto3 itself ---------------------------


def objects(s3: S3Server, prefix: str) -> dict[str, int]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket="data", Prefix=prefix)
    return {entry["Key"][len(prefix):]: entry["Size"] for page in pages for entry in page.get("Contents", ())}


def fetch(s3: S3Server, key: str) -> bytes:
    return s3.client().get_object(Bucket="data", Key=key)["Body"].read()


def bucket_rows(s3: S3Server, prefix: str, name: str) -> list[dict[str, str]]:
    keys = objects(s3, prefix)
    if name not in keys:
        return []
    return list(csv.DictReader(io.StringIO(fetch(s3, prefix + name).decode("utf-8"), newline="")))


def bucket_outcomes(s3: S3Server, prefix: str) -> dict[str, list[str]]:
    """ImageID -> every outcome the bucket's results files (and parts) record."""
    found: dict[str, list[str]] = {}
    for key in objects(s3, prefix):
        if not key.endswith(".csv") or "images-" not in key:
            continue
        for row in bucket_rows(s3, prefix, key):
            found.setdefault(row["ImageID"], []).append(row.get("FailureReason") or "success")
    return found
