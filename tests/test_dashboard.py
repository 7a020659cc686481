"""The web view: its endpoints during a crawl, and the page in a real headless
Chromium (Debian's chromium and chromium-driver, installed by .ci/run; the test
skips without them), whose screenshot goes to the test's temporary folder."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from openimages_crawler.testing.mirror import MirrorServer, build_mirror, refused_base
from tests.conftest import ROOT, crawl_command

pytestmark = pytest.mark.e2e


@contextmanager
def dashboard_crawl(tmp_path: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    """A crawl slow enough to watch (latency, two connections) with the web view
    on a free port; yields its URL, the process and its log lines."""
    server = MirrorServer(latency=0.25)
    mirror = build_mirror(server.bases, copies=3, hang_seconds=6.0, refused_url=refused_base())
    metadata = mirror.write_metadata(tmp_path / "images.csv")
    server.serve(mirror)
    options = {"OPENIMAGES_DASHBOARD_PORT": "0", "CONCURRENT_REQUESTS": "2", **settings}
    process = subprocess.Popen(crawl_command(metadata, tmp_path / "store", options), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found = threading.Event()

    def drain() -> None:  # keep reading, or a full pipe would stall the crawl
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "Dashboard: http" in line:
                found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert found.wait(30), "".join(lines)[-3000:]
        url = re.search(r"Dashboard: (http://127\.0\.0\.1:\d+/)", "".join(lines))
        assert url is not None
        yield url.group(1), process, lines
        assert process.wait(timeout=120) == 0, "".join(lines)[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
        server.close()


def fetch(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), ""


@pytest.mark.parametrize("processes", ["1", "2"])  # 2: the command serves the sums of its processes
def test_endpoints_serve_figures_and_only_the_latest_images(tmp_path: Path, processes: str) -> None:
    with dashboard_crawl(tmp_path, OPENIMAGES_PROCESSES=processes) as (url, _, _):
        status = {}
        for _ in range(100):
            status = json.loads(fetch(url + "status.json")[1])
            shown = {failure["reason"] for failure in status["recent_failures"]}
            # the figures are sampled every second, the lists kept at once: they agree soon
            if (status["images"] and shown and set(status["failures"]) >= shown
                    and status["failed"] >= len(status["recent_failures"])):
                break
            threading.Event().wait(0.2)
        assert status["rows_done"] > 0 and not status["finished"]
        assert status["failed"] >= len(status["recent_failures"]) > 0
        code, body, kind = fetch(url + status["images"][0]["src"])
        assert code == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
        for bad in ("image/999999", "image/..%2F..%2Fetc%2Fpasswd", "image/1/2", "image/x", "nothing"):
            assert fetch(url + bad)[0] == 404, bad
        page = fetch(url)[1].decode()
        assert "<script>" in page and "http://" not in page and "https://" not in page  # no CDN
        port = url.rsplit(":", 1)[1].strip("/")
        assert fetch(f"http://localhost:{port}/status.json")[0] == 200
        rebound = urllib.request.Request(url + "status.json", headers={"Host": f"evil.example:{port}"})
        try:
            urllib.request.urlopen(rebound, timeout=10)
            raise AssertionError("a foreign Host header was served")
        except urllib.error.HTTPError as error:
            assert error.code == 403  # DNS rebinding gets nothing


def test_off_by_default_and_bad_ports_stop_the_crawl(clean_mirror, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(crawl_command(clean_mirror.metadata, tmp_path / "store"), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Dashboard:" not in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for port, message in ((busy.getsockname()[1], "cannot listen on 127.0.0.1"),
                              (99999, "is not a port number")):
            done = subprocess.run(
                crawl_command(clean_mirror.metadata, tmp_path / f"store-{port}",
                              {"OPENIMAGES_DASHBOARD_PORT": str(port)}),
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )
            assert done.returncode != 0 and message in done.stderr, done.stderr[-1500:]
            assert not (tmp_path / f"store-{port}" / "train").exists()  # nothing downloaded


def test_page_in_a_headless_browser(tmp_path: Path, chromium: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    with dashboard_crawl(tmp_path) as (url, _, _):
        driver.get(url)
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)

        def done() -> int:
            return int(driver.find_element(By.ID, "done").text.replace(",", "") or 0)

        wait.until(lambda _: done() > 0)
        first = done()
        wait.until(lambda _: done() > first)  # the counts advance while the page is open
        wait.until(lambda _: len(driver.find_elements(By.CSS_SELECTOR, "#images img[data-loaded='1']")) >= 3)
        wait.until(lambda _: driver.find_elements(By.CSS_SELECTOR, "#failures tr"))
        wait.until(lambda _: driver.find_element(By.ID, "reasons").text)  # counts by reason
        assert re.fullmatch(r"running for \d+s|finished", driver.find_element(By.ID, "state").text)
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        widths = driver.execute_script(
            "return [...document.querySelectorAll('#images img')].map((i) => i.naturalWidth)")
        assert widths and all(width > 0 for width in widths[:3])
