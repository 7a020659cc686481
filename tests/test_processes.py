"""A crawl in several processes (OPENIMAGES_PROCESSES), end to end with real
processes: one run as the user sees it, limits that hold for the machine,
and exactly-once results after a kill -9 of the parent or of one child, or
a Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from openimages_crawler.monitor.status import read_status
from openimages_crawler.store.local import LocalStore
from openimages_crawler.store.lock import StoreLock
from tests.conftest import (
    FAST_SETTINGS,
    ROOT,
    Served,
    crawl_command,
    outcomes,
    run_crawl,
    serve,
    summary_of,
    unlisted_root_names,
    wait_for,
)
from tests.test_classes import SampleMirror, sample_mirror  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

TWO = {"OPENIMAGES_PROCESSES": "2"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def start(served: Served, store: Path, settings: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(crawl_command(served.metadata, store, {**TWO, **(settings or {})}), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def child_pids(store: Path) -> list[int]:
    records = [read_status(LocalStore(str(store)), part) for part in ("1of2", "2of2")]
    return [record.pid for record in records if record is not None]


def slow_mirror(tmp_path: Path, delay: float = 0.2, copies: int = 6) -> Served:
    served = serve(tmp_path, faults=False, copies=copies)
    for route in served.mirror.routes.values():
        route.delay = delay
    return served


def assert_exactly_once(served: Served, store: Path) -> None:
    expected = {image_id: [outcome] for image_id, outcome in served.mirror.expected().items()}
    assert outcomes(store) == expected
    assert not list(store.glob("*/.parts/*.csv")), "every part is merged when a run ends"


def test_every_row_is_recorded_once_by_one_run_of_two_processes(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = run_crawl(mirror.metadata, store, TWO)
    assert_exactly_once(mirror, store)
    assert not unlisted_root_names(os.listdir(store), {"train"})
    assert "Crawling in 2 processes" in done.stderr
    report = json.loads((store / "report.json").read_text())
    assert report["run"]["processes"] == 2
    assert report["totals"]["rows_done"] == len(mirror.mirror.rows)
    assert report["store_totals"] == {"success rows": sum(v == "success" for v in mirror.mirror.expected().values()),
                                      "failure rows": sum(v != "success" for v in mirror.mirror.expected().values())}
    record = read_status(LocalStore(str(store)), "1of1")
    assert record is not None and record.exit == 0 and record.figures().done == len(mirror.mirror.rows)
    assert summary_of(done.stderr)[0].startswith("Finished after")
    assert f" {len(mirror.mirror.rows)} rows accounted: " in summary_of(done.stderr)[0]
    # A second run finds everything recorded: nothing is fetched again, and it says so.
    requests = sum(mirror.server.counter.requests.values())
    again = run_crawl(mirror.metadata, store, TWO)
    assert sum(mirror.server.counter.requests.values()) == requests
    assert again.stderr.count("Already recorded: ") == 1  # said by the run, not by each of its processes
    assert summary_of(again.stderr)[0] == (f"Nothing new: all {len(mirror.mirror.rows)} selected rows were already "
                                           f"recorded in {store} by earlier runs; nothing was downloaded.")
    assert_exactly_once(mirror, store)


def test_the_per_host_limit_is_the_machines_not_each_processs(tmp_path: Path) -> None:
    served = slow_mirror(tmp_path, delay=0.25, copies=4)
    try:
        run_crawl(served.metadata, tmp_path / "store", {**TWO, "CONCURRENT_REQUESTS": "100",
                                                          "CONCURRENT_REQUESTS_PER_DOMAIN": "3"})
        counter = served.server.counter
        assert max(counter.in_flight.peak.values()) == 3  # 2 + 1, never 3 + 3
        counter.reset_peaks()
        # A limit below the number of processes lowers the number of processes.
        done = run_crawl(served.metadata, tmp_path / "store2",
                         {"OPENIMAGES_PROCESSES": "4", "CONCURRENT_REQUESTS_PER_DOMAIN": "2"})
        assert "2 processes, not 4: CONCURRENT_REQUESTS_PER_DOMAIN=2" in done.stderr
        assert max(counter.in_flight.peak.values()) == 2
        assert_exactly_once(served, tmp_path / "store2")
    finally:
        served.server.close()


@contextmanager
def crawl_under_way(tmp_path: Path) -> Iterator[tuple[Served, Path, subprocess.Popen[str]]]:
    """A two-process crawl of a slow mirror, once both processes record rows."""
    served = slow_mirror(tmp_path)
    store = tmp_path / "store"
    process = start(served, store)
    try:
        wait_for(lambda: len(child_pids(store)) == 2 and len(outcomes(store)) >= 4, timeout=60)
        yield served, store, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        served.server.close()


def test_a_kill_of_the_parent_stops_the_children_and_the_next_run_finishes_exactly_once(tmp_path: Path) -> None:
    with crawl_under_way(tmp_path) as (served, store, process):
        children = child_pids(store)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        wait_for(lambda: not any(alive(pid) for pid in children), timeout=15)  # no orphans
        recorded = {image_id for image_id, found in outcomes(store).items() if found == ["success"]}
        before = dict(served.server.counter.requests)
        run_crawl(served.metadata, store, TWO)
        assert_exactly_once(served, store)
        paths = {row.fields["ImageID"]: urlsplit(row.fields["OriginalURL"]).path for row in served.mirror.rows}
        again = [image_id for image_id in recorded
                 if served.server.counter.requests[paths[image_id]] != before.get(paths[image_id], 0)]
        assert again == [], "an image recorded before the kill was downloaded again"


def test_a_killed_child_fails_the_run_and_the_next_run_finishes_exactly_once(tmp_path: Path) -> None:
    with crawl_under_way(tmp_path) as (served, store, process):
        os.kill(child_pids(store)[1], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("ERROR: process 2 of 2: killed by SIGKILL; its unfinished rows"), last
        run_crawl(served.metadata, store, TWO)
        assert_exactly_once(served, store)


def test_ctrl_c_stops_every_process_cleanly_and_the_next_run_finishes(tmp_path: Path) -> None:
    with crawl_under_way(tmp_path) as (served, store, process):
        children = child_pids(store)
        started = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130
        assert time.monotonic() - started < 20
        assert not any(alive(pid) for pid in children)
        errors = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
        assert errors == [errors[-1]] and "stopped by SIGINT" in errors[0] and "still pending" in errors[0]
        assert not list(store.glob("*/.parts/*.csv")), "a stopped run merges what it recorded"
        run_crawl(served.metadata, store, TWO)
        assert_exactly_once(served, store)


def test_shards_crawled_at_once_share_the_store_and_its_metadata(
        sample_mirror: SampleMirror, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    """Two shards started together on a fresh store: the metadata is fetched
    once, both finish, every row once; a crawl of a shard in use is refused."""
    sample_mirror.publish_version(4)
    for (_, path), route in sample_mirror.server.routes.items():
        if path.startswith("/img/"):
            route.delay = 0.02  # the two shards overlap
    store = tmp_path / "store"
    settings = {"OPENIMAGES_METADATA_URL": sample_mirror.base, "OPENIMAGES_METADATA_VERIFY": "False",
                **FAST_SETTINGS, "IMAGES_STORE": str(store)}

    def command(shard: str) -> list[str]:
        argv = [sys.executable, "-m", "scrapy", "crawl", "openimages", "-a", "version=4",
                "-a", "subset=validation", "-a", f"shard={shard}"]
        return argv + [arg for name, value in settings.items() for arg in ("-s", f"{name}={value}")]

    shards = [subprocess.Popen(command(shard), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True) for shard in ("1/2", "2/2")]
    for process in shards:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]
    held = StoreLock(store, 1, 2)  # as a running crawl of shard 1/2 holds it
    held.acquire()
    try:
        twice = subprocess.run(command("1/2"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        held.release()
    assert twice.returncode == 2
    assert "shard 1/2 of" in twice.stderr.splitlines()[-1] and "in use by another crawl" in twice.stderr
    metadata = {path: n for path, n in sample_mirror.server.counter.requests.items() if not path.startswith("/img/")}
    assert metadata and all(n == 1 for n in metadata.values()), metadata
    wanted = {row["ImageID"]: ["success"] for row in sample_mirror.rows["validation"]}
    assert outcomes(store, "validation") == wanted
    assert not unlisted_root_names(os.listdir(store), {"validation"})


def test_a_crawl_whose_feeds_lost_the_results_files_refuses_to_run(mirror: Served, tmp_path: Path) -> None:
    """Scrapyd with items_dir set replaces FEEDS: the results (and the resume
    checkpoint) would go nowhere."""
    items = tmp_path / "items.jl"
    done = subprocess.run(crawl_command(mirror.metadata, tmp_path / "store", {
        "FEEDS": json.dumps({items.as_uri(): {"format": "jsonlines"}}), "OPENIMAGES_PROCESSES": "1"}),
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ERROR: FEEDS has no per-subset results feeds") and "items_dir" in last
    assert sum(mirror.server.counter.requests.values()) == 0
