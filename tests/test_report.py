"""The end-of-run report: report.json figures equal the results files;
report.html is one self-contained page."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from openimages_crawler.monitor.progress import Counts
from openimages_crawler.monitor.report import HostTally, build, throughput, to_html
from tests.conftest import Served, outcomes, read_csv, run_crawl


@pytest.mark.e2e
def test_report_of_a_crawl_and_of_a_rerun(mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(mirror.metadata, store, subset="train")
    report = json.loads((store / "report.json").read_text())
    found = outcomes(store)
    reasons = Counter(v[0] for v in found.values() if v != ["success"])
    totals = report["totals"]
    assert totals["rows_done"] == len(found) == len(mirror.mirror.rows)
    assert totals["stored"] == sum(v == ["success"] for v in found.values())
    assert totals["failed"] == sum(reasons.values()) and totals["failures"] == dict(reasons)
    assert totals["already_done"] == 0
    assert totals["bytes_downloaded"] > 0 and totals["bytes_written"] > 0
    assert report["store_totals"] == {"success rows": totals["stored"], "failure rows": totals["failed"]}
    assert report["run"]["finish_reason"] == "finished"
    assert report["run"]["arguments"] == {"metadata": str(mirror.metadata), "subset": "train"}
    # Per host: every result counted under the host of its URL.
    _, failures = read_csv(store / "train" / "images-failure.csv")
    by_host = Counter(urlsplit(row["OriginalURL"]).hostname or "" for row in failures)
    assert {h["host"]: h["failed"] for h in report["hosts"] if h["failed"]} == dict(by_host)
    assert sum(h["stored"] + h["failed"] for h in report["hosts"]) == len(found)
    assert report["throughput"] and all(p["images_per_s"] >= 0 for p in report["throughput"])
    stages = report["stages"]
    assert stages["download_s"] > 0 and stages["worker_s"] > 0 and stages["wall_s"] >= 1
    assert stages["worker_s_per_image_ms"] > 0
    page = (store / "report.html").read_text()
    assert "<svg" in page and "Failures by reason" in page
    assert not re.search(r"<script|<link|src=|url\(", page)  # self-contained, works offline
    for reason in reasons:
        assert reason in page
    # A rerun: everything was done before.
    run_crawl(mirror.metadata, store, subset="train")
    again = json.loads((store / "report.json").read_text())
    assert again["totals"]["already_done"] == len(found) and again["totals"]["stored"] == 0
    assert again["store_totals"] == report["store_totals"]


@pytest.mark.e2e
def test_report_can_be_switched_off(clean_mirror: Served, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_crawl(clean_mirror.metadata, store, {"OPENIMAGES_REPORT": "False", "OPENIMAGES_PROGRESS": "off"})
    assert outcomes(store) and not (store / "report.json").exists() and not (store / "report.html").exists()


def test_throughput_and_escaping() -> None:
    second = Counts(2.0, done=20, ok=18, failed=2, bytes_in=4_000_000, bytes_out=1_000_000)
    history = [Counts(0.0), second, second,  # the final sample may repeat the last point
               Counts(4.0, done=30, ok=27, failed=3, bytes_in=6_000_000, bytes_out=1_000_000)]
    assert throughput(history) == [
        {"t": 2.0, "rows_done": 20, "images_per_s": 10.0, "mb_in_per_s": 2.0, "mb_out_per_s": 0.5},
        {"t": 4.0, "rows_done": 30, "images_per_s": 5.0, "mb_in_per_s": 1.0, "mb_out_per_s": 0.0},
    ]
    figures = build(final=history[-1], history=history, hosts={"<evil>": HostTally(ok=1)},
                    stages={"download_s": 1.0}, run={"store": "<b>x</b>", "arguments": {"classes": "a&b"}},
                    store_totals={})
    page = to_html(figures)
    assert "<evil>" not in page and "&lt;evil&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "classes=a&amp;b" in page
