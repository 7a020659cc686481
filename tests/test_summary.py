"""The closing summary of a crawl: pure lines from the run's figures."""

from __future__ import annotations

from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.summary import RunEnd, closing_summary

COMMAND = "scrapy crawl openimages -a version=6 -a subset=validation"


def ended(counts: Counts, *, finished: bool = True, command: str = COMMAND, **paths: str) -> str:
    return closing_summary(RunEnd(counts=counts, finished=finished, store="/data/oi",
                                  results=["/data/oi/validation/images-success.csv"], command=command, **paths))


def test_a_finished_run_says_what_it_did_where_things_are_and_what_next() -> None:
    counts = Counts(125.0, done=1000, ok=970, failed=25, bytes_in=2_500_000_000, bytes_out=30_000_000,
                    failures={"unavailable": 20, "timeout": 3, "http_error": 2}, total=1000)
    lines = ended(counts, report="/data/oi/report.html", database="/data/oi/openimages.duckdb").splitlines()
    assert lines[0] == ("Finished after 2m05s: 1,000 rows accounted: 970 stored, 25 failed, 5 already done "
                        "before, 0 pending")
    assert "  failed by reason: unavailable 20, timeout 3, http_error 2" in lines
    assert "  data: 2.5 GB downloaded, 30.0 MB written" in lines
    assert "  results: /data/oi/validation/images-success.csv" in lines
    assert "  report: /data/oi/report.html" in lines and "  database: /data/oi/openimages.duckdb" in lines
    assert "  dashboard: off (-s OPENIMAGES_DASHBOARD_PORT=0 serves one while a crawl runs)" in lines
    assert lines[-1] == (f"Next: 5 failures may be transient (timeout, connection, http_error): retry them later "
                         f"with {COMMAND} -a retry_failed=transient")


def test_without_transient_failures_or_when_already_retrying_next_is_the_data() -> None:
    only_gone = Counts(10.0, done=10, ok=8, failed=2, failures={"unavailable": 2})
    assert ended(only_gone, database="/db").splitlines()[-1] == (
        "Next: train from the images in /data/oi; query /db with DuckDB (README, The database), or export "
        "labels with scrapy export")
    retried = Counts(10.0, done=2, ok=0, failed=2, failures={"timeout": 2})
    assert "retry_failed=transient -a" not in ended(retried, command=f"{COMMAND} -a retry_failed=transient")
    assert ended(retried, command=f"{COMMAND} -a retry_failed=transient").splitlines()[-1].startswith(
        "Next: train from the images")


def test_a_stopped_run_counts_what_is_pending_and_says_how_to_finish() -> None:
    counts = Counts(30.0, done=400, ok=390, failed=10, failures={"unavailable": 10}, total=1000)
    lines = ended(counts, finished=False, dashboard="http://127.0.0.1:8080/").splitlines()
    assert lines[0].startswith("Stopped after 30s: 400 rows accounted:") and lines[0].endswith("about 600 pending")
    assert "  dashboard: was at http://127.0.0.1:8080/ while the crawl ran" in lines
    assert lines[-1] == f"Next: run the same command again to finish (what is recorded stays done): {COMMAND}"
    unknown = Counts(30.0, done=400, ok=400)
    assert ended(unknown, finished=False).splitlines()[0].endswith("the rest pending")


def test_a_rerun_over_a_finished_store_says_so_plainly() -> None:
    lines = ended(Counts(2.0, done=1000), report="/data/oi/report.html").splitlines()
    assert lines[0] == ("Nothing new: all 1,000 selected rows were already recorded in /data/oi by earlier runs; "
                        "nothing was downloaded.")
    assert not any("failed by reason" in line or "data:" in line for line in lines)
