"""The processes' status records (``.status/``): bounded at any host count,
and untrusted when read back (a supervisor, a fleet's watch and their web
view read records that anyone who writes to the store can write)."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from scrapy.exceptions import UsageError
from twisted.internet import threads

from openimages_crawler.crawl.config import CrawlConfig
from openimages_crawler.monitor.dashboard import DashboardServer
from openimages_crawler.monitor.extensions import thumbnail_key
from openimages_crawler.monitor.progress import Counts, ProgressMeter
from openimages_crawler.monitor.status import (
    MAX_RECORD_BYTES,
    OTHER_HOSTS,
    HostRanking,
    PartStatus,
    leading,
    mark_exit,
    rank,
    read_status,
    set_counts,
    total_hosts,
)
from openimages_crawler.store.local import LocalStore
from tests.conftest import project_settings, serve
from tests.test_dashboard import fetch
from tests.test_fleet import a_fleet, a_watch
from tests.test_inprocess import crawl, crawler_for

# --- bounded records ---------------------------------------------------------------


def test_a_record_of_300000_hosts_names_the_leaders_and_sums_the_others() -> None:
    hosts = HostRanking(limit=100)
    failing = {f"bad{n}.example.org": n % 7 + 1 for n in range(150)}  # 150 hosts failing 1 to 7 times
    for n in range(300_000 - len(failing)):
        hosts.add(f"farm{n}.example.org")
    for host, failures in failing.items():
        hosts.add(host)
        for _ in range(failures):
            hosts.add(host, "http_error")
    record = PartStatus(part="1of1")
    set_counts(record, Counts(1.0), hosts)
    assert len(record.hosts) == 101 and list(record.hosts)[-1] == OTHER_HOSTS
    leaders = sorted(failing.values(), reverse=True)[:100]
    assert [sum(entry["failures"].values()) for host, entry in record.hosts.items() if host != OTHER_HOSTS] == leaders
    assert record.hosts[OTHER_HOSTS] == {"ok": 300_000 - 100, "failures": {"http_error": sum(failing.values())
                                                                          - sum(leaders)}, "hosts": 300_000 - 100}
    assert len(record.encode()) < 20_000  # 17.7 MB when every host was in it


def test_the_leaders_are_those_with_most_failures_then_most_requests_as_results_come() -> None:
    """Against a sort of every host, every 997 results of a random crawl."""
    pick = random.Random(24)
    hosts = HostRanking(limit=10)
    for step in range(20_000):
        hosts.add(f"h{int(pick.paretovariate(1.2)) % 500}", pick.choice([None, None, None, "timeout", "http_error"]))
        if step % 997 == 0:
            best = sorted((rank(tally) for tally in hosts.tallies.values()), reverse=True)[:10]
            assert sorted((rank(hosts.tallies[host]) for host in hosts.leaders), reverse=True) == best
    ties = HostRanking(limit=2)
    for host, ok in (("a", 0), ("b", 3), ("c", 1), ("d", 9)):
        for _ in range(ok):
            ties.add(host)
        if host != "d":
            ties.add(host, "timeout")
    assert list(ties.entries()) == ["b", "c", OTHER_HOSTS]
    assert ties.entries()[OTHER_HOSTS] == {"ok": 9, "failures": {"timeout": 1}, "hosts": 2}


def test_a_supervisors_sum_keeps_how_many_hosts_each_process_left_out() -> None:
    records = []
    for part, host in (("1of2", "a.example.org"), ("2of2", "b.example.org")):
        hosts = HostRanking(limit=1)
        for other in (host, "x.example.org", "y.example.org"):
            hosts.add(other, "timeout" if other == host else None)
        records.append(PartStatus(part=part))
        set_counts(records[-1], Counts(1.0), hosts)
    summed = PartStatus(part="1of1")
    set_counts(summed, Counts(1.0), total_hosts(records))
    assert summed.hosts == {"a.example.org": {"ok": 0, "failures": {"timeout": 1}},
                            "b.example.org": {"ok": 0, "failures": {"timeout": 1}},
                            OTHER_HOSTS: {"ok": 4, "failures": {}, "hosts": 4}}
    assert total_hosts([summed])[OTHER_HOSTS] == total_hosts(records)[OTHER_HOSTS]
    # Bounded again to the limit: P processes' lists do not make a supervisor's record P times as long.
    kept = PartStatus(part="1of1")
    set_counts(kept, Counts(1.0), leading(total_hosts(records), 1))
    assert kept.hosts == {"a.example.org": {"ok": 0, "failures": {"timeout": 1}},
                          OTHER_HOSTS: {"ok": 4, "failures": {"timeout": 1}, "hosts": 5}}


@pytest_twisted.inlineCallbacks
def test_a_crawls_record_names_at_most_openimages_status_hosts(tmp_path: Path) -> Any:
    served = serve(tmp_path, faults=False)  # two hosts
    try:
        crawler = crawler_for(tmp_path / "store", {"OPENIMAGES_STATUS_HOSTS": 1})
        yield crawl(crawler, metadata=str(served.metadata))
    finally:
        served.server.close()
    record = read_status(LocalStore(str(tmp_path / "store")), "1of1")
    assert record is not None and len(record.hosts) == 2
    assert record.hosts[OTHER_HOSTS]["hosts"] == 1
    assert sum(entry.get("ok", 0) for entry in record.hosts.values()) == record.figures().ok > 0


@pytest_twisted.inlineCallbacks
def test_a_bad_openimages_status_hosts_is_a_usage_error(tmp_path: Path) -> Any:
    with pytest.raises(UsageError, match=r"OPENIMAGES_STATUS_HOSTS='many' is not a number of hosts"):
        yield crawl(crawler_for(tmp_path / "store", {"OPENIMAGES_STATUS_HOSTS": "many"}), metadata="unused.csv")


# --- untrusted records ---------------------------------------------------------------


def plant(store: Path, part: str, record: object) -> None:
    path = store / ".status" / f"{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))


@pytest.mark.parametrize("record", [
    "{not json", "[]", "[" * 100_000, {"job": "no part"}, {"part": "2of2"}, {"part": "1of2", "pid": "1"},
    {"part": "1of2", "exit": True}, {"part": "1of2", "counts": "many"}, {"part": "1of2", "counts": {"done": "3"}},
    {"part": "1of2", "counts": {"failures": {"timeout": None}}}, {"part": "1of2", "hosts": {"a": 5}},
    {"part": "1of2", "hosts": {"a": {"ok": [1]}}}, {"part": "1of2", "stages": {"download_s": "1"}},
    {"part": "1of2", "recent_images": [{"key": "train/a.jpg"}]}, {"part": "1of2", "recent_failures": [5]},
])
def test_a_record_that_is_not_one_of_its_part_is_skipped(tmp_path: Path, record: object) -> None:
    plant(tmp_path, "1of2", record)
    assert read_status(LocalStore(str(tmp_path)), "1of2") is None


def test_a_record_over_its_size_is_not_read_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plant(tmp_path, "1of2", {"part": "1of2", "error": "x" * MAX_RECORD_BYTES})  # valid, but planted huge
    with caplog.at_level(logging.DEBUG, logger="openimages_crawler.monitor.status"):
        assert read_status(LocalStore(str(tmp_path)), "1of2") is None
    assert f"is larger than {MAX_RECORD_BYTES:,} bytes" in caplog.text
    plant(tmp_path, "1of2", {"part": "1of2", "error": "x" * 1000})
    assert read_status(LocalStore(str(tmp_path)), "1of2") is not None


def test_a_watch_skips_the_records_it_cannot_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fleet = a_fleet(shards=2)
    watch, _ = a_watch(tmp_path, fleet)
    plant(tmp_path, "1of2", {"part": "1of2", "job": fleet.jobs[0].jobid, "exit": 0, "counts": "many"})
    plant(tmp_path, "2of2", "[" * 100_000)
    with caplog.at_level(logging.DEBUG, logger="openimages_crawler.monitor.status"):
        assert watch.tick() is None
    assert [job.state for job in fleet.jobs] == ["scheduled", "scheduled"]  # its exit 0 is not believed either
    assert "Skipping the record .status/1of2.json" in caplog.text and ".status/2of2.json" in caplog.text


def test_a_record_without_figures_has_none_and_its_exit_stays_in_its_part(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    plant(tmp_path / "store", "1of2", {"part": "../../escaped"})
    mark_exit(store, "1of2", 2, "bad argument")
    record = read_status(store, "1of2")
    assert record is not None and (record.exit, record.error, record.figures()) == (2, "bad argument", Counts(0.0))
    assert not list(tmp_path.glob("escaped*"))


@pytest_twisted.inlineCallbacks
def test_the_web_view_serves_only_image_files_of_the_layout_named_in_records(tmp_path: Path) -> Any:
    root = tmp_path / "store"
    config = CrawlConfig.from_settings(project_settings({"IMAGES_STORE": str(root)}))
    planted: dict[str, bytes] = {}
    for key, body in ((thumbnail_key(config, "train", "abc123"), b"the image"),
                      ("train/images-success.csv", b"ImageID,secret row"),
                      (thumbnail_key(config, "..", "abc"), b"a file beside the store")):
        assert key is not None
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(body)
        planted[key] = body
    images = [{"subset": "train", "image_id": "abc123", "key": thumbnail_key(config, "train", "abc123")},
              {"subset": "train", "image_id": "abc", "key": "../../../../etc/passwd"},
              {"subset": "train", "image_id": "abc", "key": "/etc/passwd"},
              {"subset": "train", "image_id": "abc", "key": "train/images-success.csv"},
              {"subset": "..", "image_id": "abc", "key": thumbnail_key(config, "..", "abc")}]
    plant(root, "1of2", {"part": "1of2", "recent_images": images})
    plant(root, "2of2", {"part": "2of2", "recent_images": [{"subset": "train", "key": "/etc/passwd"}]})
    store = LocalStore(str(root))
    records = [record for record in (read_status(store, "1of2"), read_status(store, "2of2")) if record]
    dashboard = DashboardServer(0, config, store, images_shown=24)
    dashboard.listen()
    try:
        dashboard.show_records(Counts(1.0), ProgressMeter(), records)
        base = f"http://127.0.0.1:{dashboard.bound_port}/"
        _, status, _ = yield threads.deferToThread(fetch, base + "status.json")
        assert [image["image_id"] for image in json.loads(status)["images"]] == ["abc123"]
        answers = []
        for serial in range(1, len(images) + 2):
            answers.append((yield threads.deferToThread(fetch, f"{base}image/{serial}")))
    finally:
        dashboard.stop()
    assert answers[0] == (200, b"the image", "image/jpeg")
    assert all(code == 404 and b"root:" not in body and body not in planted.values() for code, body, _ in answers[1:])


def test_a_scrapyd_jobs_start_error_is_in_its_shards_record(tmp_path: Path) -> None:
    """Scrapyd reports no exit status: a job that cannot start leaves its exit
    and its error line in its shard's record, where a fleet's watch reads them."""
    from openimages_crawler.exits import EXIT_USAGE, Exit
    from openimages_crawler.run.crawl import record_job_error

    settings = project_settings({"IMAGES_STORE": str(tmp_path / "store")})
    record_job_error(settings, {"_job": "job-7", "shard": "2/4"}, Exit(EXIT_USAGE, "cannot fetch the metadata"))
    record = read_status(LocalStore(str(tmp_path / "store")), "2of4")
    assert record is not None
    assert (record.job, record.exit, record.error) == ("job-7", EXIT_USAGE, "cannot fetch the metadata")
    record_job_error(settings, {"shard": "3/4"}, Exit(EXIT_USAGE, "not a job"))  # no _job: no record
    assert read_status(LocalStore(str(tmp_path / "store")), "3of4") is None
